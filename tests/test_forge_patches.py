"""FreeCure's attention patches on Forge: one patch per layer and pass, and the host's kernel run only for
the rows FASA leaves to it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from webui_checks import CURE, EXTENSION_DIR, run
from webui_host import WebUIHost, installed_host

from freecure.attention import AttentionEngine


@pytest.fixture
def forge() -> Iterator[WebUIHost]:
    with installed_host("forge") as host:
        host.load_scripts(EXTENSION_DIR)
        yield host


def test_each_layer_records_once_per_foundation_call(forge: WebUIHost, monkeypatch: pytest.MonkeyPatch) -> None:
    observed: list[tuple[int, Any]] = []
    original = AttentionEngine.observe_self

    def observe_self(engine: AttentionEngine, layer: Any, *args: Any, **kwargs: Any) -> None:
        observed.append((engine.call_serial, layer))
        original(engine, layer, *args, **kwargs)

    monkeypatch.setattr(AttentionEngine, "observe_self", observe_self)
    result = run(forge, CURE)
    assert "cure failed" not in result.infotexts[0]
    assert observed and len(observed) == len(set(observed)), "a second patch on the same layer records again"


def test_the_kernel_runs_only_for_rows_fasa_leaves(forge: WebUIHost, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend import attention

    batches: list[int] = []
    kernel = attention.attention_function

    def counting(q: Any, k: Any, v: Any, heads: int, mask: Any = None) -> Any:
        batches.append(q.shape[0])
        return kernel(q, k, v, heads, mask)

    monkeypatch.setattr(attention, "attention_function", counting)  # what FreeCure's patches call
    result = run(forge, CURE)
    assert "cure failed" not in result.infotexts[0] and "bank misses" not in result.infotexts[0]
    # Every call has [uncond, cond] rows; in FASA's layers of the cure pass the cond row is FASA's alone.
    assert set(batches) == {1, 2}, sorted(set(batches))
