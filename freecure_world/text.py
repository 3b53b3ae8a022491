"""The world's text encoder: the CLIP text-transformer architecture (SD1's), small, with a word tokenizer.

The module tree and parameter names are those of ``transformers.CLIPTextModel`` (``text_model.embeddings
.token_embedding``, ``text_model.encoder.layers.N.self_attn.q_proj``, ...; pre-LayerNorm blocks, causal
self-attention, quick-GELU MLP, final LayerNorm, SD1 reads the last hidden state), so kohya LoRA keys
(``lora_te_text_model_encoder_layers_0_self_attn_q_proj``) name its layers. ``transformers`` is not a
dependency: it is not in this project's test set, and these ~60 lines are all SD1 uses of it.

The tokenizer is one token per word of a fixed vocabulary (the world's words), so it works offline;
prompts are cut into 77 columns like the WebUI's chunks: start token, up to 75 words, end token, padding
with the end token (SD1's CLIP pads with end tokens too).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from freecure.tokens import CHUNK_LENGTH

from . import world

_WORD = re.compile(r"[a-z]+")
START, END, UNKNOWN = "<|startoftext|>", "<|endoftext|>", "<|unknown|>"


def world_vocabulary() -> list[str]:
    words = {"photo", "of", "a", "person", world.TRIGGER, "hair", "glasses", "hat", "earrings", "smiling",
             "neutral", *world.HAIR_COLOURS, *world.HAIR_LENGTHS}  # fmt: skip
    return [START, END, UNKNOWN, *sorted(words)]


class WordTokenizer:
    def __init__(self, vocabulary: Sequence[str]) -> None:
        self.vocabulary = list(vocabulary)
        self.ids = {word: index for index, word in enumerate(self.vocabulary)}
        self.start, self.end, self.unknown = self.ids[START], self.ids[END], self.ids[UNKNOWN]

    def tokenize(self, text: str) -> list[int]:
        """Token ids of the words of ``text``, without start/end tokens; unknown words share one id."""
        return [self.ids.get(word, self.unknown) for word in _WORD.findall(text.lower())]

    def chunk(self, prompt: str) -> list[int]:
        ids = self.tokenize(prompt)[: CHUNK_LENGTH - 2]
        return [self.start, *ids, *[self.end] * (CHUNK_LENGTH - 1 - len(ids))]


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        batch, length, width = x.shape

        def split(t: Tensor) -> Tensor:
            return t.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

        out = nn.functional.scaled_dot_product_attention(
            split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)), attn_mask=mask
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class _Mlp(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.fc1(x)
        return self.fc2(hidden * torch.sigmoid(1.702 * hidden))  # CLIP's quick GELU


class _Layer(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.self_attn = _Attention(width, heads)
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.mlp = _Mlp(width)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, width: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.position_embedding = nn.Embedding(CHUNK_LENGTH, width)


class _Encoder(nn.Module):
    def __init__(self, width: int, heads: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Layer(width, heads) for _ in range(layers))


class _TextTransformer(nn.Module):
    def __init__(self, vocab: int, width: int, heads: int, layers: int) -> None:
        super().__init__()
        self.embeddings = _Embeddings(vocab, width)
        self.encoder = _Encoder(width, heads, layers)
        self.final_layer_norm = nn.LayerNorm(width)


class ClipTextEncoder(nn.Module):
    """``CLIPTextModel``'s architecture; ``encode(prompts)`` is SD1's conditioning (B, 77, width)."""

    def __init__(self, vocabulary: Sequence[str], width: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.tokenizer = WordTokenizer(vocabulary)
        self.config = {"width": width, "heads": heads, "layers": layers}
        self.text_model = _TextTransformer(len(vocabulary), width, heads, layers)
        causal = torch.full((CHUNK_LENGTH, CHUNK_LENGTH), float("-inf")).triu(1)
        self.register_buffer("causal_mask", causal, persistent=False)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.tokenize(text)

    def chunk(self, prompt: str) -> list[int]:
        return self.tokenizer.chunk(prompt)

    def forward(self, ids: Tensor) -> Tensor:
        model = self.text_model
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = model.embeddings.token_embedding(ids) + model.embeddings.position_embedding(positions)
        mask = self.causal_mask.to(x.dtype)
        for layer in model.encoder.layers:
            x = layer(x, mask)
        return model.final_layer_norm(x)

    def encode(self, prompts: Sequence[str]) -> Tensor:
        device = self.causal_mask.device
        ids = torch.tensor([self.chunk(p) for p in prompts], device=device)
        return self(ids)
