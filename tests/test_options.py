"""The settings model: four sources agree, infotext round-trips, every bad input names its field."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from freecure.attributes import VOCABULARY
from freecure.options import UI_FIELDS, Options, OptionsError, schema

# One non-default setting per field, in canonical form.
EXPECTED = Options(
    enabled=True,
    method="blend",
    attributes=("hair", "glasses"),
    strength=0.8,
    blend_weight=0.6,
    blend_start=0.2,
    step_start=0.1,
    step_end=0.9,
    layers="decoder-high",
    mask_source="parser",
    mask_combine="intersection",
    mask_dilation=4,
    identity_off=("lora", "adapter"),
    trigger_words=("ohwx", "sks man"),
    class_word="woman",
    keep_networks=("detail_tweaker", "add+more"),
    foundation_prompt='a photo, [PROMPT], "film": grain\nBREAK (soft light:1.2)',
    apg="on",
    apg_strength=0.4,
    apg_source="a woman",
    apg_target="a woman, laughing happily",
    apg_guidance="asymmetric",
    hires="both",
    debug_images=True,
    face_parser="parsenet",
    faces=(0, 2),
    allow_download=True,
    offload_bank=True,
    attribute_strength=(("hair", 1.2), ("glasses", 0.6)),
    attribute_dilation=(("earrings", 8),),
    passes="one-pass",
    one_pass_masks_at=0.4,
)

# What Gradio hands over: ints from integer sliders, lists from multiselect dropdowns, text boxes.
UI_VALUES = {
    "enabled": True,
    "method": "blend",
    "attributes": ["glasses", "hair"],
    "strength": 0.8,
    "blend_weight": 0.6,
    "blend_start": 0.2,
    "step_start": 0.1,
    "step_end": 0.9,
    "layers": "decoder-high",
    "mask_source": "parser",
    "mask_combine": "intersection",
    "mask_dilation": 4,
    "identity_off": ["adapter", "lora"],
    "trigger_words": "ohwx, sks man",
    "class_word": "woman",
    "keep_networks": "detail_tweaker, add+more",
    "foundation_prompt": EXPECTED.foundation_prompt,
    "apg": "on",
    "apg_strength": 0.4,
    "apg_source": "a woman",
    "apg_target": "a woman, laughing happily",
    "apg_guidance": "asymmetric",
    "hires": "both",
    "debug_images": True,
    "face_parser": "parsenet",
    "faces": "0,2",
    "allow_download": True,
    "offload_bank": True,
    "attribute_strength": "glasses:0.6, hair:1.2",
    "attribute_dilation": "earrings:8",
    "passes": "one-pass",
    "one_pass_masks_at": 0.4,
}

# What an X/Y/Z axis or an infotext paste hands over: strings everywhere.
STRING_VALUES = {
    **{k: str(v) for k, v in UI_VALUES.items() if isinstance(v, (bool, int, float))},
    "attributes": "hair+glasses",
    "identity_off": "lora+adapter",
    "faces": "2+0",
    "mask_dilation": "4",
    "enabled": "true",
    "attribute_strength": "hair:1.2+glasses:0.6",
}


def test_ui_fields_follow_the_dataclass_with_enabled_first() -> None:
    assert tuple(f.name for f in dataclasses.fields(Options)) == UI_FIELDS
    assert UI_FIELDS[0] == "enabled"
    assert set(UI_VALUES) == set(UI_FIELDS)


def test_four_sources_give_equal_options() -> None:
    from_ui = Options.from_ui([UI_VALUES[name] for name in UI_FIELDS])
    from_api = Options.from_dict(UI_VALUES)
    from_overrides = Options().with_overrides({**UI_VALUES, **STRING_VALUES})
    from_infotext = Options.from_infotext({"Steps": "20", **EXPECTED.to_infotext()})
    assert from_ui == from_api == from_overrides == from_infotext == EXPECTED


def test_single_dict_api_forms() -> None:
    settings_dict = {k: v for k, v in UI_VALUES.items() if k != "enabled"}
    ui_defaults = [getattr(Options(), name) for name in UI_FIELDS]
    # [{...}], [{...}, <the WebUI's padding of UI defaults>], [True, {...}] and [True, {...}, padding].
    assert Options.from_ui([settings_dict]) == EXPECTED
    assert Options.from_ui([settings_dict, *ui_defaults[1:]]) == EXPECTED
    assert Options.from_ui([True, settings_dict]) == EXPECTED
    assert Options.from_ui([True, settings_dict, *ui_defaults[2:]]) == EXPECTED
    assert Options.from_ui([False, settings_dict]) == dataclasses.replace(EXPECTED, enabled=False)
    assert Options.from_ui([{**settings_dict, "enabled": False}]).enabled is False
    with pytest.raises(OptionsError, match="given twice") as error:
        Options.from_ui([False, {"enabled": True}])
    assert error.value.field == "enabled"


def test_overrides_replace_only_what_they_name() -> None:
    base = Options(enabled=True, method="blend", strength=2.0)
    changed = base.with_overrides({"strength": "0.25", "attributes": "hat"})
    assert changed == dataclasses.replace(base, strength=0.25, attributes=("hat",))
    with pytest.raises(OptionsError) as error:
        base.with_overrides({"strenght": 1})
    assert error.value.field == "strenght" and "strength" in str(error.value)


def test_infotext_omits_defaults() -> None:
    assert Options().to_infotext() == {}  # disabled: nothing written
    assert Options(enabled=True).to_infotext() == {"FreeCure": "on"}
    assert Options(enabled=True, method="blend", attributes="hair+glasses", strength=0.8).to_infotext() == {
        "FreeCure": "method: blend, attributes: hair+glasses, strength: 0.8"
    }
    assert Options(enabled=True, method="fasa", blend_weight=0.75, identity_off="lora,hypernetwork,embedding,"
                   "adapter").to_infotext() == {"FreeCure": "on"}  # fmt: skip
    assert Options(enabled=True, identity_off=[]).to_infotext() == {"FreeCure": "identity_off: []"}


def test_infotext_absent_or_defaults() -> None:
    assert Options.from_infotext({"Steps": "20", "Seed": "1"}) is None
    assert Options.from_infotext({"FreeCure": "on"}) == Options(enabled=True)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a, b: c",
        'a "quoted" word',
        "line one\nline two\r\n",
        "  leading and trailing  ",
        "[PROMPT], (red hair:1.2), [from:to:0.5], [a|b], <lora:x:1> AND b BREAK c",
        'back\\slash \\" and \\(escaped\\)',
        "ünïcödé, 漢字: «»",
        '{"json": [1, 2]}',
        "on",
        "true",
        "0.5",
        "[]",
    ],
)
def test_infotext_round_trip_of_awkward_prompts(text: str) -> None:
    opts = Options(enabled=True, foundation_prompt=text, apg_source=text, apg_target=text + ",")
    assert Options.from_infotext(opts.to_infotext()) == opts
    assert Options.from_infotext(_through_webui_line(opts.to_infotext())) == opts


def test_infotext_round_trip_of_awkward_words() -> None:
    opts = Options(
        enabled=True,
        trigger_words=("a+b", 'q"uote', "c:d", "[x]", "sks man"),
        keep_networks=("only+one",),
        class_word="on",
    )
    assert Options.from_infotext(opts.to_infotext()) == opts
    single = Options(enabled=True, keep_networks=("only+one",))
    assert single.to_infotext() == {"FreeCure": "keep_networks: only+one"}
    assert Options.from_infotext(single.to_infotext()) == single


# --- property-based round trip over random valid options ---------------------------------------------

_words = (
    st.text(st.characters(blacklist_characters=",\n\r", blacklist_categories=("Cs",)), min_size=1, max_size=12)
    .map(str.strip)
    .filter(bool)
)
_prompts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40).filter(
    lambda t: not re.search(r"[\[{<]\s*prompts?\s*[\]}>]", t, re.IGNORECASE)
)
_fraction = st.floats(0.0, 1.0)


def _choice(name: str) -> st.SearchStrategy:
    return st.sampled_from(schema()["fields"][name]["choices"])


_random_options = st.fixed_dictionaries(
    {
        "enabled": st.just(True),
        "method": _choice("method"),
        "attributes": st.one_of(st.just("auto"), st.lists(st.sampled_from(list(VOCABULARY)), min_size=1)),
        "strength": st.one_of(st.none(), st.floats(0.0, 10.0)),
        "blend_weight": _fraction,
        "blend_start": _fraction,
        "step_start": _fraction,
        "step_end": _fraction,
        "layers": _choice("layers"),
        "mask_source": _choice("mask_source"),
        "mask_combine": _choice("mask_combine"),
        "mask_dilation": st.integers(0, 64),
        "identity_off": st.lists(st.sampled_from(["lora", "hypernetwork", "embedding", "adapter"])),
        "trigger_words": st.lists(_words, max_size=3),
        "class_word": _words,
        "keep_networks": st.lists(_words, max_size=3),
        "foundation_prompt": st.one_of(_prompts, _prompts.map(lambda t: t + "[PROMPT]")),
        "apg": _choice("apg"),
        "apg_strength": _fraction,
        "apg_source": _prompts,
        "apg_target": _prompts,
        "apg_guidance": _choice("apg_guidance"),
        "hires": _choice("hires"),
        "debug_images": st.booleans(),
        "face_parser": _choice("face_parser"),
        "faces": st.one_of(st.sampled_from(["all", "largest"]), st.lists(st.integers(0, 99), min_size=1)),
        "allow_download": st.booleans(),
        "offload_bank": st.booleans(),
        "attribute_strength": st.dictionaries(st.sampled_from(["hair", "glasses", "hat", "earrings"]),
                                              st.floats(0.0, 10.0)),
        "attribute_dilation": st.dictionaries(st.sampled_from(["hair", "beard"]), st.integers(0, 64)),
        "passes": _choice("passes"),
        "one_pass_masks_at": st.floats(0.05, 0.95),
    }
)


@settings(max_examples=200, deadline=None)
@given(_random_options)
def test_infotext_round_trip_is_exact(values: dict) -> None:
    assume(values["step_start"] < values["step_end"])
    opts = Options.from_dict(values)
    assert Options.from_infotext(opts.to_infotext()) == opts
    assert Options.from_infotext(_through_webui_line(opts.to_infotext())) == opts
    assert Options.from_ui([values[name] for name in UI_FIELDS]) == opts


def _through_webui_line(infotext: dict[str, str]) -> dict[str, str]:
    """Write and read a generation-parameters line the way the WebUI does.

    An independent model of the host: a value containing ',', ':' or a newline is JSON-quoted; reading
    splits ``key: value`` pairs at commas outside quotes and JSON-unquotes quoted values.
    """
    def quote(value: str) -> str:
        return json.dumps(value, ensure_ascii=False) if any(c in value for c in ",:\n") else value

    line = ", ".join(["Steps: 20", *(f"{k}: {quote(v)}" for k, v in infotext.items()), "Seed: 1"])
    params = {}
    for key, value in re.findall(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', line):
        params[key] = json.loads(value) if value.startswith('"') and value.endswith('"') else value
    assert params["Steps"] == "20" and params["Seed"] == "1"
    return params


# --- errors -------------------------------------------------------------------------------------------

ERRORS = [
    ({"method": "FASA2"}, "method", ["fasa", "blend"]),
    ({"method": 1}, "method", ["fasa", "blend"]),
    ({"attributes": "hair,chair"}, "attributes", ["'chair'", "hair", "glasses", "expression", "auto"]),
    ({"attributes": ["auto", "hair"]}, "attributes", ["auto", "combined"]),
    ({"attributes": 3}, "attributes", ["auto", "hair"]),
    ({"strength": "abc"}, "strength", ["number", "0", "10"]),
    ({"strength": True}, "strength", ["number"]),
    ({"strength": [0.5]}, "strength", ["number"]),
    ({"strength": float("nan")}, "strength", ["number"]),
    ({"strength": "inf"}, "strength", ["number"]),
    ({"strength": 10.5}, "strength", ["0", "10"]),
    ({"blend_weight": -0.1}, "blend_weight", ["0", "1"]),
    ({"blend_start": 1.5}, "blend_start", ["0", "1"]),
    ({"step_start": 0.6, "step_end": 0.5}, "step_start", ["step_end", "below"]),
    ({"step_start": 0.5, "step_end": 0.5}, "step_start", ["step_end"]),
    ({"step_end": "1.5"}, "step_end", ["0", "1"]),
    ({"layers": "middle"}, "layers", ["default", "decoder", "decoder-high", "all"]),
    ({"mask_source": "sam"}, "mask_source", ["parser", "attention", "both"]),
    ({"mask_combine": "xor"}, "mask_combine", ["union", "intersection"]),
    ({"mask_dilation": 1.5}, "mask_dilation", ["whole number", "0", "64"]),
    ({"mask_dilation": 65}, "mask_dilation", ["64"]),
    ({"mask_dilation": True}, "mask_dilation", ["whole number"]),
    ({"identity_off": "lora,controlnet"}, "identity_off", ["lora", "hypernetwork", "embedding", "adapter"]),
    ({"identity_off": 1}, "identity_off", ["list"]),
    ({"trigger_words": [3]}, "trigger_words", ["string"]),
    ({"trigger_words": ["a\nb"]}, "trigger_words", ["line breaks"]),
    ({"trigger_words": ["x" * 201]}, "trigger_words", ["200"]),
    ({"class_word": ""}, "class_word", ["non-empty"]),
    ({"class_word": "man, woman"}, "class_word", ["commas"]),
    ({"keep_networks": {"a": 1}}, "keep_networks", ["list"]),
    ({"foundation_prompt": "a [prompt ] b"}, "foundation_prompt", ["[PROMPT]", "[prompt ]"]),
    ({"foundation_prompt": "[PROMPTS], x"}, "foundation_prompt", ["[PROMPT]"]),
    ({"foundation_prompt": "{PROMPT}"}, "foundation_prompt", ["[PROMPT]"]),
    ({"foundation_prompt": "x" * 1001}, "foundation_prompt", ["1000"]),
    ({"foundation_prompt": 5}, "foundation_prompt", ["string"]),
    ({"apg": "maybe"}, "apg", ["off", "auto", "on"]),
    ({"apg_strength": "1.01"}, "apg_strength", ["0", "1"]),
    ({"apg_source": "y" * 1001}, "apg_source", ["1000"]),
    ({"apg_target": None}, "apg_target", ["string"]),
    ({"apg_guidance": "cfg"}, "apg_guidance", ["standard", "asymmetric"]),
    ({"hires": "hires"}, "hires", ["low-res", "hi-res", "both"]),
    ({"debug_images": "yes"}, "debug_images", ["true", "false"]),
    ({"debug_images": 1}, "debug_images", ["true", "false"]),
    ({"face_parser": "retina"}, "face_parser", ["bisenet", "parsenet", "none"]),
    ({"faces": "-1"}, "faces", ["all", "largest", "0", "99"]),
    ({"faces": "first"}, "faces", ["all", "largest"]),
    ({"faces": [0.5]}, "faces", ["indices"]),
    ({"faces": ["all", 3]}, "faces", ["all", "largest"]),
    ({"allow_download": None}, "allow_download", ["true", "false"]),
    ({"offload_bank": "0"}, "offload_bank", ["true", "false"]),
    ({"attribute_strength": "hair"}, "attribute_strength", ["hair:1.2", "glasses", "earrings"]),
    ({"attribute_strength": "hair:1, hair:2"}, "attribute_strength", ["hair", "twice"]),
    ({"attribute_strength": "hair:11"}, "attribute_strength", ["hair", "0", "10"]),
    ({"attribute_strength": "expression:1"}, "attribute_strength", ["'expression'", "hair"]),
    ({"attribute_strength": "hair:2, Smiling:2"}, "attribute_strength", ["unknown attribute 'smiling'"]),
    ({"attribute_strength": 1.5}, "attribute_strength", ["attribute:value"]),
    ({"attribute_dilation": {"chair": 3}}, "attribute_dilation", ["'chair'", "hair"]),
    ({"attribute_dilation": "hair:2.5"}, "attribute_dilation", ["hair", "whole number", "64"]),
    ({"passes": "two"}, "passes", ["exact", "one-pass"]),
    ({"one_pass_masks_at": 0.0}, "one_pass_masks_at", ["0.05", "0.95"]),
    ({"enabled": "on"}, "enabled", ["true", "false"]),
]


@pytest.mark.parametrize(("values", "field", "fragments"), ERRORS, ids=[f"{e[1]}-{e[0]}"[:50] for e in ERRORS])
def test_bad_values_name_the_field_and_what_is_accepted(values: dict, field: str, fragments: list[str]) -> None:
    with pytest.raises(OptionsError) as error:
        Options.from_dict(values)
    assert error.value.field == field
    message = str(error.value)
    assert field in message
    for fragment in fragments:
        assert fragment in message
    assert len(message) < 600  # a huge bad value is not echoed whole


def test_every_field_has_an_error_case() -> None:
    assert {field for _, field, _ in ERRORS} == set(UI_FIELDS)


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(OptionsError) as error:
        Options.from_dict({"method": "blend", "colour": "red"})
    assert error.value.field == "colour"
    assert all(name in str(error.value) for name in UI_FIELDS)
    with pytest.raises(OptionsError) as error:
        Options.from_dict(["method", "blend"])  # type: ignore[arg-type]
    assert error.value.field == "settings"


def test_ui_list_of_wrong_length() -> None:
    with pytest.raises(OptionsError) as error:
        Options.from_ui([True, "fasa"])
    assert error.value.field == "args" and str(len(UI_FIELDS)) in str(error.value)


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("method blend", "FreeCure"),
        ("method: blend; strength: 1", "method"),
        ('foundation_prompt: "unterminated', "foundation_prompt"),
        ('foundation_prompt: "a" "b"', "foundation_prompt"),
        ("method: blend, method: fasa", "method"),
        ("colour: red", "colour"),
        ("strength: much", "strength"),
        ('"not json', "FreeCure"),
    ],
)
def test_malformed_infotext_raises(value: str, field: str) -> None:
    with pytest.raises(OptionsError) as error:
        Options.from_infotext({"FreeCure": value})
    assert error.value.field == field


def test_infotext_value_still_quoted_by_the_webui_is_read() -> None:
    opts = Options(enabled=True, method="blend", foundation_prompt="a, b")
    quoted = json.dumps(opts.to_infotext()["FreeCure"])
    assert Options.from_infotext({"FreeCure": quoted}) == opts


def test_loose_forms_are_canonicalised() -> None:
    opts = Options(
        method=" BLEND ", attributes="Glasses + hair", strength="", mask_dilation=4.0, faces=3,
        identity_off="adapter,lora,lora", trigger_words=" ohwx ,, sks ", debug_images="False",
    )  # fmt: skip
    assert opts.method == "blend"
    assert opts.attributes == ("hair", "glasses")  # vocabulary order
    assert opts.strength is None
    assert opts.mask_dilation == 4 and isinstance(opts.mask_dilation, int)
    assert opts.faces == (3,)
    assert opts.identity_off == ("lora", "adapter")
    assert opts.trigger_words == ("ohwx", "sks")
    assert opts.debug_images is False
    assert Options(attributes=[]).attributes == "auto" and Options(faces="").faces == "all"


def test_options_are_frozen_and_hashable() -> None:
    opts = Options()
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.method = "blend"  # type: ignore[misc]
    assert hash(opts) == hash(Options())


def test_resolved_fills_family_strength() -> None:
    assert Options().resolved("sd1").strength == 0.5
    assert Options().resolved("sd2").strength == 0.5
    assert Options().resolved("sdxl").strength == 1.5
    assert Options().resolved("flux").strength == 1.5
    assert Options(strength=3.0).resolved("sdxl").strength == 3.0
    assert Options(strength=0.0).effective_strength("sd1") == 0.0
    with pytest.raises(OptionsError) as error:
        Options().resolved("sd3")
    assert error.value.field == "family" and "flux" in str(error.value)


def test_schema_describes_every_field() -> None:
    description = json.loads(json.dumps(schema()))
    assert description["ui_order"] == list(UI_FIELDS)
    defaults = Options()
    for name in UI_FIELDS:
        entry = description["fields"][name]
        default = getattr(defaults, name)
        assert entry["default"] == (list(default) if isinstance(default, tuple) else default)
        assert entry["doc"] and entry["type"]
    assert description["fields"]["method"]["choices"] == ["fasa", "blend"]
    assert description["fields"]["strength"]["nullable"] is True
    assert description["fields"]["mask_dilation"]["maximum"] == 64
    assert description["fields"]["attributes"]["items"] == list(VOCABULARY)
