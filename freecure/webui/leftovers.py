"""Cures still installed. A job that raised inside the WebUI's own sampling (out of memory, ``NansException``,
another extension's exception) never reaches ``post_sample`` or ``postprocess``, so its cure stays open. It is
released at the next job, whatever kind: by our script's ``process`` (the tabs where FreeCure runs), by the
first CFG callback of any other job (our router's: every sampling of every job calls it, also in a tab whose
scripts leave FreeCure out), and at script reload."""

from __future__ import annotations

import contextlib
import traceback

from freecure.parsing import free_models

_OPEN: list[contextlib.ExitStack] = []


def opened() -> contextlib.ExitStack:
    """A new cure context, kept until ``close`` or a release."""
    stack = contextlib.ExitStack()
    _OPEN.append(stack)
    return stack


def close(stack: contextlib.ExitStack) -> None:
    """Close one cure context; what its exit raises (a ``CureError`` of its attention work) propagates."""
    if stack in _OPEN:
        _OPEN.remove(stack)
    stack.close()


def release_leftovers() -> None:
    """Close every cure context a previous job left open, and free the face parser it loaded."""
    if not _OPEN:
        return
    while _OPEN:
        stack = _OPEN.pop()
        try:
            stack.close()
        except Exception:
            traceback.print_exc()
    free_models()
