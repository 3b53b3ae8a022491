"""The FreeCure section of the WebUI settings page and where face-parser weights live.

Settings-page values are the defaults the txt2img controls start with (and so the API's defaults); the
weights folder and the command-line flags from ``preload.py`` are global.
"""

from __future__ import annotations

import os
from typing import Any

SECTION = ("freecure", "FreeCure")
# An SD1.5 foundation at 512 px holds about 0.5 GB (its K/V bank), an SDXL one at 1024 px about 2.6 GB.
FOUNDATION_CACHE_MB = 4096
DEFAULTS_FROM_SETTINGS = {
    "face_parser": "freecure_face_parser",
    "debug_images": "freecure_debug_images",
    "allow_download": "freecure_allow_download",
}


def register() -> None:
    """Add the settings (called from ``on_ui_settings``)."""
    import gradio as gr
    from modules import shared

    from freecure.options import schema

    parsers = list(schema()["fields"]["face_parser"]["choices"])
    shared.opts.add_option("freecure_face_parser", shared.OptionInfo(
        "bisenet", "Face parser for attribute masks", gr.Dropdown, {"choices": parsers}, section=SECTION))
    shared.opts.add_option("freecure_models_dir", shared.OptionInfo(
        "", "Folder of face-parser weights (empty: the WebUI's GFPGAN models folder)", section=SECTION))
    shared.opts.add_option("freecure_allow_download", shared.OptionInfo(
        False, "Allow downloading missing face-parser weights", gr.Checkbox, section=SECTION))
    shared.opts.add_option("freecure_foundation_cache_mb", shared.OptionInfo(
        FOUNDATION_CACHE_MB, "Memory for reusing foundation passes across jobs with the same inputs, in MB of CPU"
        " memory (0: off)", gr.Slider, {"minimum": 0, "maximum": 65536, "step": 256}, section=SECTION))
    shared.opts.add_option("freecure_debug_images", shared.OptionInfo(
        False, "Show the foundation image, masks and attention maps by default", gr.Checkbox, section=SECTION))


def foundation_cache_bytes() -> int:
    """The foundation cache's size from the settings page (FOUNDATION_CACHE_MB until the user sets it)."""
    from modules import shared

    value = (getattr(shared.opts, "data", {}) or {}).get("freecure_foundation_cache_mb", FOUNDATION_CACHE_MB)
    try:
        return max(0, int(float(value) * 2**20))
    except (TypeError, ValueError):
        return FOUNDATION_CACHE_MB * 2**20


def setting_defaults() -> dict[str, Any]:
    """Options defaults taken from the settings page (only those the user has set)."""
    from modules import shared

    data = getattr(shared.opts, "data", {}) or {}
    return {field: data[key] for field, key in DEFAULTS_FROM_SETTINGS.items() if key in data}


def downloads_forbidden() -> bool:
    """``--freecure-no-download`` forbids downloads whatever a request asks."""
    from modules import shared

    return bool(getattr(shared.cmd_opts, "freecure_no_download", False))


def models_dir() -> str:
    """Where face-parser and detector weights are looked up: the command-line flag, the settings page, or
    the folder where the WebUI keeps facexlib weights (``models/GFPGAN``; ``parsing_parsenet.pth`` is often
    there already because GFPGAN and CodeFormer use it)."""
    from modules import paths, shared

    flag = getattr(shared.cmd_opts, "freecure_models_dir", None)
    if flag:
        return flag
    configured = (getattr(shared.opts, "data", {}) or {}).get("freecure_models_dir")
    if configured:
        return configured
    gfpgan = getattr(shared.cmd_opts, "gfpgan_models_path", None)
    return gfpgan or os.path.join(paths.models_path, "GFPGAN")
