"""Prompt words -> context columns of the encoded prompt.

WebUI text encoders encode a prompt in chunks of 77 tokens (start token, 75 prompt tokens, end token)
and concatenate them, so a token's context column is ``chunk_index * 77 + position_in_chunk``. The
columns of an attribute phrase are where its token ids occur as a contiguous run in any chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

CHUNK_LENGTH = 77


def subsequence_columns(
    chunks: Sequence[Sequence[int]], ids: Sequence[int], chunk_length: int = CHUNK_LENGTH
) -> list[int]:
    """Every context column covered by an occurrence of ``ids`` (contiguous) in any chunk."""
    ids = list(ids)
    if not ids:
        return []
    columns: list[int] = []
    for chunk_index, chunk in enumerate(chunks):
        tokens = list(chunk)
        if len(tokens) > chunk_length:
            raise ValueError(f"chunks: a chunk has {len(tokens)} tokens, more than {chunk_length}")
        for start in range(len(tokens) - len(ids) + 1):
            if tokens[start : start + len(ids)] == ids:
                offset = chunk_index * chunk_length + start
                columns.extend(range(offset, offset + len(ids)))
    return sorted(set(columns))


def phrase_columns(
    chunks: Sequence[Sequence[int]],
    tokenize: Callable[[str], Sequence[int]],
    phrases: Mapping[str, Sequence[str]],
    chunk_length: int = CHUNK_LENGTH,
) -> dict[str, list[int]]:
    """Columns of each attribute's phrases (name -> sorted columns).

    ``tokenize(text)`` gives token ids without start/end tokens. A phrase is matched whole; when the
    whole phrase is not there (emphasis or punctuation split it), its last word, the attribute noun in
    "red curly hair", is matched instead.
    """
    result: dict[str, list[int]] = {}
    for name, texts in phrases.items():
        columns: set[int] = set()
        for text in texts:
            found = subsequence_columns(chunks, tokenize(text), chunk_length)
            words = text.split()
            if not found and len(words) > 1:
                found = subsequence_columns(chunks, tokenize(words[-1]), chunk_length)
            columns.update(found)
        result[name] = sorted(columns)
    return result
