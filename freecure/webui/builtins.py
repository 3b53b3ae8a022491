"""Forge Neo built-ins that change what a key/value bank sees, found by feature; FreeCure skips with a note
naming the setting instead of curing from a bank that misses layers or calls.

Read from Haoming02/sd-webui-forge-classic, branch ``neo`` (search-index copies of the files):
- ``extensions-builtin/sd_forge_fbcache/scripts/forge_fbcache.py`` (9fee4e75): "First Block Cache Integrated",
  first script arg ``enable``; skips whole DiT blocks on steps whose first block barely changed.
- ``extensions-builtin/sd_forge_spectrum/scripts/spectrum.py`` (cd837f4f): "Spectrum Integrated", first arg
  ``enable``; a ``model_function_wrapper`` that forecasts whole model calls after its warmup steps.
- ``extensions-builtin/sd_forge_compile/scripts/compile.py`` (50df301f): "Torch Compile Integrated", arg
  ``preset``; compiles the diffusion model inside ``KModel.apply_model`` (marked ``_torch_compile_wrapper``) and
  keeps it compiled across jobs under "Automatic"; a compiled graph does not run instance forwards.
Sage/Flash attention (``backend/attention.py``) changes only the numerics of the rows FreeCure leaves
plain (its own FASA rows use PyTorch attention), so it is no reason to skip.
"""

from __future__ import annotations

from typing import Any

_SKIPPING = {
    "First Block Cache Integrated": "it skips DiT blocks on some steps, so the foundation's bank misses them",
    "Spectrum Integrated": "it forecasts whole model calls after its warmup, so no attention runs on those steps",
}
_COMPILE = "Torch Compile Integrated"
_COMPILE_OFF = "Disable"


def _script_args(p: Any) -> dict[str, list[Any]]:
    runner = getattr(p, "scripts", None)
    args = list(getattr(p, "script_args", None) or ())
    found: dict[str, list[Any]] = {}
    for script in getattr(runner, "alwayson_scripts", None) or ():
        try:
            title = script.title()
        except Exception:  # another extension's broken title is not our concern
            continue
        found[title] = args[script.args_from : script.args_to]
    return found


def _compiled(p: Any) -> bool:
    unet = getattr(getattr(p.sd_model, "forge_objects", None), "unet", None)
    apply_model = getattr(getattr(unet, "model", None), "apply_model", None)
    return bool(getattr(apply_model, "_torch_compile_wrapper", False))


def builtin_reason(p: Any) -> str | None:
    """Why a Neo built-in that is on prevents the cure (the note names the setting), or None."""
    args = _script_args(p)
    for title, why in _SKIPPING.items():
        if args.get(title) and bool(args[title][0]):
            return f"{title} is on (switch it off for FreeCure): {why}"
    preset = (args.get(_COMPILE) or [None])[0]
    if preset not in (None, "Automatic", _COMPILE_OFF) or (preset != _COMPILE_OFF and _compiled(p)):
        return (f"{_COMPILE} is on (set its preset to {_COMPILE_OFF} for FreeCure): a compiled model does not run "
                "FreeCure's attention hooks")
    return None
