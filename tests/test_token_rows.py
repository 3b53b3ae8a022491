"""Attention maps read each conditional row's own token columns: AND sub-prompts (one row each), prompt
editing (the schedule entry of the step) and per-image prompts of a batch, as the WebUI builds each row's
conditioning (``modules/prompt_parser.py``)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from webui_checks import CURE, freecure
from webui_host import WebUIHost

from freecure.options import Options
from freecure.pipeline.host import Branch
from freecure.webui import hosts
from freecure.webui.controller import STATE_ATTR

PHRASES = {"hair": ("red hair",), "hat": ("hat",)}


class _TextIndexModel:
    """A model whose conditioning of a text is its index in ``texts``: reconstruct_multicond_batch then
    says which text each row of a step is."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def get_learned_conditioning(self, texts: list[str]) -> torch.Tensor:
        self.texts += texts
        return torch.arange(len(self.texts) - len(texts), len(self.texts), dtype=torch.float32).view(-1, 1, 1)


def _host(webui: WebUIHost, is_hires: bool = False, **fields: Any) -> Any:
    p = webui.txt2img(prompt="a woman", steps=6, seed=3, **fields)
    p.prompts, p.negative_prompts = ["a woman"], [""]  # what process_images sets per batch
    p.hr_prompts, p.hr_negative_prompts = ["a woman"], [""]
    x = torch.zeros(1, 4, 8, 8)
    return hosts.create_host(p, Options(enabled=True), x=x, noise=x, conditioning=None, unconditional=None,
                             is_hires=is_hires)


@pytest.mark.parametrize("prompts", [
    ["a woman with a hat AND red hair:0.6", "red hair, a woman AND a hat"],
    ["a [woman:man:3] with [a hat:red hair:0.5] and [red hair|a hat]", "a woman with red hair"],
    ["a woman, (red hair:1.2) BREAK a hat", "[a woman with red hair AND a hat::4] AND red hair"],
])
def test_every_cond_row_gets_the_columns_of_the_text_the_webui_encodes_for_it(
    webui: WebUIHost, prompts: list[str]
) -> None:
    prompt_parser = webui.prompt_parser
    host = _host(webui)
    steps = host._total_steps()
    columns = host.prompt_columns(prompts, PHRASES)
    model = _TextIndexModel()
    conditioning = prompt_parser.get_multicond_learned_conditioning(
        model, prompt_parser.SdConditioning(prompts), steps)
    differs_from_the_whole_line = 0
    for step in range(steps):
        conds_list, rows = prompt_parser.reconstruct_multicond_batch(conditioning, step)
        for image, parts in enumerate(conds_list):
            whole_line = {n: tuple(c) for n, c in host.token_columns(prompts[image], PHRASES).items() if c}
            for part, (row, _) in enumerate(parts):
                text = model.texts[int(rows[row, 0, 0])]
                expected = {n: tuple(c) for n, c in host.token_columns(text, PHRASES).items() if c}
                assert dict(columns.at(image, part, step)) == expected, (image, part, step, text)
                differs_from_the_whole_line += expected != whole_line
    assert differs_from_the_whole_line, "the prompts must make rows differ from the prompt read as one line"


def _recorded_maps(webui: WebUIHost, prompt: Any, seed: int, **fields: Any) -> dict[str, torch.Tensor]:
    p = webui.txt2img(prompt=prompt, steps=4, seed=seed, width=64, height=64, **fields)
    webui.set_script_args(p, freecure(webui), [{**CURE, "attributes": "auto"}])
    processed = webui.process(p)
    assert "cure failed" not in processed.infotexts[0]
    return getattr(p, STATE_ATTR).session.maps


def test_each_image_of_a_batch_is_mapped_with_its_own_prompt(webui: WebUIHost) -> None:
    prompts = ["a photo of ohwx woman with red hair", "a photo of ohwx woman, smiling, with a hat and red hair"]
    batch = _recorded_maps(webui, prompts, 5, batch_size=2)
    for image, prompt in enumerate(prompts):
        alone = _recorded_maps(webui, prompt, 5 + image)
        assert torch.allclose(batch["hair"][image], alone["hair"][0], atol=1e-5), image


def test_forge_cond_chunks_are_and_parts_in_descending_order() -> None:
    from freecure.attention import RowRole
    from freecure.webui.forge import rows_of

    # Two images with two AND parts each; Forge pops [part 0, part 1, uncond] highest first.
    announced = [RowRole(True, i, j) for i in range(2) for j in range(2)] + [RowRole(False, i) for i in range(2)]
    rows = rows_of({"cond_or_uncond": [1, 0, 0]}, 6, announced)
    assert rows == [RowRole(False, 0), RowRole(False, 1), RowRole(True, 0, 1), RowRole(True, 1, 1),
                    RowRole(True, 0, 0), RowRole(True, 1, 0)]
    split = rows_of({"cond_or_uncond": [0]}, 2, announced)
    assert split == [RowRole(True, 0, 2), RowRole(True, 1, 2)], "a low-memory split: part unknown, no columns"
    assert rows_of({"cond_or_uncond": [1, 0]}, 2) == [RowRole(False, 0), RowRole(True, 0)]


def test_a_phrase_over_the_chunk_boundary_has_the_columns_of_every_word(webui: WebUIHost) -> None:
    # 74 words fill chunk 0 up to "red" (column 75); with no comma to backtrack to, "hair" opens chunk 1
    # (column 78, after chunk 0's end token and chunk 1's start token): where the real tokenize_line
    # (A1111 82a973c0, Forge 2 dfdcbab6) puts them.
    prompt = " ".join(f"w{i}" for i in range(74)) + " red hair"
    assert _host(webui).token_columns(prompt, PHRASES) == {"hair": [75, 78], "hat": []}


_HAIR_45, _HAT_5 = {"hair": (4, 5)}, {"hat": (5,)}
_BACKTRACKED = {"hair": (78, 79), "hat": (82,)}  # "red hair with a" moved after the comma into chunk 1


@pytest.mark.parametrize(("prompt", "per_step"), [
    ("a woman with [red hair|a hat]", [_HAIR_45, _HAIR_45, _HAT_5, _HAIR_45, _HAT_5, _HAIR_45]),
    ("[a [very tall:short:2] woman with:a:4] red hair",
     [{"hair": (6, 7)}] * 3 + [{"hair": (5, 6)}] * 2 + [{"hair": (2, 3)}]),
    (" ".join(f"w{i}" for i in range(70)) + ", [red hair with a hat:a hat:3]",
     [_BACKTRACKED] * 4 + [{"hat": (73,)}] * 2),
    ("[a woman BREAK red hair|red hair BREAK a hat]",
     [{"hair": (78, 79)}, {"hair": (78, 79)}, {"hair": (1, 2), "hat": (79,)}, {"hair": (78, 79)},
      {"hair": (1, 2), "hat": (79,)}, {"hair": (78, 79)}]),
])
def test_row_columns_are_where_the_real_webui_puts_the_tokens(webui: WebUIHost, prompt: str,
                                                               per_step: list[dict]) -> None:
    """Alternation, nested edits, a chunk boundary after comma backtracking, BREAK: columns per denoiser step
    from the real A1111 code (prompt_parser with lark 1.1.2, sd_hijack_clip.tokenize_line, 82a973c0) run over
    the stand-in's word vocabulary; Forge 2 chunks these prompts the same way."""
    host = _host(webui)
    assert host._total_steps() == len(per_step)
    columns = host.prompt_columns([prompt], PHRASES)
    assert [dict(columns.at(0, 0, step)) for step in range(len(per_step))] == per_step


# "when" 8: a step of the first pass (6 steps), in the hires pass 2 steps into it (new timelines); 1.5: with new
# timelines 9 of 6 first-pass steps, half the hires pass; with old timelines step 1 of either.
_TIMELINE_PROMPT = "[a woman with:a:8] red hair AND [a hat:red hair:1.5]"


def _texts_per_step(prompt_parser: Any, conditioning: Any, model: _TextIndexModel, steps: int) -> list[list[str]]:
    """The text of each conditional row of image 0 at each denoiser step of a pass."""
    texts = []
    for step in range(steps):
        conds_list, rows = prompt_parser.reconstruct_multicond_batch(conditioning, step)
        texts.append([model.texts[int(rows[row, 0, 0])] for row, _ in conds_list[0]])
    return texts


@pytest.mark.parametrize(("is_hires", "old_timelines"), [(False, True), (True, False), (True, True)])
def test_rows_follow_the_pass_timeline_as_the_webui_conditions_it(
    webui: WebUIHost, monkeypatch: pytest.MonkeyPatch, is_hires: bool, old_timelines: bool
) -> None:
    """The hires pass schedules prompts with ``hires_steps`` after the first pass's steps, and both passes
    with ``opts.use_old_scheduling`` (A1111 82a973c0 ``processing.py`` ``get_conds_with_caching`` and
    ``calculate_hr_conds``): FreeCure's rows and its own (foundation) conditioning must follow the same
    timeline as the conditioning the WebUI samples the pass with."""
    prompt_parser = webui.prompt_parser
    monkeypatch.setitem(webui.shared.opts.data, "use_old_scheduling", old_timelines)
    host = _host(webui, is_hires=is_hires, enable_hr=True, hr_second_pass_steps=4)
    p = host.p
    p.prompts = p.hr_prompts = [_TIMELINE_PROMPT]
    model = _TextIndexModel()
    model.sd_checkpoint_info = object()  # a key of the WebUI's conditioning cache
    branch = Branch(identity=False, prompts=(_TIMELINE_PROMPT,), negative_prompts=("",), cfg_scale=5.0)
    with monkeypatch.context() as patched:
        patched.setattr(webui.shared, "sd_model", model)
        p.setup_conds()  # the first pass's conditioning, as process_images makes it
        if is_hires:
            p.is_hr_pass = True
            p.setup_conds()  # the hires pass's, as sample_hr_pass makes it
            p.is_hr_pass = False
        foundation, _ = host._conds(branch)
    steps = host._total_steps()
    expected = _texts_per_step(prompt_parser, p.hr_c if is_hires else p.c, model, steps)
    assert len({tuple(texts) for texts in expected}) > 1, "the timeline changes the texts within the pass"
    assert _texts_per_step(prompt_parser, foundation, model, steps) == expected

    columns = host.prompt_columns([_TIMELINE_PROMPT], PHRASES)
    for step, texts in enumerate(expected):
        for part, text in enumerate(texts):
            wanted = {n: tuple(c) for n, c in host.token_columns(text, PHRASES).items() if c}
            assert dict(columns.at(0, part, step)) == wanted, (step, part, text)


def test_forge_one_pass_chunks_hold_the_images_then_their_foundation_rows() -> None:
    from freecure.attention import RowRole
    from freecure.webui.forge import rows_of

    # One-pass: 2 images with 2 AND parts each, personalized then foundation, as CallRouter announces them.
    announced = [RowRole(True, i, j, foundation=f) for f in (False, True) for i in range(2) for j in range(2)]
    announced += [RowRole(False, i, foundation=f) for f in (False, True) for i in range(2)]
    rows = rows_of({"cond_or_uncond": [1, 0, 0]}, 12, announced)
    per_chunk = [[RowRole(cond, i, part, foundation=f) for f in (False, True) for i in range(2)]
                 for cond, part in ((False, 0), (True, 1), (True, 0))]
    assert rows == [role for chunk in per_chunk for role in chunk]
