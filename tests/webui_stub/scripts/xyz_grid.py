"""Stand-in of the WebUI's built-in ``scripts/xyz_grid.py`` (loaded as module ``xyz_grid.py``).

``AxisOption``/``AxisOptionTxt2Img``/``AxisOptionImg2Img`` and ``axis_options`` have the real names and
signatures; extensions append to ``axis_options``. ``run_cells`` does what the real ``Script.run`` does for
each cell: ``copy(p)``, every axis option's ``apply(pc, x, xs)``, then ``process_images(pc)``.
"""

from __future__ import annotations

from copy import copy

import modules.scripts as scripts
from modules import processing, shared


def apply_field(field):
    def fun(p, x, xs):
        setattr(p, field, x)

    return fun


def format_value_add_label(p, opt, x):
    if isinstance(x, float):
        x = round(x, 8)
    return f"{opt.label}: {x}"


def format_value(p, opt, x):
    if isinstance(x, float):
        x = round(x, 8)
    return x


def format_nothing(p, opt, x):
    return ""


def do_nothing(p, x, xs):
    pass


class AxisOption:
    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0,
                 choices=None, prepare=None):
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost
        self.prepare = prepare
        self.choices = choices


class AxisOptionImg2Img(AxisOption):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = True


class AxisOptionTxt2Img(AxisOption):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = False


axis_options = [
    AxisOption("Nothing", str, do_nothing, format_value=format_nothing),
    AxisOption("Seed", int, apply_field("seed")),
    AxisOption("Steps", int, apply_field("steps")),
    AxisOption("CFG Scale", float, apply_field("cfg_scale")),
    AxisOptionTxt2Img("Sampler", str, apply_field("sampler_name"), format_value=format_value),
]


def run_cells(p, cells: list[list[tuple[AxisOption, object, list]]]):
    """One ``process_images`` per cell; a cell lists ``(option, value, all values of that axis)``.
    Values go through ``option.type`` and ``option.confirm(p, values)`` first, as in the real ``run``."""
    for cell in cells:
        for opt, _, xs in cell:
            if opt.confirm:
                opt.confirm(p, [opt.type(x) for x in xs])
    shared.state.job_count = len(cells) * p.n_iter
    results = []
    for cell in cells:
        pc = copy(p)
        for opt, x, xs in cell:
            opt.apply(pc, opt.type(x), [opt.type(v) for v in xs])
        results.append(processing.process_images(pc))
    return results


class Script(scripts.Script):
    def title(self):
        return "X/Y/Z plot"

    def ui(self, is_img2img):
        import gradio as gr

        self.current_axis_options = [x for x in axis_options
                                     if type(x) is AxisOption or x.is_img2img == is_img2img]
        labels = [x.label for x in self.current_axis_options]
        x_type = gr.Dropdown(label="X type", choices=labels, value=labels[1], type="index")
        x_values = gr.Textbox(label="X values", lines=1)
        return [x_type, x_values]

    def run(self, p, x_type, x_values):
        opt = self.current_axis_options[x_type]
        xs = [v.strip() for v in x_values.split(",") if v.strip()]
        results = run_cells(p, [[(opt, x, xs)] for x in xs])
        first = results[0]
        first.images = [image for res in results for image in res.images]
        first.infotexts = [text for res in results for text in res.infotexts]
        return first
