"""Attribute vocabulary and prompt analysis.

FreeCure cures *attributes*: things the prompt asks for that the identity tends to crowd out. Regional
attributes (hair, glasses, hat, ...) are cured inside a mask, built from face-parser part names listed
here and/or from the cross-attention maps of the words that named them; abstract ones (expression) have
no region and go to APG.

``analyze_prompt`` reads A1111 prompt syntax: emphasis ``(red hair:1.2)``, ``[hat]``, escaped ``\\(``,
editing ``[a:b:0.5]``, alternation ``[a|b]``, ``AND``, ``BREAK``. Extra-network tags such as
``<lora:red_hair_v2:1>`` are skipped whole, so their contents never match. Words are runs of letters:
underscores and hyphens separate words, so booru tags like ``long_hair`` match, while ``chair``,
``that`` or ``earrings`` do not match ``hair``, ``hat`` or ``ears``. Every span indexes the original
prompt string.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass

# Part names shared with the face parsers (freecure.parsing maps them to BiSeNet/ParseNet label ids).
PARSER_PARTS: tuple[str, ...] = (
    "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r", "nose",
    "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)  # fmt: skip


@dataclass(frozen=True)
class Attribute:
    """One curable attribute.

    ``words`` are lower-case words or space-separated phrases; the last word of each also matches with a
    plural ``-s``/``-es``. ``parts`` are face-parser part names covering the attribute; a regional
    attribute with no parts (beard) gets its mask from cross-attention maps only.
    """

    name: str
    words: tuple[str, ...]
    regional: bool
    parts: tuple[str, ...] = ()


def _attribute(name: str, words: str, parts: tuple[str, ...] = (), regional: bool = True) -> Attribute:
    return Attribute(name, tuple(w.strip() for w in words.split(",")), regional, parts)


VOCABULARY: dict[str, Attribute] = {
    a.name: a
    for a in (
        _attribute(
            "hair",
            "hair, hairstyle, haircut, hairdo, hairpin, hairclip, hairband, ponytail, pony tail, pigtail,"
            " twintail, braid, plait, bangs, fringe, bob cut, pixie cut, buzz cut, crew cut, curl,"
            " ringlet, afro, bun, updo, dreadlock, cornrow, mohawk, mullet, tress, lock of hair",
            ("hair",),
        ),
        _attribute(
            "eyes",
            "eye, eyelash, eyeshadow, eye shadow, eyeliner, mascara, iris, irises, pupil, heterochromia",
            ("l_eye", "r_eye"),
        ),
        _attribute("brows", "eyebrow, brow, unibrow", ("l_brow", "r_brow")),
        _attribute(
            "glasses",
            "glasses, eyeglasses, sunglasses, spectacles, goggles, monocle, eyewear",
            ("eye_g",),
        ),
        _attribute(
            "hat",
            "hat, cap, beanie, beret, fedora, helmet, crown, tiara, bonnet, sombrero, turban, bandana,"
            " headscarf, head scarf, headwear, snapback, stetson, trilby, top hat, hard hat",
            ("hat",),
        ),
        _attribute("earrings", "earring, ear stud, ear cuff, ear piercing", ("ear_r",)),
        _attribute("necklace", "necklace, choker, pendant, locket", ("neck_l",)),
        _attribute("lips", "lips, lip, lipstick, lip gloss, mouth", ("u_lip", "l_lip", "mouth")),
        # The parsers have no beard label: the mask comes from the attention maps of these words.
        _attribute("beard", "beard, moustache, mustache, stubble, goatee, sideburn, facial hair"),
        _attribute("ears", "ear, elf ear, pointy ear", ("l_ear", "r_ear")),
        _attribute("skin", "freckle, makeup, make up, face paint, facepaint, tattoo", ("skin",)),
        _attribute(
            "expression",
            "expression, smile, smiling, smiled, grin, grinning, smirk, smirking, laugh, laughing,"
            " laughed, laughter, happy, joyful, cheerful, angry,"
            " furious, frown, frowning, scowl, scowling, sad, unhappy, sorrowful, crying, tearful,"
            " surprised, shocked, astonished, scared, afraid, frightened, disgusted, pout, pouting,"
            " serious, worried, excited, confused, embarrassed, nervous, wink, winking",
            regional=False,
        ),
    )
}

# Class nouns for the subject ("a woman"); also used by freecure.identity against "a person person".
_SINGULAR_SUBJECTS = (
    "woman", "man", "girl", "boy", "person", "lady", "gentleman", "guy", "child", "kid", "teenager",
    "teen", "baby",
)  # fmt: skip
_PLURAL_SUBJECTS = (
    "women", "men", "girls", "boys", "people", "ladies", "gentlemen", "guys", "children", "kids",
    "teenagers", "teens", "babies",
)  # fmt: skip
SUBJECT_NOUNS: frozenset[str] = frozenset(_SINGULAR_SUBJECTS + _PLURAL_SUBJECTS)

# Words that end a modifier phrase: "a man *with* red hair" keeps "red hair" only.
_STOP_WORDS = frozenset({
    "a", "an", "the", "and", "or", "but", "with", "without", "of", "in", "on", "at", "to", "for", "by",
    "from", "into", "onto", "over", "under", "near", "behind", "wearing", "wears", "wear", "worn", "has",
    "have", "having", "had", "is", "are", "was", "were", "be", "being", "her", "his", "their", "my",
    "your", "its", "our", "who", "that", "which", "while", "as", "no", "not", "one", "two", "both", "each",
    "some", "any", "this", "these", "those",
})  # fmt: skip
_NEGATIONS = frozenset({"no", "without", "not"})
_NEGATION_SKIPPABLE = frozenset({"a", "an", "the", "any", "wearing"})
# Adverbs after an expression word belong to its phrase ("laughing happily").
_MAX_MODIFIERS = 4

_NETWORK_TAG = re.compile(r"<\w+:[^>]+>")  # the WebUI's own extra-network syntax
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters (any script)
_KEYWORDS = frozenset({"AND", "BREAK"})  # prompt syntax, not words (case-sensitive, as in the WebUI)
_JOIN_GAP = re.compile(r"[ \t_-]+")  # what may sit between the words of one phrase


@dataclass(frozen=True)
class AttributeMatch:
    """One attribute word in a prompt: ``prompt[start:end] == text``; the phrase adds its modifiers."""

    name: str
    text: str
    start: int
    end: int
    phrase: str
    phrase_start: int
    phrase_end: int


@dataclass(frozen=True)
class _Word:
    lower: str
    start: int
    end: int


@dataclass(frozen=True)
class PromptAnalysis:
    """The attributes a prompt asks for, in prompt order."""

    prompt: str
    matches: tuple[AttributeMatch, ...]

    def names(self) -> tuple[str, ...]:
        """Attribute names in order of first appearance, each once."""
        return tuple(dict.fromkeys(m.name for m in self.matches))

    @property
    def regional(self) -> tuple[str, ...]:
        return tuple(n for n in self.names() if VOCABULARY[n].regional)

    @property
    def abstract(self) -> tuple[str, ...]:
        return tuple(n for n in self.names() if not VOCABULARY[n].regional)

    def phrases(self, name: str) -> tuple[str, ...]:
        """The distinct phrases that asked for attribute ``name``, underscores read as spaces."""
        return tuple(dict.fromkeys(m.phrase.replace("_", " ") for m in self.matches if m.name == name))

    def expression_phrase(self) -> str:
        """The abstract attributes' phrases joined for the APG target prompt ("" when there are none)."""
        return ", ".join(p for name in self.abstract for p in self.phrases(name))


def _forms(word: str) -> tuple[str, ...]:
    return (word, word + "s", word + "es")


def _build_phrase_index() -> dict[tuple[str, ...], str]:
    index: dict[tuple[str, ...], str] = {}
    for attribute in VOCABULARY.values():
        for phrase in attribute.words:
            *head, last = phrase.split()
            for form in _forms(last):
                index.setdefault((*head, form), attribute.name)
    return index


_PHRASE_INDEX = _build_phrase_index()
_LONGEST_PHRASE = max(len(key) for key in _PHRASE_INDEX)


def _blocked_spans(prompt: str, ignore: Iterable[str]) -> list[tuple[int, int]]:
    spans = [m.span() for m in _NETWORK_TAG.finditer(prompt)]
    for name in ignore:
        if name.strip():
            pattern = r"(?<!\w)" + re.escape(name.strip()) + r"(?!\w)"
            spans.extend(m.span() for m in re.finditer(pattern, prompt, re.IGNORECASE))
    return spans


def _words(prompt: str, ignore: Iterable[str] = ()) -> list[_Word]:
    blocked = _blocked_spans(prompt, ignore)
    return [
        _Word(m.group().lower(), m.start(), m.end())
        for m in _WORD.finditer(prompt)
        if m.group() not in _KEYWORDS
        and not any(b_start < m.end() and m.start() < b_end for b_start, b_end in blocked)
    ]


def _joined(prompt: str, left: _Word, right: _Word) -> bool:
    """True when only spaces, underscores or hyphens separate two words (same phrase)."""
    return _JOIN_GAP.fullmatch(prompt, left.end, right.start) is not None


def analyze_prompt(prompt: str, *, ignore: Iterable[str] = ()) -> PromptAnalysis:
    """Find the attributes ``prompt`` asks for.

    ``ignore`` lists names (embeddings, trigger words) that never count as attribute words.
    Negated mentions ("no glasses", "without hat") are not matches.
    """
    words = _words(prompt, tuple(ignore))
    found = _find_vocabulary(prompt, words)
    taken = {k for _, first, last in found for k in range(first, last + 1)}
    matches = []
    for name, first, last in found:
        phrase_first = _extend_back(prompt, words, first, taken)
        if _negated(words, phrase_first):
            continue
        phrase_last = last if VOCABULARY[name].regional else _extend_adverbs(prompt, words, last, taken)
        start, end = words[first].start, words[last].end
        p_start, p_end = words[phrase_first].start, words[phrase_last].end
        matches.append(
            AttributeMatch(name, prompt[start:end], start, end, prompt[p_start:p_end], p_start, p_end)
        )
    return PromptAnalysis(prompt, tuple(matches))


def _negated(words: list[_Word], phrase_first: int) -> bool:
    """True for "no glasses", "without a hat", "not wearing any earrings"."""
    k = phrase_first - 1
    while k >= 0 and words[k].lower in _NEGATION_SKIPPABLE:
        k -= 1
    return k >= 0 and words[k].lower in _NEGATIONS


def _find_vocabulary(prompt: str, words: list[_Word]) -> list[tuple[str, int, int]]:
    """Longest vocabulary phrases, left to right, as (attribute, first word index, last word index)."""
    found: list[tuple[str, int, int]] = []
    i = 0
    while i < len(words):
        for length in range(min(_LONGEST_PHRASE, len(words) - i), 0, -1):
            span = words[i : i + length]
            if length > 1 and not all(_joined(prompt, a, b) for a, b in itertools.pairwise(span)):
                continue
            name = _PHRASE_INDEX.get(tuple(w.lower for w in span))
            if name is None:
                continue
            last = i + length - 1
            previous = found[-1] if found else ("", -2, -2)
            if previous[0] == name and previous[2] == i - 1 and _joined(prompt, words[i - 1], span[0]):
                found[-1] = (name, previous[1], last)  # "serious expression", "hair bun": one match
            else:
                found.append((name, i, last))
            i += length
            break
        else:
            i += 1
    return found


def _is_modifier(word: _Word, index: int, taken: set[int]) -> bool:
    return index not in taken and word.lower not in _STOP_WORDS and word.lower not in SUBJECT_NOUNS


def _extend_back(prompt: str, words: list[_Word], first: int, taken: set[int]) -> int:
    k = first
    while (
        k > 0
        and first - k < _MAX_MODIFIERS
        and _joined(prompt, words[k - 1], words[k])
        and _is_modifier(words[k - 1], k - 1, taken)
    ):
        k -= 1
    return k


def _extend_adverbs(prompt: str, words: list[_Word], last: int, taken: set[int]) -> int:
    k = last
    while (
        k + 1 < len(words)
        and k - last < _MAX_MODIFIERS
        and words[k + 1].lower.endswith("ly")
        and _joined(prompt, words[k], words[k + 1])
        and _is_modifier(words[k + 1], k + 1, taken)
    ):
        k += 1
    return k


def subject_phrase(prompt: str, *, ignore: Iterable[str] = ()) -> str:
    """The prompt's subject with an article, for APG's neutral source prompt ("a woman").

    Plural subjects come back bare ("women"); with no subject noun the answer is "a person".
    """
    for word in _words(prompt, tuple(ignore)):
        if word.lower in SUBJECT_NOUNS:
            return word.lower if word.lower in _PLURAL_SUBJECTS else f"a {word.lower}"
    return "a person"
