"""``modules/errors.py``: the WebUI reports swallowed exceptions here; the stand-in also keeps them in
``reported`` so tests can assert on what the real host would only print."""

from __future__ import annotations

import sys
import traceback

# (message, exception or None) for every report since the stand-in was imported.
reported: list[tuple[str, BaseException | None]] = []


def report(message: str, *, exc_info: bool = False) -> None:
    exc = sys.exc_info()[1] if exc_info else None
    reported.append((message, exc))
    print(f"*** {message}", file=sys.stderr)
    if exc is not None:
        traceback.print_exc(file=sys.stderr)


def display(e: BaseException, task: str, *, full_traceback: bool = False) -> None:
    reported.append((task, e))
    print(f"{task or 'error'}: {type(e).__name__}: {e}", file=sys.stderr)


def print_error_explanation(message: str) -> None:
    print(message, file=sys.stderr)
