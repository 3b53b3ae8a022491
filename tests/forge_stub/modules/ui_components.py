"""Forge 2 (gradio 4) ``modules/ui_components.py``: ``InputAccordion`` is a function returning an
``InputAccordionImpl`` (a checkbox-valued block usable as ``with InputAccordion(False, label=...) as x:``)."""

from __future__ import annotations

import gradio as gr

from modules import load_a1111

_a1111 = load_a1111("ui_components")
ToolButton, FormRow, FormColumn, FormGroup = _a1111.ToolButton, _a1111.FormRow, _a1111.FormColumn, _a1111.FormGroup


class InputAccordionImpl(gr.Checkbox):
    global_index = 0

    def __init__(self, value=None, setup=False, **kwargs):
        if not setup:
            super().__init__(value=value, **kwargs)
            return
        self.accordion_id = kwargs.get("elem_id") or f"input-accordion-{InputAccordionImpl.global_index}"
        InputAccordionImpl.global_index += 1
        super().__init__(value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
        self.accordion = gr.Accordion(label=kwargs.get("label", "Accordion"), open=value,
                                      elem_id=self.accordion_id, elem_classes=["input-accordion"])

    def extra(self):
        return gr.Column(elem_id=self.accordion_id + "-extra", elem_classes="input-accordion-extra", min_width=0)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.accordion.__exit__(exc_type, exc_val, exc_tb)

    def get_block_name(self):
        return "checkbox"


def InputAccordion(value=None, **kwargs):
    return InputAccordionImpl(value=value, setup=True, **kwargs)
