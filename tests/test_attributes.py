"""Prompt analysis on real-looking A1111 prompts: attribute names, exact spans, phrases, negatives."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freecure.attributes import PARSER_PARTS, VOCABULARY, analyze_prompt, subject_phrase

# (prompt, [(attribute, matched text, phrase)]): the expected span of each text is its first
# occurrence (str.find) after the previous expected match.
CASES: list[tuple[str, list[tuple]]] = [
    (
        "a photo of a woman with (red curly hair:1.2), wearing round sunglasses and pearl earrings, "
        "laughing happily",
        [
            ("hair", "hair", "red curly hair"),
            ("glasses", "sunglasses", "round sunglasses"),
            ("earrings", "earrings", "pearl earrings"),
            ("expression", "laughing", "laughing happily"),
        ],
    ),
    (
        "masterpiece, best quality, 1girl, solo, long_hair, blue_eyes, smile, looking at viewer, "
        "<lora:red_hair_v2:0.8>",
        [("hair", "hair", "long_hair"), ("eyes", "eyes", "blue_eyes"), ("expression", "smile", "smile")],
    ),
    (
        "<lora:red_hair_v2:0.8>, portrait of ohwx man, ((glasses)), [hat], beard, studio lighting",
        [("glasses", "glasses", "glasses"), ("hat", "hat", "hat"), ("beard", "beard", "beard")],
    ),
    (
        "close-up photo of a man wearing a black fedora and a gold chain necklace, serious expression",
        [
            ("hat", "fedora", "black fedora"),
            ("necklace", "necklace", "gold chain necklace"),
            ("expression", "serious expression", "serious expression"),
        ],
    ),
    (
        "a young woman with freckles and green eyes, wearing a beanie, smiling, <lyco:freckles_lyco:0.6>",
        [
            ("skin", "freckles", "freckles"),
            ("eyes", "eyes", "green eyes"),
            ("hat", "beanie", "beanie"),
            ("expression", "smiling", "smiling"),
        ],
    ),
    (
        "RAW photo, zwx woman, blonde ponytail, hoop earrings, choker, (freckles:0.8), film grain",
        [
            ("hair", "ponytail", "blonde ponytail"),
            ("earrings", "earrings", "hoop earrings"),
            ("necklace", "choker", "choker"),
            ("skin", "freckles", "freckles"),
        ],
    ),
    (
        "a man with a goatee and a moustache, wearing aviator sunglasses, frowning",
        [
            ("beard", "goatee", "goatee"),
            ("beard", "moustache", "moustache"),
            ("glasses", "sunglasses", "aviator sunglasses"),
            ("expression", "frowning", "frowning"),
        ],
    ),
    (
        "1boy, short hair, black hair, baseball cap, angry, open mouth, BREAK, city background",
        [
            ("hair", "hair", "short hair"),
            ("hair", "hair", "black hair"),
            ("hat", "cap", "baseball cap"),
            ("expression", "angry", "angry"),
            ("lips", "mouth", "open mouth"),
        ],
    ),
    (
        "photo of sks person AND a woman with braids AND red lipstick",
        [("hair", "braids", "braids"), ("lips", "lipstick", "red lipstick")],
    ),
    (
        "[a woman with bangs:a woman with a bob cut:0.4], glasses",
        [("hair", "bangs", "bangs"), ("hair", "bob cut", "bob cut"), ("glasses", "glasses", "glasses")],
    ),
    (
        "a portrait of a [cat|dog] eared girl, [blue|green] eyes, tiara",
        [("eyes", "eyes", "eyes"), ("hat", "tiara", "tiara")],
    ),
    (r"\(sunglasses\), a man", [("glasses", "sunglasses", "sunglasses")]),
    (
        "pointy elf ears and dangling earrings",
        [("ears", "elf ears", "pointy elf ears"), ("earrings", "earrings", "dangling earrings")],
    ),
    ("a woman, no glasses, without a hat, smiling", [("expression", "smiling", "smiling")]),
    (
        "A cinematic close-up portrait of a middle-aged man with grey stubble and thick eyebrows, "
        "wearing a wool beanie, soft window light",
        [
            ("beard", "stubble", "grey stubble"),
            ("brows", "eyebrows", "thick eyebrows"),
            ("hat", "beanie", "wool beanie"),
        ],
    ),
    (
        "portrait of a woman with heterochromia, one blue eye and one green eye",
        [
            ("eyes", "heterochromia", "heterochromia"),
            ("eyes", "eye", "blue eye"),
            ("eyes", "eye", "green eye"),
        ],
    ),
    (
        "(masterpiece:1.2), 1girl, twintails, hair ribbon, cat ears, blush",
        [("hair", "twintails", "twintails"), ("hair", "hair", "hair"), ("ears", "ears", "cat ears")],
    ),
    (
        "a smiling woman wearing glasses",
        [("expression", "smiling", "smiling"), ("glasses", "glasses", "glasses")],
    ),
    (
        "a woman with long wavy auburn hair in a messy bun",
        [("hair", "hair", "long wavy auburn hair"), ("hair", "bun", "messy bun")],
    ),
    ("studio photo of a man, <hypernet:glasses_net:1>, tattoo on the neck", [("skin", "tattoo", "tattoo")]),
    (
        "woman with blue eyeshadow and pink lip gloss",
        [("eyes", "eyeshadow", "blue eyeshadow"), ("lips", "lip gloss", "pink lip gloss")],
    ),
    (
        "a woman with a pearl necklace and matching pearl earrings, grinning widely",
        [
            ("necklace", "necklace", "pearl necklace"),
            ("earrings", "earrings", "matching pearl earrings"),
            ("expression", "grinning", "grinning widely"),
        ],
    ),
    (
        "a knight wearing a helmet with a visor, surprised",
        [("hat", "helmet", "helmet"), ("expression", "surprised", "surprised")],
    ),
    ("(ohwx:1.3) man, crew cut, clean-shaven", [("hair", "crew cut", "crew cut")]),
    (
        "1girl, hairpin, hairband, hairline",
        [("hair", "hairpin", "hairpin"), ("hair", "hairband", "hairband")],
    ),
    (
        "a man in spectacles and a turban, sad",
        [("glasses", "spectacles", "spectacles"), ("hat", "turban", "turban"), ("expression", "sad", "sad")],
    ),
    ("CHAIR, Hat, GLASSES", [("hat", "Hat", "Hat"), ("glasses", "GLASSES", "GLASSES")]),
    (
        "a girl with goggles on her head, pigtails, crying",
        [
            ("glasses", "goggles", "goggles"),
            ("hair", "pigtails", "pigtails"),
            ("expression", "crying", "crying"),
        ],
    ),
    (
        "photo of a woman, makeup, red lipstick, eyeliner, <lora:makeup_helper:0.5>",
        [
            ("skin", "makeup", "makeup"),
            ("lips", "lipstick", "red lipstick"),
            ("eyes", "eyeliner", "eyeliner"),
        ],
    ),
    (
        "a man with sideburns and a mohawk, laughing",
        [
            ("beard", "sideburns", "sideburns"),
            ("hair", "mohawk", "mohawk"),
            ("expression", "laughing", "laughing"),
        ],
    ),
    (
        "a beautiful woman, unibrow, monocle",
        [("brows", "unibrow", "unibrow"), ("glasses", "monocle", "monocle")],
    ),
    (
        "a person with dreadlocks and a bandana, winking",
        [
            ("hair", "dreadlocks", "dreadlocks"),
            ("hat", "bandana", "bandana"),
            ("expression", "winking", "winking"),
        ],
    ),
    ("a man with facial hair", [("beard", "facial hair", "facial hair")]),
    (
        "score_9, portrait of a woman with (platinum blonde hair:1.1) AND (curly hair bun:0.9), "
        "red eyes BREAK wearing a witch hat",
        [
            ("hair", "hair", "platinum blonde hair"),
            ("hair", "hair bun", "curly hair bun"),
            ("eyes", "eyes", "red eyes"),
            ("hat", "hat", "witch hat"),
        ],
    ),
    (
        "woman, (very angry:1.4), [smile:frown:0.5]",
        [
            ("expression", "angry", "very angry"),
            ("expression", "smile", "smile"),
            ("expression", "frown", "frown"),
        ],
    ),
]


def _expected_spans(prompt: str, expected: list[tuple]) -> list[tuple[str, str, int, int, str]]:
    spans, cursor = [], 0
    for name, text, phrase in expected:
        start = prompt.find(text, cursor)
        assert start >= 0, f"bad test case: {text!r} not in {prompt!r}"
        spans.append((name, text, start, start + len(text), phrase))
        cursor = start + len(text)
    return spans


@pytest.mark.parametrize(("prompt", "expected"), CASES, ids=[c[0][:40] for c in CASES])
def test_prompt_attributes_and_exact_spans(prompt: str, expected: list[tuple]) -> None:
    analysis = analyze_prompt(prompt)
    got = [(m.name, m.text, m.start, m.end, m.phrase) for m in analysis.matches]
    assert got == _expected_spans(prompt, expected)
    for m in analysis.matches:
        assert prompt[m.start : m.end] == m.text
        assert prompt[m.phrase_start : m.phrase_end] == m.phrase
        assert m.phrase_start <= m.start and m.end <= m.phrase_end


def test_lora_tag_contents_never_match() -> None:
    prompt = "<lora:red_hair_v2:1>, <LyCORIS:glasses:0.5>, <hypernet:hat_net:1> a man"
    assert analyze_prompt(prompt).matches == ()
    # The same words outside the tag do match, at their own position.
    after = prompt + ", red hair"
    (match,) = analyze_prompt(after).matches
    assert (match.start, match.phrase) == (len(prompt) + len(", red "), "red hair")


@pytest.mark.parametrize(
    ("prompt", "names"),
    [
        ("a wooden chair by the window", ()),
        ("that is what we chat about", ()),
        ("a glass of wine", ()),
        ("a hatched pattern, chatting, whatever", ()),
        ("a capable earnest brown dog", ()),
        ("receding hairline", ()),
        ("earrings", ("earrings",)),
        ("eyeglasses", ("glasses",)),
        ("bushy eyebrows", ("brows",)),
    ],
)
def test_words_inside_other_words_do_not_match(prompt: str, names: tuple[str, ...]) -> None:
    assert analyze_prompt(prompt).names() == names


def test_decided_edge_words() -> None:
    # hairpin sits in the hair region: hair. eyeshadow is eye makeup: eyes. hairline: nothing.
    assert analyze_prompt("hairpin").names() == ("hair",)
    assert analyze_prompt("eyeshadow").names() == ("eyes",)
    assert analyze_prompt("hairline").names() == ()
    # "facial hair" is the beard, not the head's hair.
    assert analyze_prompt("facial hair").names() == ("beard",)


def test_ignore_keeps_embedding_names_out() -> None:
    prompt = "hairstyle_emb, a woman with curls"
    assert analyze_prompt(prompt).names() == ("hair",)
    assert [m.text for m in analyze_prompt(prompt).matches] == ["hairstyle", "curls"]
    only = analyze_prompt(prompt, ignore=["HairStyle_Emb"]).matches
    assert [(m.text, m.start) for m in only] == [("curls", prompt.index("curls"))]


def test_names_regional_abstract_and_expression_phrase() -> None:
    analysis = analyze_prompt("a man laughing happily with red hair, glasses, red hair, smiling broadly")
    assert analysis.names() == ("expression", "hair", "glasses")
    assert analysis.regional == ("hair", "glasses")
    assert analysis.abstract == ("expression",)
    assert analysis.phrases("hair") == ("red hair",)
    assert analysis.expression_phrase() == "laughing happily, smiling broadly"
    assert analyze_prompt("a woman, red hair").expression_phrase() == ""
    assert analyze_prompt("1girl, big_smile").expression_phrase() == "big smile"


@pytest.mark.parametrize(
    ("prompt", "subject"),
    [
        ("a photo of a woman with red hair", "a woman"),
        ("portrait of ohwx man, glasses", "a man"),
        ("masterpiece, 1girl, solo, long hair", "a girl"),
        ("two women laughing", "women"),
        ("<lora:woman_v1:1>, a cat in a hat", "a person"),
        ("an old gentleman, top hat", "a gentleman"),
    ],
)
def test_subject_phrase(prompt: str, subject: str) -> None:
    assert subject_phrase(prompt) == subject


def test_vocabulary_is_consistent() -> None:
    for name, attribute in VOCABULARY.items():
        assert attribute.name == name
        assert set(attribute.parts) <= set(PARSER_PARTS), name
        assert attribute.regional or not attribute.parts, name
        # Every listed word is found by the analyzer as this attribute.
        for word in attribute.words:
            assert analyze_prompt(word).names() == (name,), word
    assert VOCABULARY["beard"].parts == () and VOCABULARY["beard"].regional
    assert not VOCABULARY["expression"].regional


_SYNTAX = st.sampled_from(
    ["(", ")", "[", "]", "<", ">", ":", "|", ",", "\\", " ", "_", "-", "\n", "1.2", "AND", "BREAK",
     "<lora:", "hair", "glasses", "no", "red", "smiling", "happily", "a", "woman", "ear", "rings", "é"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.text(max_size=80), st.lists(_SYNTAX, max_size=40).map("".join)),
    st.lists(st.text(max_size=8)),
)
def test_fuzz_never_raises_and_spans_point_into_the_text(prompt: str, ignore: list[str]) -> None:
    analysis = analyze_prompt(prompt, ignore=ignore)
    previous_end = 0
    for m in analysis.matches:
        assert prompt[m.start : m.end] == m.text
        assert prompt[m.phrase_start : m.phrase_end] == m.phrase
        assert m.phrase_start <= m.start < m.end <= m.phrase_end
        assert m.start >= previous_end  # ordered, non-overlapping
        previous_end = m.end
    analysis.expression_phrase()
    assert subject_phrase(prompt)
