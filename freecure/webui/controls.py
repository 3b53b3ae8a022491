"""The txt2img/img2img controls: one InputAccordion (the enable flag) and the settings of the options model.

Built from ``freecure.options`` so that the UI, the API defaults (the WebUI calls ``ui()`` again at start-up
and reads each component's ``.value``) and the infotext paste all share one list of fields in one order.
Gradio and the WebUI are imported inside the functions: this module is imported by tests without them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from freecure.attributes import VOCABULARY
from freecure.options import UI_FIELDS, Options, OptionsError

# Label, widget, main (visible) or advanced. Hover hints live in javascript/freecure-hints.js, keyed by label.
_MAIN = True
_ADVANCED = False


@dataclass(frozen=True)
class Control:
    field: str
    label: str
    widget: str  # checkbox | slider | radio | dropdown | multiselect | textbox
    main: bool
    step: float = 0.01


CONTROLS: dict[str, Control] = {
    c.field: c
    for c in (
        Control("method", "Method", "radio", _MAIN),
        Control("attributes", "Attributes", "multiselect", _MAIN),
        Control("strength", "FASA strength w (-1 = model default: SD1.x 0.5, SDXL 1.5)", "slider", _MAIN, 0.05),
        Control("blend_weight", "Blend weight", "slider", _MAIN, 0.05),
        Control("apg", "Expression (APG)", "radio", _MAIN),
        Control("apg_strength", "APG depth g", "slider", _MAIN, 0.05),
        Control("mask_source", "Masks from", "radio", _MAIN),
        Control("debug_images", "Show foundation image and masks", "checkbox", _MAIN),
        Control("blend_start", "Blend from (fraction of steps)", "slider", _ADVANCED, 0.01),
        Control("step_start", "FASA from (fraction of steps)", "slider", _ADVANCED, 0.01),
        Control("step_end", "FASA until (fraction of steps)", "slider", _ADVANCED, 0.01),
        Control("layers", "Layers", "dropdown", _ADVANCED),
        Control("mask_combine", "Combine parser and attention masks", "radio", _ADVANCED),
        Control("mask_dilation", "Mask dilation (px)", "slider", _ADVANCED, 1),
        Control("identity_off", "Identity sources switched off in the foundation pass", "multiselect", _ADVANCED),
        Control("trigger_words", "Trigger words (comma-separated)", "textbox", _ADVANCED),
        Control("class_word", "Class word", "textbox", _ADVANCED),
        Control("keep_networks", "Networks that are not identity (comma-separated)", "textbox", _ADVANCED),
        Control("foundation_prompt", "Foundation prompt ([PROMPT] = your prompt without identity)", "textbox",
                _ADVANCED, ""),
        Control("apg_source", "APG source prompt (empty = subject of the prompt)", "textbox", _ADVANCED),
        Control("apg_target", "APG target prompt (empty = subject + expression)", "textbox", _ADVANCED),
        Control("apg_guidance", "APG guidance", "radio", _ADVANCED),
        Control("hires", "Hires fix", "radio", _ADVANCED),
        Control("face_parser", "Face parser", "dropdown", _ADVANCED),
        Control("faces", "Faces (all, largest, or indices like 0,2)", "textbox", _ADVANCED),
        Control("allow_download", "Allow downloading parser weights", "checkbox", _ADVANCED),
        Control("offload_bank", "Keep the whole attention bank in CPU memory", "checkbox", _ADVANCED),
        Control("attribute_strength", "Strength per attribute (e.g. hair:1.2, glasses:0.6)", "textbox", _ADVANCED),
        Control("attribute_dilation", "Mask dilation per attribute (px, e.g. earrings:8)", "textbox", _ADVANCED),
        Control("passes", "Passes", "radio", _ADVANCED),
        Control("one_pass_masks_at", "One-pass: masks after (fraction of steps)", "slider", _ADVANCED, 0.01),
    )
}

STRENGTH_DEFAULT_UI = -1.0  # the slider cannot hold None; -1 means "the model family's default"


def ui_value(field: str, value: Any) -> Any:
    """The component value that shows an options value."""
    if field == "strength":
        return STRENGTH_DEFAULT_UI if value is None else value
    if field == "attributes":
        return ["auto"] if value == "auto" else list(value)
    if field in ("trigger_words", "keep_networks"):
        return ", ".join(value)
    if field == "identity_off":
        return list(value)
    if field == "faces":
        return value if isinstance(value, str) else ",".join(str(i) for i in value)
    if field in ("attribute_strength", "attribute_dilation"):
        return ", ".join(f"{name}:{number!r}" for name, number in value)
    return value


def options_value(field: str, value: Any) -> Any:
    """The options value a component value stands for (the inverse of ``ui_value``)."""
    if field == "strength" and isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        return None
    if field == "attributes" and isinstance(value, (list, tuple)) and list(value) in ([], ["auto"]):
        return "auto"
    return value


def options_from_script_args(args: tuple[Any, ...]) -> Options:
    """Options from the slice of ``p.script_args`` the WebUI hands to each hook (UI list, API list or a dict)."""
    if args and not isinstance(args[0], dict) and not (len(args) > 1 and isinstance(args[1], dict)):
        args = tuple(options_value(field, value) for field, value in zip(UI_FIELDS, args, strict=False))
    return Options.from_ui(args)


def build_ui(is_img2img: bool, elem_id: Callable[[str], str]) -> tuple[list[Any], list[tuple[Any, Any]]]:
    """Create the components (inside the caller's gradio context); return them in ``UI_FIELDS`` order and the
    ``infotext_fields`` pairs that restore every setting from pasted infotext."""
    import gradio as gr
    from modules.ui_components import InputAccordion

    from freecure.options import schema

    spec = schema()["fields"]
    defaults = _defaults_from_settings()
    components: dict[str, Any] = {}

    def make(control: Control) -> Any:
        field_spec = spec[control.field]
        value = ui_value(control.field, getattr(defaults, control.field))
        common = {"label": control.label, "value": value, "elem_id": elem_id(control.field)}
        if control.widget == "checkbox":
            return gr.Checkbox(**common)
        if control.widget == "slider":
            minimum = STRENGTH_DEFAULT_UI if control.field == "strength" else field_spec["minimum"]
            maximum = 5.0 if control.field == "strength" else field_spec["maximum"]
            return gr.Slider(minimum=minimum, maximum=maximum, step=control.step, **common)
        if control.widget == "radio":
            return gr.Radio(choices=list(field_spec["choices"]), **common)
        if control.widget == "dropdown":
            return gr.Dropdown(choices=list(field_spec["choices"]), **common)
        if control.widget == "multiselect":
            choices = ["auto", *VOCABULARY] if control.field == "attributes" \
                else list(field_spec["items"]["choices"])
            return gr.Dropdown(choices=choices, multiselect=True, **common)
        return gr.Textbox(lines=2 if "prompt" in control.field or "apg_" in control.field else 1, **common)

    with InputAccordion(False, label="FreeCure", elem_id=elem_id("enabled")) as enabled:
        components["enabled"] = enabled
        for control in CONTROLS.values():
            if control.main:
                components[control.field] = make(control)
        with gr.Accordion("Advanced", open=False, elem_id=elem_id("advanced")):
            for control in CONTROLS.values():
                if not control.main:
                    components[control.field] = make(control)

    missing = set(UI_FIELDS) - set(components)
    if missing:
        raise RuntimeError(f"FreeCure UI has no control for {sorted(missing)}")
    ordered = [components[field] for field in UI_FIELDS]
    infotext_fields = [(components[field], _paste_reader(field)) for field in UI_FIELDS]
    return ordered, infotext_fields


def _defaults_from_settings() -> Options:
    """Control defaults: the options defaults, with those the settings page sets (face parser, ...)."""
    from freecure.webui.settings import setting_defaults

    try:
        return Options.from_dict(setting_defaults())
    except OptionsError as error:
        print(f"[FreeCure] ignoring invalid FreeCure settings-page values: {error}")
        return Options()


def ui_defaults() -> list[Any]:
    """The component values of a fresh UI, in ``UI_FIELDS`` order (what the API fills missing args with)."""
    defaults = Options()
    return [ui_value(field, getattr(defaults, field)) for field in UI_FIELDS]


def _paste_reader(field: str) -> Callable[[dict[str, str]], Any]:
    """Reads one setting back from pasted infotext parameters; a malformed entry is ignored with a warning."""

    def read(params: dict[str, str]) -> Any:
        try:
            pasted = Options.from_infotext(params)
        except OptionsError as error:
            if field == "enabled":
                print(f"[FreeCure] ignoring malformed infotext: {error}")
            pasted = None
        if pasted is None:
            # An image made without FreeCure turns it off; its other settings stay as they are.
            return False if field == "enabled" else None
        return ui_value(field, getattr(pasted, field))

    return read
