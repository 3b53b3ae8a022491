"""Every user-facing FreeCure setting, in one validated, immutable object.

Settings arrive from four places: the WebUI's positional ``ui()`` values, an API dict, a pasted
infotext and X/Y/Z overrides. All of them end in ``Options.__init__``, whose ``__post_init__`` is the
one validation path: it coerces the loose forms those sources hand over (``"0.5"`` for a float,
``"true"`` for a bool, ``"hair+glasses"`` for a tuple) and raises ``OptionsError`` naming the field
and what it accepts.

The infotext is one key, ``"FreeCure"``, whose value lists the non-default settings as
``name: value, name: value``; values that could confuse that list are JSON-quoted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from freecure.attributes import VOCABULARY

INFOTEXT_KEY = "FreeCure"
FAMILIES = ("sd1", "sd2", "sdxl", "flux")
# Reference code: SD1.x w = 0.5, SDXL w = 1.5. FLUX has no reference code: SDXL's value, not tuned.
_FAMILY_STRENGTH = {"sd1": 0.5, "sd2": 0.5, "sdxl": 1.5, "flux": 1.5}
PROMPT_PLACEHOLDER = "[PROMPT]"
_PROMPT_MAX = 1000
_WORD_MAX = 200
_FACE_INDEX_MAX = 99


class OptionsError(ValueError):
    """An invalid setting; ``field`` names it and the message says what is accepted."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"FreeCure option '{field}': {message}")
        self.field = field
        self.message = message


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- field kinds: each parses one loose value into its canonical form and describes itself --------


class _Kind:
    separators = ""  # how list-valued kinds split strings; empty for scalars

    def parse(self, name: str, value: Any) -> Any:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError


class _Bool(_Kind):
    def parse(self, name: str, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise OptionsError(name, f"must be true or false, got {_shown(value)}")

    def describe(self) -> dict[str, Any]:
        return {"type": "boolean"}


def _number(name: str, value: Any, accepted: str) -> float:
    # bool is an int subclass, but True for a weight is a client bug, not 1.0.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise OptionsError(name, f"must be {accepted}, got {_shown(value)}") from None
    else:
        raise OptionsError(name, f"must be {accepted}, got {_shown(value)}")
    if not math.isfinite(number):
        raise OptionsError(name, f"must be {accepted}, got {_shown(value)}")
    return number


@dataclass(frozen=True)
class _Float(_Kind):
    low: float
    high: float
    optional: bool = False  # None (or "") means "use the model family's default"

    def parse(self, name: str, value: Any) -> float | None:
        if self.optional and (value is None or (isinstance(value, str) and not value.strip())):
            return None
        accepted = f"a number from {self.low:g} to {self.high:g}" + (" or empty" if self.optional else "")
        number = _number(name, value, accepted)
        if not self.low <= number <= self.high:
            raise OptionsError(name, f"must be {accepted}, got {_shown(value)}")
        return number

    def describe(self) -> dict[str, Any]:
        return {"type": "number", "minimum": self.low, "maximum": self.high, "nullable": self.optional}


@dataclass(frozen=True)
class _Int(_Kind):
    low: int
    high: int

    def parse(self, name: str, value: Any) -> int:
        accepted = f"a whole number from {self.low} to {self.high}"
        number = _number(name, value, accepted)
        if not number.is_integer() or not self.low <= number <= self.high:
            raise OptionsError(name, f"must be {accepted}, got {_shown(value)}")
        return int(number)

    def describe(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.low, "maximum": self.high}


@dataclass(frozen=True)
class _Choice(_Kind):
    choices: tuple[str, ...]

    def parse(self, name: str, value: Any) -> str:
        if isinstance(value, str) and value.strip().lower() in self.choices:
            return value.strip().lower()
        raise OptionsError(name, f"must be one of {', '.join(self.choices)}; got {_shown(value)}")

    def describe(self) -> dict[str, Any]:
        return {"type": "string", "choices": list(self.choices)}


@dataclass(frozen=True)
class _Text(_Kind):
    """Free text kept verbatim (prompts), bounded in length."""

    max_length: int

    def parse(self, name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise OptionsError(name, f"must be a string, got {_shown(value)}")
        if len(value) > self.max_length:
            raise OptionsError(name, f"must be at most {self.max_length} characters, got {len(value)}")
        return value

    def describe(self) -> dict[str, Any]:
        return {"type": "string", "maxLength": self.max_length}


class _Template(_Text):
    """A prompt template: ``[PROMPT]`` is its only placeholder, and look-alikes are refused."""

    _LOOKALIKE = re.compile(r"[\[{<]\s*prompts?\s*[\]}>]", re.IGNORECASE)

    def parse(self, name: str, value: Any) -> str:
        text = super().parse(name, value)
        for match in self._LOOKALIKE.finditer(text):
            if match.group() != PROMPT_PLACEHOLDER:
                raise OptionsError(
                    name, f"the only placeholder is {PROMPT_PLACEHOLDER} (exactly), got {match.group()!r}"
                )
        return text


class _Word(_Kind):
    """One word or short phrase: stripped, non-empty, one line, no comma (commas separate lists)."""

    def parse(self, name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise OptionsError(name, f"must be a string, got {_shown(value)}")
        word = value.strip()
        if not word or len(word) > _WORD_MAX or any(c in word for c in ",\n\r"):
            raise OptionsError(
                name, f"must be a non-empty word of at most {_WORD_MAX} characters without commas or "
                f"line breaks, got {_shown(value)}",
            )
        return word

    def describe(self) -> dict[str, Any]:
        return {"type": "string", "maxLength": _WORD_MAX}


def _split(name: str, value: Any, separators: str) -> list[Any]:
    """A list from a list/tuple, or from a string separated by any of ``separators``."""
    if isinstance(value, str):
        return [part for part in re.split(f"[{re.escape(separators)}]", value) if part.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    accepted = f"a list or a {' or '.join(separators)}-separated string"
    raise OptionsError(name, f"must be {accepted}, got {_shown(value)}")


@dataclass(frozen=True)
class _List(_Kind):
    """A tuple of items; vocabulary lists come back in vocabulary order, word lists in given order."""

    item: _Choice | _Word
    separators: str

    def parse(self, name: str, value: Any) -> tuple[str, ...]:
        items = dict.fromkeys(self.item.parse(name, v) for v in _split(name, value, self.separators))
        if isinstance(self.item, _Choice):
            return tuple(c for c in self.item.choices if c in items)
        return tuple(items)

    def describe(self) -> dict[str, Any]:
        return {"type": "array", "items": self.item.describe(), "separators": list(self.separators)}


class _Attributes(_Kind):
    """ "auto" or vocabulary names; an empty selection means "auto"."""

    separators = ",+"
    _names = _List(_Choice(tuple(VOCABULARY)), separators)

    def parse(self, name: str, value: Any) -> str | tuple[str, ...]:
        accepted = f"auto or names from: {', '.join(VOCABULARY)}"
        try:
            parts = _split(name, value, self.separators)
        except OptionsError:
            raise OptionsError(name, f"must be {accepted}; got {_shown(value)}") from None
        if not parts or [str(p).strip().lower() for p in parts] == ["auto"]:
            return "auto"
        for part in parts:
            if str(part).strip().lower() == "auto":
                raise OptionsError(name, f"auto cannot be combined with names; accepted: {accepted}")
            if not isinstance(part, str) or part.strip().lower() not in VOCABULARY:
                raise OptionsError(name, f"unknown attribute {_shown(part)}; accepted: {accepted}")
        return self._names.parse(name, parts)

    def describe(self) -> dict[str, Any]:
        return {"type": "string|array", "choices": ["auto"], "items": list(VOCABULARY),
                "separators": list(self.separators)}  # fmt: skip


class _Faces(_Kind):
    """ "all", "largest" or face indices; an empty selection means "all"."""

    separators = ",+"
    _ACCEPTED = f'"all", "largest" or face indices from 0 to {_FACE_INDEX_MAX} (e.g. "0,2")'
    _index = _Int(0, _FACE_INDEX_MAX)

    def parse(self, name: str, value: Any) -> str | tuple[int, ...]:
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        try:
            parts = _split(name, value, self.separators)
            if not parts:
                return "all"
            if len(parts) == 1 and str(parts[0]).strip().lower() in ("all", "largest"):
                return str(parts[0]).strip().lower()
            return tuple(sorted({self._index.parse(name, p) for p in parts}))
        except OptionsError:
            raise OptionsError(name, f"must be {self._ACCEPTED}; got {_shown(value)}") from None

    def describe(self) -> dict[str, Any]:
        return {"type": "string|array", "choices": ["all", "largest"], "items": self._index.describe()}


@dataclass(frozen=True)
class _PerAttribute(_Kind):
    """A value per regional attribute, e.g. ``"hair:1.2, glasses:0.6"``: a dict, ``name:value`` (or
    ``name=value``) items separated by commas or ``+``, or a list of such items or of pairs. Canonical form: a
    tuple of (name, value) pairs in vocabulary order; attributes not named take the field's global setting."""

    value: _Float | _Int
    separators = ",+"
    _NAMES = tuple(name for name, attribute in VOCABULARY.items() if attribute.regional)

    def parse(self, name: str, value: Any) -> tuple[tuple[str, Any], ...]:
        names = ", ".join(self._NAMES)
        accepted = f'attribute:value items such as "hair:1.2, glasses:0.6" with attributes from {names}'
        if isinstance(value, Mapping):
            items = list(value.items())
        else:
            try:
                parts = _split(name, value, self.separators)
            except OptionsError:
                raise OptionsError(name, f"must be {accepted}; got {_shown(value)}") from None
            items = [self._pair(name, part, accepted) for part in parts]
        values: dict[str, Any] = {}
        for attribute, number in items:
            key = attribute.strip().lower() if isinstance(attribute, str) else attribute
            if key not in self._NAMES:
                raise OptionsError(name, f"unknown attribute {_shown(key)}; accepted: {accepted}")
            if key in values:
                raise OptionsError(name, f"{key} is given twice")
            try:
                values[key] = self.value.parse(name, number)
            except OptionsError as error:
                raise OptionsError(name, f"{key}: {error.message}") from None
        return tuple((n, values[n]) for n in self._NAMES if n in values)

    @staticmethod
    def _pair(name: str, part: Any, accepted: str) -> tuple[Any, Any]:
        if isinstance(part, (list, tuple)) and len(part) == 2:
            return part[0], part[1]
        if isinstance(part, str):
            for separator in ":=":
                if separator in part:
                    attribute, number = part.split(separator, 1)
                    return attribute, number
        raise OptionsError(name, f"must be {accepted}; got {_shown(part)}")

    @staticmethod
    def text(value: tuple[tuple[str, Any], ...]) -> str:
        """The form users type, also one X/Y/Z cell: ``hair:1.2+glasses:0.6``."""
        return "+".join(f"{n}:{v!r}" for n, v in value)

    def describe(self) -> dict[str, Any]:
        return {"type": "object", "keys": list(self._NAMES), "values": self.value.describe(),
                "separators": list(self.separators)}  # fmt: skip


def _setting(default: Any, kind: _Kind, doc: str) -> Any:
    return field(default=default, metadata={"kind": kind, "doc": doc})


IDENTITY_SOURCES = ("lora", "hypernetwork", "embedding", "adapter")


@dataclass(frozen=True)
class Options:
    """The FreeCure settings. Construct with keywords or the ``from_*`` class methods; all validate."""

    enabled: bool = _setting(False, _Bool(), "Run FreeCure for this generation.")
    method: str = _setting(
        "fasa", _Choice(("fasa", "blend")),
        "fasa: foundation-aware self-attention; blend: blend the noise prediction toward the foundation.",
    )  # fmt: skip
    attributes: str | tuple[str, ...] = _setting(
        "auto", _Attributes(), "Attributes to cure: auto (from the prompt) or vocabulary names."
    )
    strength: float | None = _setting(
        None, _Float(0.0, 10.0, optional=True),
        "FASA logit bias w; empty = family default (SD1/SD2 0.5, SDXL and FLUX 1.5).",
    )  # fmt: skip
    blend_weight: float = _setting(0.75, _Float(0.0, 1.0), "Noise-blend weight inside the mask.")
    blend_start: float = _setting(0.12, _Float(0.0, 1.0), "Fraction of the schedule where blending starts.")
    step_start: float = _setting(0.0, _Float(0.0, 1.0), "Fraction of the schedule where FASA starts.")
    step_end: float = _setting(1.0, _Float(0.0, 1.0), "Fraction of the schedule where FASA ends.")
    layers: str = _setting(
        "default", _Choice(("default", "decoder", "decoder-high", "all")),
        "Self-attention layers FASA acts on; default = the family's reference layers.",
    )  # fmt: skip
    mask_source: str = _setting(
        "both", _Choice(("parser", "attention", "both")), "Mask source: face parser, attention maps or both."
    )
    mask_combine: str = _setting(
        "union", _Choice(("union", "intersection")), "How parser and attention masks combine."
    )
    mask_dilation: int = _setting(0, _Int(0, 64), "Mask dilation in pixels.")
    identity_off: tuple[str, ...] = _setting(
        IDENTITY_SOURCES, _List(_Choice(IDENTITY_SOURCES), ",+"),
        "Identity sources the foundation pass switches off.",
    )  # fmt: skip
    trigger_words: tuple[str, ...] = _setting(
        (), _List(_Word(), ","), "Words replaced by the class word in the foundation prompt."
    )
    class_word: str = _setting("person", _Word(), "Word that replaces trigger words and embeddings.")
    keep_networks: tuple[str, ...] = _setting(
        (), _List(_Word(), ","), "Extra-network names that are not identity and stay on."
    )
    foundation_prompt: str = _setting(
        "", _Template(_PROMPT_MAX), f"Template for the foundation prompt; {PROMPT_PLACEHOLDER} = the prompt."
    )
    apg: str = _setting("auto", _Choice(("off", "auto", "on")), "Asymmetric prompt guidance for expressions.")
    apg_strength: float = _setting(0.5, _Float(0.0, 1.0), "APG inversion depth g (fraction of the schedule).")
    apg_source: str = _setting("", _Text(_PROMPT_MAX), "APG source prompt; empty = the prompt's subject.")
    apg_target: str = _setting("", _Text(_PROMPT_MAX), "APG target prompt; empty = subject + expression.")
    apg_guidance: str = _setting(
        "standard", _Choice(("standard", "asymmetric")), "Guidance baseline of the APG regeneration."
    )
    hires: str = _setting("low-res", _Choice(("low-res", "hi-res", "both")), "Which hires-fix pass to cure.")
    debug_images: bool = _setting(False, _Bool(), "Add the foundation image and masks to the results.")
    face_parser: str = _setting("bisenet", _Choice(("bisenet", "parsenet", "none")), "Face parsing model.")
    faces: str | tuple[int, ...] = _setting("all", _Faces(), "Faces to cure: all, largest or indices.")
    allow_download: bool = _setting(False, _Bool(), "Allow downloading parser weights.")
    offload_bank: bool = _setting(
        False, _Bool(), "Keep the whole key/value bank in CPU memory (otherwise only what exceeds 20% of the"
        " model's GPU memory goes there)."
    )
    attribute_strength: tuple[tuple[str, float], ...] = _setting(
        (), _PerAttribute(_Float(0.0, 10.0)),
        "FASA strength per attribute (e.g. hair:1.2, glasses:0.6); the others take strength; 0 leaves an "
        "attribute uncured.",
    )  # fmt: skip
    attribute_dilation: tuple[tuple[str, int], ...] = _setting(
        (), _PerAttribute(_Int(0, 64)),
        "Mask dilation in pixels per attribute (e.g. earrings:8); the others take mask_dilation.",
    )  # fmt: skip
    passes: str = _setting(
        "exact", _Choice(("exact", "one-pass")),
        "exact: the foundation pass runs first, then the cure pass; one-pass: the foundation rows run in the "
        "cure pass's model calls (cheaper; masks from the first part of the schedule).",
    )  # fmt: skip
    one_pass_masks_at: float = _setting(
        0.3, _Float(0.05, 0.95),
        "One-pass mode: fraction of the schedule whose foundation attention and prediction build the masks; "
        "the cure acts after it.",
    )  # fmt: skip

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, f.metadata["kind"].parse(f.name, getattr(self, f.name)))
        if self.step_start >= self.step_end:
            raise OptionsError(
                "step_start", f"must be below step_end ({self.step_end:g}), got {self.step_start:g}"
            )

    # --- constructors ------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Options:
        """From an API dict keyed by field name; unknown keys are an error."""
        if not isinstance(values, Mapping):
            raise OptionsError("settings", f"must be a dict of settings, got {_shown(values)}")
        for key in values:
            if key not in UI_FIELDS:
                raise OptionsError(str(key), f"unknown option; valid options: {', '.join(UI_FIELDS)}")
        return cls(**values)

    @classmethod
    def from_ui(cls, args: Sequence[Any]) -> Options:
        """From the WebUI's positional script args, in ``UI_FIELDS`` order.

        API clients may instead send ``[{settings}]`` or ``[enabled, {settings}]``; the WebUI pads the
        rest of the list with the UI defaults, which are ignored. A settings dict without ``enabled``
        means enabled.
        """
        args = list(args)
        if args and isinstance(args[0], Mapping):
            return cls.from_dict({"enabled": True, **args[0]})
        if len(args) >= 2 and isinstance(args[1], Mapping):
            enabled = _Bool().parse("enabled", args[0])
            if "enabled" in args[1] and _Bool().parse("enabled", args[1]["enabled"]) != enabled:
                raise OptionsError("enabled", "given twice with different values (flag and settings dict)")
            return cls.from_dict({**args[1], "enabled": enabled})
        if len(args) != len(UI_FIELDS):
            raise OptionsError(
                "args", f"expected {len(UI_FIELDS)} values in the order {', '.join(UI_FIELDS)}, or a "
                f"settings dict; got {len(args)} values",
            )
        return cls.from_dict(dict(zip(UI_FIELDS, args, strict=True)))

    @classmethod
    def from_infotext(cls, params: Mapping[str, str]) -> Options | None:
        """From pasted generation parameters; None when they hold no FreeCure key."""
        if INFOTEXT_KEY not in params:
            return None
        return cls.from_dict({"enabled": True, **_read_infotext(params[INFOTEXT_KEY])})

    def with_overrides(self, overrides: Mapping[str, Any]) -> Options:
        """These options with some fields replaced (X/Y/Z axes), validated like ``from_dict``."""
        return Options.from_dict({**self.as_dict(), **overrides})

    # --- views -------------------------------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in UI_FIELDS}

    def to_infotext(self) -> dict[str, str]:
        """``{"FreeCure": "name: value, ..."}`` with defaults left out; ``{}`` when disabled."""
        if not self.enabled:
            return {}
        entries = [
            f"{f.name}: {_infotext_value(f.metadata['kind'], getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if f.name != "enabled" and getattr(self, f.name) != f.default
        ]
        return {INFOTEXT_KEY: ", ".join(entries) or "on"}

    def effective_strength(self, family: str) -> float:
        """FASA weight w: the user's strength or the family default."""
        if family not in FAMILIES:
            raise OptionsError("family", f"must be one of {', '.join(FAMILIES)}; got {_shown(family)}")
        return _FAMILY_STRENGTH[family] if self.strength is None else self.strength

    def strength_of(self, attribute: str) -> float | None:
        """FASA weight w of ``attribute``: its own strength, else ``strength`` (None until ``resolved``)."""
        return dict(self.attribute_strength).get(attribute, self.strength)

    def dilation_of(self, attribute: str) -> int:
        return dict(self.attribute_dilation).get(attribute, self.mask_dilation)

    def resolved(self, family: str) -> Options:
        """These options with the per-family defaults filled in."""
        return dataclasses.replace(self, strength=self.effective_strength(family))


UI_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Options))


def schema() -> dict[str, Any]:
    """JSON-serialisable description of every field, for the API's schema route."""
    fields = {}
    for f in dataclasses.fields(Options):
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        fields[f.name] = {**f.metadata["kind"].describe(), "default": default, "doc": f.metadata["doc"]}
    return {"ui_order": list(UI_FIELDS), "infotext_key": INFOTEXT_KEY, "fields": fields}


# --- infotext value syntax ---------------------------------------------------------------------------

_UNSAFE_BARE = re.compile(r'[,:"\[\]\n\r]|^\s|\s$')
_INFOTEXT_NAME = re.compile(r"\s*([a-z_]+)\s*:\s*")
_INFOTEXT_SEPARATOR = re.compile(r"\s*(,|$)")


def _bare(text: str, joiner: str = "") -> bool:
    return bool(text) and not _UNSAFE_BARE.search(text) and not (joiner and joiner in text)


def _infotext_value(kind: _Kind, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value if _bare(value) else json.dumps(value, ensure_ascii=False)
    if isinstance(kind, _PerAttribute):
        return json.dumps(kind.text(value))
    items = [str(v) for v in value]
    joinable = "+" in kind.separators  # word lists split on commas only, so they never join with "+"
    if items and (len(items) == 1 or joinable) and all(_bare(i, "+" if joinable else "") for i in items):
        return "+".join(items)
    return json.dumps(items, ensure_ascii=False)


def _read_infotext(text: Any) -> dict[str, Any]:
    """Parse ``name: value, ...`` (the inverse of ``to_infotext``) into a dict for ``from_dict``."""
    if not isinstance(text, str):
        raise OptionsError(INFOTEXT_KEY, f"infotext value must be a string, got {_shown(text)}")
    text = text.strip()
    if text.startswith('"'):  # still quoted by the WebUI's infotext line: a real value never starts so
        try:
            text = json.loads(text).strip()
        except (json.JSONDecodeError, AttributeError):
            raise OptionsError(INFOTEXT_KEY, f"cannot read quoted value {_shown(text)}") from None
    if text == "on":
        return {}
    values: dict[str, Any] = {}
    position = 0
    decoder = json.JSONDecoder()
    while True:
        name_match = _INFOTEXT_NAME.match(text, position)
        if name_match is None:
            raise OptionsError(INFOTEXT_KEY, f"expected 'name: value' at {_shown(text[position:])}")
        name, position = name_match.group(1), name_match.end()
        if text[position : position + 1] in ('"', "["):
            try:
                value, position = decoder.raw_decode(text, position)
            except json.JSONDecodeError:
                raise OptionsError(name, f"cannot read quoted value {_shown(text[position:])}") from None
        else:
            end = text.find(",", position)
            end = len(text) if end < 0 else end
            value, position = text[position:end].strip(), end
        if name in values:
            raise OptionsError(name, "appears twice in the infotext")
        values[name] = value
        separator = _INFOTEXT_SEPARATOR.match(text, position)
        if separator is None:
            raise OptionsError(name, f"expected ',' after the value, got {_shown(text[position:])}")
        if separator.group(1) == "":
            return values
        position = separator.end()
