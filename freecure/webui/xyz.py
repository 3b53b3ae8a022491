"""X/Y/Z plot axes for FreeCure settings.

Each axis writes into an override dict on the cell's ``p`` (never into script args by index), which the
script merges over its own args; values are validated by the options model in ``confirm`` so a bad cell
fails before any sampling. Registered when the script module is imported: with ``--nowebui`` the UI
callbacks never fire, and axes registered only there would be missing from API requests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from freecure.options import Options, schema

OVERRIDES_ATTR = "_freecure_xyz"
LABEL_PREFIX = "[FreeCure] "

# Settings that make no sense to sweep (free text that belongs to one prompt, download permission).
_NOT_AXES = {"trigger_words", "keep_networks", "foundation_prompt", "apg_source", "apg_target",
             "allow_download"}


def overrides_of(p: Any) -> dict[str, Any]:
    """The X/Y/Z overrides stored on a processing object (empty when none)."""
    return dict(getattr(p, OVERRIDES_ATTR, None) or {})


def _setter(field: str) -> Callable[[Any, Any, Any], None]:
    def apply(p: Any, value: Any, _all_values: Any) -> None:
        # XYZ cells are shallow copies of one p: give each cell its own dict instead of mutating a shared one.
        setattr(p, OVERRIDES_ATTR, {**overrides_of(p), field: value})

    return apply


def _confirm(field: str) -> Callable[[Any, Iterable[Any]], None]:
    def confirm(_p: Any, values: Iterable[Any]) -> None:
        for value in values:
            Options().with_overrides({field: value})

    return confirm


def axis_specs() -> list[dict[str, Any]]:
    """Label, value type, setter, validator and choices of every FreeCure axis, independent of the host."""
    specs = []
    for field, info in schema()["fields"].items():
        if field in _NOT_AXES:
            continue
        kind = info["type"]
        choices = list(info.get("choices", ()))
        if kind == "boolean":
            value_type: type = str
            choices = ["True", "False"]
        elif kind == "number":
            value_type = float
        elif kind == "integer":
            value_type = int
        else:
            # Lists (attributes, identity sources, faces) are one text per cell, items joined by "+".
            value_type = str
            choices = choices if kind == "string" else []
        specs.append({
            "label": LABEL_PREFIX + field.replace("_", " ").capitalize(),
            "type": value_type,
            "apply": _setter(field),
            "confirm": _confirm(field),
            "choices": (lambda values=tuple(choices): list(values)) if choices else None,
        })
    return specs


def find_xyz_module(scripts_data: Iterable[Any]) -> Any | None:
    """The loaded ``xyz_grid.py`` module among the WebUI's script modules."""
    for data in scripts_data:
        if data.script_class.__module__ in ("xyz_grid.py", "xy_grid.py", "scripts.xyz_grid"):
            return data.module
    return None


def register_axes(xyz_module: Any) -> int:
    """Append FreeCure's axes to the XYZ module once; returns how many were added."""
    existing = {option.label for option in xyz_module.axis_options}
    added = 0
    for spec in axis_specs():
        if spec["label"] in existing:
            continue
        xyz_module.axis_options.append(
            xyz_module.AxisOption(spec["label"], spec["type"], spec["apply"], confirm=spec["confirm"],
                                  choices=spec["choices"])
        )
        added += 1
    return added


def register_with_host() -> None:
    """Find the host's XYZ script and register the axes; a host without one is left alone."""
    from modules import scripts

    module = find_xyz_module(scripts.scripts_data)
    if module is not None:
        register_axes(module)


def merged_overrides(options: Options, p: Any) -> Options:
    """Options with the X/Y/Z overrides of this cell applied."""
    overrides: Mapping[str, Any] = overrides_of(p)
    return options.with_overrides(overrides) if overrides else options
