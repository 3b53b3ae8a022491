"""Prompt words -> context columns of the encoded prompt.

WebUI text encoders encode a prompt in chunks of 77 tokens (start token, 75 prompt tokens, end token)
and concatenate them, so a token's context column is ``chunk_index * 77 + position_in_chunk``. The
columns of an attribute phrase are where its token ids occur as a contiguous run of prompt tokens; a run
may go on from the end of one chunk into the next (a phrase that did not fit: the WebUI moves only text
after a comma to the next chunk), over the end token of the one and the start token of the other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

CHUNK_LENGTH = 77


def subsequence_columns(
    chunks: Sequence[Sequence[int]], ids: Sequence[int], chunk_length: int = CHUNK_LENGTH
) -> list[int]:
    """Every context column covered by an occurrence of ``ids`` (contiguous) in the chunks, read as one
    sequence without the two tokens where one chunk meets the next (its end token, the next's start token)."""
    ids = list(ids)
    if not ids:
        return []
    stream_columns: list[int] = []
    tokens: list[int] = []
    for chunk_index, chunk in enumerate(chunks):
        if len(chunk) > chunk_length:
            raise ValueError(f"chunks: a chunk has {len(chunk)} tokens, more than {chunk_length}")
        first = 1 if chunk_index > 0 else 0
        last = len(chunk) - 1 if chunk_index < len(chunks) - 1 else len(chunk)
        offset = chunk_index * chunk_length
        stream_columns.extend(range(offset + first, offset + last))
        tokens.extend(list(chunk)[first:last])
    found: set[int] = set()
    for start in range(len(tokens) - len(ids) + 1):
        if tokens[start : start + len(ids)] == ids:
            found.update(stream_columns[start : start + len(ids)])
    return sorted(found)


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


@dataclass(frozen=True)
class RowColumns:
    """Columns of one conditional row over the schedule: ``(end_at_step, columns)`` entries in step order.

    At denoiser step ``s`` a row's context is the text of the first entry with ``s <= end_at_step``, or of the
    first entry when none is (how ``modules/prompt_parser.py``'s ``reconstruct_multicond_batch`` picks it).
    """

    schedule: tuple[tuple[int, Mapping[str, tuple[int, ...]]], ...]

    def at(self, step: int) -> Mapping[str, tuple[int, ...]]:
        for end_at_step, columns in self.schedule:
            if step <= end_at_step:
                return columns
        return self.schedule[0][1] if self.schedule else {}


def scheduled_columns(schedule: Sequence[tuple[int, str]],
                      columns_of: Callable[[str], Mapping[str, Sequence[int]]]) -> RowColumns:
    """A row's columns from its prompt schedule ``[(end_at_step, text), ...]``; empty column lists dropped."""
    entries = []
    for end_at_step, text in schedule:
        found = {name: tuple(cols) for name, cols in columns_of(text).items() if cols}
        entries.append((int(end_at_step), found))
    return RowColumns(tuple(entries))


class PromptColumns:
    """Columns of the attribute words for every conditional row of a pass.

    ``rows[image][part]``: the row of one AND sub-prompt of one image (a prompt without AND has one part).
    ``every_row``: columns for rows not in ``rows`` (all rows of a pass whose rows share one context layout).
    """

    def __init__(self, rows: Sequence[Sequence[RowColumns]] = (),
                 every_row: Mapping[str, Sequence[int]] | None = None) -> None:
        self.rows = tuple(tuple(parts) for parts in rows)
        self.every_row = RowColumns(((0, {n: tuple(c) for n, c in (every_row or {}).items() if c}),))

    def at(self, image: int, part: int, step: int) -> Mapping[str, tuple[int, ...]]:
        """name -> columns of that row's context at denoiser ``step`` (names not in it are absent)."""
        if image < len(self.rows) and part < len(self.rows[image]):
            return self.rows[image][part].at(step)
        return self.every_row.at(step)

    def names(self, image: int | None = None) -> tuple[str, ...]:
        """Names with columns in some row (of ``image``) at some step, in order of first appearance."""
        if image is None:
            rows = [row for parts in self.rows for row in parts] + [self.every_row]
        else:
            rows = list(self.rows[image]) if image < len(self.rows) else [self.every_row]
        found: dict[str, None] = {}
        for row in rows:
            for _, columns in row.schedule:
                found.update(dict.fromkeys(columns))
        return tuple(found)
