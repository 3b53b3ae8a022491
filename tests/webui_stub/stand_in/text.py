"""A CLIP-like text side with the WebUI's chunking rules and a deterministic toy encoder.

Tokens are words and punctuation marks; ids come from a CRC of the lowercased token, so the same word
always has the same id, as with a real vocabulary. ``tokenize_line`` follows ``tokenize_line`` of A1111's
``modules/sd_hijack_clip.py`` (v1.10.1, 82a973c0) and Forge's ``backend/text_processing/classic_engine.py``
(Forge 2, dfdcbab6), which chunk alike: emphasis parsed away into multipliers (not with the ``emphasis``
setting "None"), ``BREAK`` closes a chunk, a chunk holds 75 tokens and is stored as 77 (``id_start`` ...
``id_end``, short chunks padded with ``id_end``), and a token that finds its chunk full moves the text after
the chunk's last comma into the next chunk when that comma is at most ``comma_padding_backtrack`` tokens
back (A1111: the setting, 20 by default; Forge: always 20). Context column of a token = chunk index * 77 +
position in ``chunk.tokens``. A textual inversion embedding's name takes ``embedding.vectors`` positions
(token 0, starting a new chunk when they do not fit; ``chunk.fixes`` says where), as in the real function;
the toy encoder puts no embedding vectors there.
"""

import math
import re
import zlib
from collections import namedtuple

import torch
from torch import nn

ID_START = 49406
ID_END = 49407
VOCAB_BUCKETS = 1024
re_token = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def token_id(token: str) -> int:
    return 1 + zlib.crc32(token.encode("utf8")) % (ID_START - 1)


def tokenize_text(text: str) -> list[int]:
    return [token_id(t) for t in re_token.findall(text.lower())]


PromptChunkFix = namedtuple("PromptChunkFix", ["offset", "embedding"])


class PromptChunk:
    """``sd_hijack_clip.PromptChunk``: 77 token ids, their emphasis multipliers, embedding fixes."""

    def __init__(self):
        self.tokens: list[int] = []
        self.multipliers: list[float] = []
        self.fixes: list = []


class ChunkedTokenizer:
    """The ``tokenize``/``tokenize_line`` half of the WebUI's CLIP wrappers (A1111 and Forge alike)."""

    chunk_length = 75

    def __init__(self, id_pad: int = ID_END):
        self.id_start = ID_START
        self.id_end = ID_END
        self.id_pad = id_pad
        self.comma_token = token_id(",")

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [tokenize_text(text) for text in texts]

    def empty_chunk(self) -> PromptChunk:
        chunk = PromptChunk()
        chunk.tokens = [self.id_start] + [self.id_end] * (self.chunk_length + 1)
        chunk.multipliers = [1.0] * (self.chunk_length + 2)
        return chunk

    def get_target_prompt_token_count(self, token_count: int) -> int:
        return math.ceil(max(token_count, 1) / self.chunk_length) * self.chunk_length

    def comma_padding_backtrack(self) -> int:
        """How many tokens back a full chunk may end at a comma instead (A1111 reads the setting)."""
        from modules import shared

        return shared.opts.comma_padding_backtrack

    def parse_emphasis(self, line: str) -> list[list]:
        from modules import prompt_parser, shared  # the host's emphasis parser (A1111 and Forge share it)

        return prompt_parser.parse_prompt_attention(line) if shared.opts.emphasis != "None" else [[line, 1.0]]

    def embedding_at(self, ids: list[int], position: int) -> tuple:
        """(embedding, length of its name in ids) of the loaded embedding named at ``ids[position:]``, or
        (None, None): A1111 looks in ``sd_hijack.model_hijack.embedding_db``."""
        from modules import sd_hijack

        return sd_hijack.model_hijack.embedding_db.find_embedding_at_position(ids, position)

    def tokenize_line(self, line: str) -> tuple[list[PromptChunk], int]:
        chunks: list[PromptChunk] = []
        tokens: list[int] = []
        multipliers: list[float] = []
        fixes: list[PromptChunkFix] = []
        last_comma = -1  # index in ``tokens`` of the open chunk's last comma
        token_count = 0
        backtrack = self.comma_padding_backtrack()

        def close_chunk(is_last: bool = False) -> None:
            nonlocal token_count, tokens, multipliers, fixes, last_comma
            token_count += len(tokens) if is_last else self.chunk_length
            padding = self.chunk_length - len(tokens)
            chunk = PromptChunk()
            chunk.tokens = [self.id_start, *tokens, *[self.id_end] * padding, self.id_end]
            chunk.multipliers = [1.0, *multipliers, *[1.0] * padding, 1.0]
            chunk.fixes = fixes
            chunks.append(chunk)
            tokens, multipliers, fixes, last_comma = [], [], [], -1

        for text, weight in self.parse_emphasis(line):
            if text == "BREAK" and weight == -1:
                close_chunk()
                continue
            ids = self.tokenize([text])[0]
            position = 0
            while position < len(ids):
                if ids[position] == self.comma_token:
                    last_comma = len(tokens)
                elif (backtrack and len(tokens) == self.chunk_length and last_comma != -1
                      and len(tokens) - last_comma <= backtrack):
                    # the moved text's embedding fixes stay behind, as in the real function
                    moved_tokens, moved_multipliers = tokens[last_comma + 1:], multipliers[last_comma + 1:]
                    del tokens[last_comma + 1:], multipliers[last_comma + 1:]
                    close_chunk()
                    tokens, multipliers = moved_tokens, moved_multipliers
                if len(tokens) == self.chunk_length:
                    close_chunk()
                embedding, name_length = self.embedding_at(ids, position)
                if embedding is None:
                    tokens.append(ids[position])
                    multipliers.append(weight)
                    position += 1
                    continue
                vectors = int(embedding.vectors)
                if len(tokens) + vectors > self.chunk_length:
                    close_chunk()
                fixes.append(PromptChunkFix(len(tokens), embedding))
                tokens += [0] * vectors
                multipliers += [weight] * vectors
                position += name_length
        if tokens or not chunks:
            close_chunk(is_last=True)
        return chunks, token_count


class ToyTextEncoder(nn.Module):
    """Per-token embedding plus position embedding, then one linear layer (the LoRA target)."""

    def __init__(self, dim: int, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.token_embedding = nn.Embedding(VOCAB_BUCKETS, dim)
        self.position_embedding = nn.Embedding(77, dim)
        self.proj = nn.Linear(dim, dim)
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)

    def encode_chunk(self, tokens: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
        """``tokens``/``multipliers``: (B, 77). Emphasis scales tokens and keeps the mean, as A1111 does."""
        z = self.proj(self.token_embedding(tokens % VOCAB_BUCKETS) + self.position_embedding.weight)
        original_mean = z.mean()
        z = z * multipliers.unsqueeze(-1)
        return z * (original_mean / z.mean())

    def encode_lines(self, tokenizer: ChunkedTokenizer, texts: list[str]) -> torch.Tensor:
        """(B, 77 * chunks, dim): chunks of every text, shorter texts padded with empty chunks."""
        batch_chunks = [tokenizer.tokenize_line(text)[0] for text in texts]
        chunk_count = max(len(chunks) for chunks in batch_chunks)
        zs = []
        for i in range(chunk_count):
            chunks = [c[i] if i < len(c) else tokenizer.empty_chunk() for c in batch_chunks]
            tokens = torch.tensor([c.tokens for c in chunks])
            if tokenizer.id_pad != tokenizer.id_end:  # SD2: padding after the first end token (process_tokens)
                for row, chunk in enumerate(chunks):
                    tokens[row, chunk.tokens.index(tokenizer.id_end) + 1:] = tokenizer.id_pad
            multipliers = torch.tensor([c.multipliers for c in chunks])
            zs.append(self.encode_chunk(tokens, multipliers))
        return torch.hstack(zs)
