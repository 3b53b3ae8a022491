"""Foundation prompt: network tags, trigger words and embeddings out; A1111 syntax and the rest kept."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freecure.identity import FoundationPrompt, foundation_prompt, strip_network_tags


@pytest.mark.parametrize(
    ("prompt", "text", "removed"),
    [
        ("a photo of a woman, <lora:alice:0.8>, red hair", "a photo of a woman, red hair", ("lora:alice",)),
        ("<LORA:Alice_v2:1:te=0.5:unet=1> portrait", "portrait", ("lora:Alice_v2",)),
        ("<lora:alice>, portrait", "portrait", ("lora:alice",)),
        ("portrait, <lyco:bob_locon:0.6:0.4>, glasses", "portrait, glasses", ("lyco:bob_locon",)),
        ("portrait <hypernet:face_hn:1>, hat", "portrait, hat", ("hypernet:face_hn",)),
        (
            "<lora:a:1><LyCo:b:1> a man,  <hypernet:c:0.5>,\nsmiling",
            "a man,\nsmiling",
            ("lora:a", "lyco:b", "hypernet:c"),
        ),
    ],
)
def test_network_tags_are_removed_and_reported(prompt: str, text: str, removed: tuple[str, ...]) -> None:
    assert foundation_prompt(prompt) == FoundationPrompt(text, removed)


def test_kept_networks_and_other_tag_kinds_stay() -> None:
    prompt = "a woman <lora:Detail_Tweaker:0.5> <lora:alice:1> <lyco:ADD+more:1> <embedding:x:1>"
    result = foundation_prompt(prompt, keep_networks=["detail_tweaker", " add+MORE "])
    assert result.text == "a woman <lora:Detail_Tweaker:0.5> <lyco:ADD+more:1> <embedding:x:1>"
    assert result.removed == ("lora:alice",)


def test_network_kinds_limits_what_is_stripped() -> None:
    prompt = "a man <lora:alice:1> <hypernet:h:1>"
    assert foundation_prompt(prompt, network_kinds=["hypernet"]).text == "a man <lora:alice:1>"


def test_strip_network_tags_reports_kind_and_name() -> None:
    text, removed = strip_network_tags("x <LoRA:a:1>, <lyco:b>, <hypernet:c:0.2:0.3>, y", keep=["B"])
    assert text == "x, <lyco:b>, y"
    assert removed == [("lora", "a"), ("hypernet", "c")]
    # A removal that brings "<" next to "lora:b:1>" does not leave a new tag behind.
    assert strip_network_tags("<<lora:a:1>lora:b:1>, z") == ("z", [("lora", "a"), ("lora", "b")])


@pytest.mark.parametrize(
    ("prompt", "kwargs", "text", "removed"),
    [
        ("photo of ohwx, glasses", {"trigger_words": ["ohwx"]}, "photo of person, glasses", ("trigger:ohwx",)),
        ("(ohwx:1.2), glasses", {"trigger_words": ["ohwx"]}, "(person:1.2), glasses", ("trigger:ohwx",)),
        ("((OHWX)), hat", {"trigger_words": ["ohwx"]}, "((person)), hat", ("trigger:ohwx",)),
        ("[ohwx:elf:0.5]", {"trigger_words": ["ohwx"]}, "[person:elf:0.5]", ("trigger:ohwx",)),
        ("ohwxx, ohwx_style, xohwx", {"trigger_words": ["ohwx"]}, "ohwxx, ohwx_style, xohwx", ()),
        (
            "photo of myemb, red hair",
            {"embeddings": ["myemb"]},
            "photo of person, red hair",
            ("embedding:myemb",),
        ),
        (
            "portrait of sks  dog",
            {"trigger_words": ["sks dog"], "class_word": "woman"},
            "portrait of woman",
            ("trigger:sks dog",),
        ),
        ("an ohwx with a hat", {"trigger_words": ["ohwx"]}, "a person with a hat", ("trigger:ohwx",)),
        ("A ohwx", {"trigger_words": ["ohwx"], "class_word": "elf"}, "An elf", ("trigger:ohwx",)),
    ],
)
def test_trigger_words_and_embeddings_become_the_class_word(
    prompt: str, kwargs: dict, text: str, removed: tuple[str, ...]
) -> None:
    assert foundation_prompt(prompt, **kwargs) == FoundationPrompt(text, removed)


@pytest.mark.parametrize(
    ("prompt", "text"),
    [
        ("a photo of ohwx woman, red hair", "a photo of woman, red hair"),
        ("a woman ohwx, red hair", "a woman, red hair"),
        ("a photo of ohwx person", "a photo of person"),
        ("(ohwx:1.2) man, glasses", "man, glasses"),
        ("ohwx 1girl, smile", "1girl, smile"),
        ("ohwx sks woman", "woman"),
        ("photo of ohwx sks, hat", "photo of person, hat"),
        ("ohwx women", "women"),
    ],
)
def test_no_doubled_class_word(prompt: str, text: str) -> None:
    result = foundation_prompt(prompt, trigger_words=["ohwx", "sks"])
    assert result.text == text
    assert "person person" not in result.text


def test_class_word_itself_counts_as_a_class_noun() -> None:
    assert foundation_prompt("ohwx elf, pointy ears", trigger_words=["ohwx"], class_word="elf").text == (
        "elf, pointy ears"
    )


def test_trigger_word_inside_a_kept_tag_is_a_file_name() -> None:
    result = foundation_prompt("ohwx, <lora:ohwx:1>", trigger_words=["ohwx"], keep_networks=["ohwx"])
    assert result == FoundationPrompt("person, <lora:ohwx:1>", ("trigger:ohwx",))
    stripped = foundation_prompt("ohwx, <lora:ohwx:1>", trigger_words=["ohwx"])
    assert stripped == FoundationPrompt("person", ("lora:ohwx", "trigger:ohwx"))


def test_a1111_syntax_is_preserved() -> None:
    prompt = "ohwx woman, <lora:alice:1> AND (red hair:1.2) BREAK [glasses|goggles], \\(sunglasses\\) AND [hat:cap:0.3]"
    result = foundation_prompt(prompt, trigger_words=["ohwx"])
    assert result.text == "woman, AND (red hair:1.2) BREAK [glasses|goggles], \\(sunglasses\\) AND [hat:cap:0.3]"
    assert result.text.count("AND") == 2 and "BREAK" in result.text


def test_template_with_placeholder_wraps_the_cleaned_prompt() -> None:
    result = foundation_prompt(
        "ohwx woman, <lora:alice:1>, red hair",
        trigger_words=["ohwx"],
        template="RAW photo, [PROMPT], film grain, ([PROMPT]:0.5)",
    )
    assert result.text == "RAW photo, woman, red hair, film grain, (woman, red hair:0.5)"
    assert result.removed == ("lora:alice", "trigger:ohwx")


def test_template_without_placeholder_is_used_verbatim() -> None:
    template = "a  woman,, with red hair  "
    result = foundation_prompt("ohwx woman <lora:alice:1>", trigger_words=["ohwx"], template=template)
    assert result == FoundationPrompt(template, ("lora:alice", "trigger:ohwx"))


def test_prompt_with_nothing_to_remove_is_unchanged_character_for_character() -> None:
    prompt = "a  photo,, of a woman ,\n (red hair:1.2) , <lora:style:1>  "
    assert foundation_prompt(prompt, trigger_words=["ohwx"], keep_networks=["style"]) == FoundationPrompt(
        prompt, ()
    )


def test_whitespace_and_commas_are_tidied_after_a_removal() -> None:
    result = foundation_prompt(", <lora:a:1> ,  a man ,, ohwx ,  hat,\n <lora:b:1>\nsmile", trigger_words=["ohwx"])
    assert result.text == "a man, person, hat,\nsmile"


_PIECES = st.sampled_from(
    ["<lora:", "<lyco:", "<LoRA:", "<hypernet:", "keep", "name", ":0.8", ">", "<", "(", ")", "[", "]", ":",
     ",", " ", "\n", "ohwx", "woman", "a", "an", "AND", "BREAK", "1.2", "|", "\\", "_", "sks man"]
)  # fmt: skip
_LORA_TAG = re.compile(r"<lora:([^:>]+)[^>]*>", re.IGNORECASE)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.text(max_size=60), st.lists(_PIECES, max_size=30).map("".join)),
    st.lists(st.sampled_from(["ohwx", "sks man", "a", "name", "(", "<lora"]), max_size=3),
    st.sampled_from(["person", "woman", "elf"]),
)
def test_fuzz_never_raises_and_never_leaves_a_lora_tag_unless_kept(
    prompt: str, trigger_words: list[str], class_word: str
) -> None:
    result = foundation_prompt(prompt, trigger_words=trigger_words, class_word=class_word, keep_networks=["keep"])
    for tag in _LORA_TAG.finditer(result.text):
        assert tag.group(1).strip().lower() == "keep", (prompt, result.text)
    if not re.search(r"<(lora|lyco|hypernet):[^>]+>", prompt, re.IGNORECASE) and not trigger_words:
        assert result == FoundationPrompt(prompt, ())
