"""The prompt of the foundation pass: the user's prompt with the identity taken out.

Identity reaches the prompt three ways: extra-network tags (``<lora:name:0.8>``, ``<lyco:...>``,
``<hypernet:...>``), trigger words of a character LoRA or DreamBooth model (``ohwx``), and textual
inversion embeddings. Tags go; trigger words and embeddings become the class word, so the foundation
still shows "a person" with every prompted attribute. A1111 syntax (emphasis, editing, ``AND``,
``BREAK``) passes through untouched.

A prompt with nothing to remove comes back character for character, so its conditioning is exactly
the plain one; text is tidied (spaces, doubled commas, emptied emphasis) only when something was cut.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from freecure.attributes import SUBJECT_NOUNS
from freecure.options import PROMPT_PLACEHOLDER

NETWORK_KINDS = ("lora", "lyco", "hypernet")
# Which tag kinds belong to each identity source of ``Options.identity_off``.
IDENTITY_TAG_KINDS = {"lora": ("lora", "lyco"), "hypernetwork": ("hypernet",)}

_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")  # the WebUI's extra-network syntax
# What may sit between two words without separating them: spaces, brackets, emphasis weights.
_GAP = r"(?:\s|[()\[\]]|:\s*-?\d*\.?\d+)*"
_WORD_AFTER = re.compile(_GAP + r"\d*([^\W\d_]+)")  # "1girl" counts as "girl"
_WORD_BEFORE = re.compile(r"([^\W\d_]+)" + _GAP + r"\Z")
_ARTICLE_BEFORE = re.compile(r"(?<!\w)(an?)(\s|[(\[])*\Z", re.IGNORECASE)
_EMPTY_GROUP = re.compile(r"\(\s*(?::\s*-?\d*\.?\d+\s*)?\)|\[\s*\]")


@dataclass(frozen=True)
class FoundationPrompt:
    """The foundation prompt and what was taken out ("lora:name", "trigger:ohwx", "embedding:name")."""

    text: str
    removed: tuple[str, ...]


def strip_network_tags(
    prompt: str, keep: Iterable[str] = (), kinds: Iterable[str] = NETWORK_KINDS
) -> tuple[str, list[tuple[str, str]]]:
    """Remove extra-network tags of ``kinds`` (any case) except networks named in ``keep``.

    Returns the prompt and the ``(kind, name)`` of each removed tag, kind in lower case.
    """
    keep_names = {name.strip().lower() for name in keep}
    strip_kinds = {kind.lower() for kind in kinds}
    removed: list[tuple[str, str]] = []

    def drop(tag: re.Match[str]) -> str:
        kind, name = tag.group(1).lower(), tag.group(2).split(":")[0].strip()
        if kind not in strip_kinds or name.lower() in keep_names:
            return tag.group()
        removed.append((kind, name))
        return ""

    text = prompt
    while True:  # a removal (and its tidying) can join "<" and "lora:b:1>" into a new tag: strip that too
        stripped = _NETWORK_TAG.sub(drop, text)
        if stripped == text:
            return text, removed
        text = _tidy(stripped)


def foundation_prompt(
    prompt: str,
    *,
    trigger_words: Iterable[str] = (),
    class_word: str = "person",
    keep_networks: Iterable[str] = (),
    template: str = "",
    embeddings: Iterable[str] = (),
    network_kinds: Iterable[str] = NETWORK_KINDS,
) -> FoundationPrompt:
    """The prompt for the identity-off pass.

    Network tags of ``network_kinds`` are removed unless kept; trigger words and embedding names
    (whole words, any case, also inside emphasis) become ``class_word``, or vanish next to a class noun
    ("ohwx woman" -> "woman"). A ``template`` with ``[PROMPT]`` wraps the cleaned prompt; a template
    without it is the foundation prompt as written.
    """
    labels: dict[str, str] = {}  # lower-case name -> report label; a trigger word wins over an embedding
    for prefix, names in (("embedding", embeddings), ("trigger", trigger_words)):
        for name in names:
            if name.strip():
                labels[" ".join(name.split()).lower()] = f"{prefix}:{name.strip()}"
    text, replaced = _replace_identity_words(prompt, labels, class_word.strip()) if labels else (prompt, [])
    # Tags go last, so that nothing the word replacement tidied together can remain a tag.
    text, tags = strip_network_tags(text, keep_networks, network_kinds)
    removed = [f"{kind}:{name}" for kind, name in tags] + replaced

    if template:
        text = template.replace(PROMPT_PLACEHOLDER, text) if PROMPT_PLACEHOLDER in template else template
    return FoundationPrompt(text, tuple(dict.fromkeys(removed)))


def _replace_identity_words(text: str, labels: dict[str, str], class_word: str) -> tuple[str, list[str]]:
    """Replace each run of identity words outside network tags; returns the text and the report labels."""
    # Longest names first so "ohwx man" wins over "ohwx"; a run is names separated only by a gap.
    names = "|".join(re.escape(name).replace(r"\ ", r"\s+") for name in sorted(labels, key=len, reverse=True))
    one = rf"(?<!\w)(?:{names})(?!\w)"
    run = re.compile(rf"{one}(?:{_GAP}{one})*", re.IGNORECASE)
    single = re.compile(one, re.IGNORECASE)
    class_nouns = SUBJECT_NOUNS | {class_word.lower()}

    tags = [tag.span() for tag in _NETWORK_TAG.finditer(text)]
    pieces: list[str] = []
    reported: list[str] = []
    position = 0
    for match in run.finditer(text):
        if any(start < match.end() and match.start() < end for start, end in tags):
            continue  # inside a network tag the name is a file name, not a word
        reported += [labels[" ".join(m.group().split()).lower()] for m in single.finditer(match.group())]
        before, after = text[position : match.start()], text[match.end() :]
        word_after, word_before = _WORD_AFTER.match(after), _WORD_BEFORE.search(before)
        next_to_class_noun = (word_after and word_after.group(1).lower() in class_nouns) or (
            word_before and word_before.group(1).lower() in class_nouns
        )
        if next_to_class_noun:
            pieces.append(before)
        else:
            pieces.append(_agree_article(before, class_word) + class_word)
        position = match.end()
    if not reported:
        return text, []
    pieces.append(text[position:])
    return _tidy("".join(pieces)), reported


def _agree_article(before: str, word: str) -> str:
    """Fix "a"/"an" right before an inserted word ("an ohwx" -> "a person")."""
    article = _ARTICLE_BEFORE.search(before)
    if article is None:
        return before
    wanted = "an" if word[:1].lower() in "aeiou" else "a"
    if article.group(1)[0].isupper():
        wanted = wanted.capitalize()
    return before[: article.start(1)] + wanted + before[article.end(1) :]


def _tidy(text: str) -> str:
    """Collapse what a removal leaves behind: runs of spaces, doubled commas, empty emphasis."""
    previous = None
    while previous != text:  # "((ohwx))" empties from the inside out
        previous, text = text, _EMPTY_GROUP.sub("", text)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"( ?\n ?)+", "\n", text)  # a tag alone on its line leaves an empty line
    text = re.sub(r" +,", ",", text)
    text = re.sub(r",(?:[ \t]*,)+", ",", text)
    return text.strip(" \t\n,")
