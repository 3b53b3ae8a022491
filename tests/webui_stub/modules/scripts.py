"""``modules/scripts.py``: ``Script``, script discovery (``load_scripts``/``scripts_data``) and the
``ScriptRunner`` that lays out every script's ``ui()`` controls in one flat ``script_args`` tuple and
calls each hook with its slice, catching and reporting any exception (the generation goes on)."""

from __future__ import annotations

import inspect
import os
import re
import sys
from collections import namedtuple
from typing import Any

import gradio as gr

from modules import errors, extensions, paths, script_callbacks, script_loading, shared

AlwaysVisible = object()


class MaskBlendArgs:
    def __init__(self, current_latent, nmask, init_latent, mask, blended_latent, denoiser=None, sigma=None):
        self.current_latent = current_latent
        self.nmask = nmask
        self.init_latent = init_latent
        self.mask = mask
        self.blended_latent = blended_latent
        self.denoiser = denoiser
        self.is_final_blend = denoiser is None
        self.sigma = sigma


class PostSampleArgs:
    def __init__(self, samples):
        self.samples = samples


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class PostProcessMaskOverlayArgs:
    def __init__(self, index, mask_for_overlay, overlay_image):
        self.index = index
        self.mask_for_overlay = mask_for_overlay
        self.overlay_image = overlay_image


class PostprocessBatchListArgs:
    def __init__(self, images):
        self.images = images


class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    api_info = None
    sorting_priority = 0
    setup_for_ui_only = False
    controls = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def after_extra_networks_activate(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, *args, **kwargs):
        pass

    def on_mask_blend(self, p, mba: MaskBlendArgs, *args):
        pass

    def post_sample(self, p, ps: PostSampleArgs, *args):
        pass

    def postprocess_image(self, p, pp: PostprocessImageArgs, *args):
        pass

    def postprocess_maskoverlay(self, p, ppmo: PostProcessMaskOverlayArgs, *args):
        pass

    def postprocess_image_after_composite(self, p, pp: PostprocessImageArgs, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_component(self, component, **kwargs):
        pass

    def after_component(self, component, **kwargs):
        pass

    def describe(self):
        return ""

    def elem_id(self, item_id):
        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"

    def before_hr(self, p, *args):
        pass


ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
ScriptFile = extensions.ScriptFile

scripts_data: list[ScriptClassData] = []
postprocessing_scripts_data: list[ScriptClassData] = []
current_basedir = paths.script_path


def basedir():
    """The directory of the script being imported; only meaningful during ``load_scripts``."""
    return current_basedir


def list_scripts(scriptdirname, extension, *, include_extensions=True):
    scripts_list = []
    basedir_ = os.path.join(paths.script_path, scriptdirname)
    if os.path.exists(basedir_):
        for filename in sorted(os.listdir(basedir_)):
            scripts_list.append(ScriptFile(paths.script_path, filename, os.path.join(basedir_, filename)))
    if include_extensions:
        for ext in extensions.active():
            scripts_list += ext.list_files(scriptdirname, extension)
    return [x for x in scripts_list if os.path.splitext(x.path)[1].lower() == extension and os.path.isfile(x.path)]


def load_scripts():
    """Import every script of the WebUI and of the active extensions, as the real loader does: the
    extension dir is on ``sys.path`` only while its file is being imported."""
    global current_basedir
    scripts_data.clear()
    postprocessing_scripts_data.clear()
    script_callbacks.clear_callbacks()
    syspath = sys.path
    for scriptfile in list_scripts("scripts", ".py"):
        try:
            if scriptfile.basedir != paths.script_path:
                sys.path = [scriptfile.basedir, *sys.path]
            current_basedir = scriptfile.basedir
            module = script_loading.load_module(scriptfile.path)
            for script_class in module.__dict__.values():
                if inspect.isclass(script_class) and issubclass(script_class, Script):
                    scripts_data.append(ScriptClassData(script_class, scriptfile.path, scriptfile.basedir, module))
        except Exception:
            errors.report(f"Error loading script: {scriptfile.filename}", exc_info=True)
        finally:
            sys.path = syspath
            current_basedir = paths.script_path
    global scripts_txt2img, scripts_img2img
    scripts_txt2img = ScriptRunner()
    scripts_img2img = ScriptRunner()


def wrap_call(func, filename, funcname, *args, default=None, **kwargs):
    try:
        return func(*args, **kwargs)
    except Exception:
        errors.report(f"Error calling: {filename}/{funcname}", exc_info=True)
    return default


class ScriptRunner:
    def __init__(self):
        self.scripts: list[Script] = []
        self.selectable_scripts: list[Script] = []
        self.alwayson_scripts: list[Script] = []
        self.titles: list[str] = []
        self.title_map: dict[str, Script] = {}
        self.infotext_fields: list = []
        self.paste_field_names: list = []
        self.inputs: list[Any] = [None]
        self.is_img2img = False

    def initialize_scripts(self, is_img2img):
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()
        self.is_img2img = is_img2img
        for script_data in scripts_data:
            try:
                script = script_data.script_class()
            except Exception:
                errors.report(f"Error instantiating {script_data.path}", exc_info=True)
                continue
            script.filename = script_data.path
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"
            visibility = script.show(script.is_img2img)
            if visibility == AlwaysVisible:
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
                script.alwayson = True
            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)
        self.alwayson_scripts.sort(key=lambda s: s.sorting_priority)

    def create_script_ui(self, script):
        script.args_from = len(self.inputs)
        script.args_to = len(self.inputs)
        controls = wrap_call(script.ui, script.filename, "ui", script.is_img2img)
        script.controls = controls
        if controls is None:
            return
        script.name = wrap_call(script.title, script.filename, "title", default=script.filename).lower()
        self.inputs += controls
        script.args_to = len(self.inputs)
        if script.infotext_fields is not None:
            self.infotext_fields += script.infotext_fields
        if script.paste_field_names is not None:
            self.paste_field_names += script.paste_field_names

    def prepare_ui(self):
        self.inputs = [None]

    def setup_ui(self):
        """Always-on scripts first, then the selectable ones; ``inputs[0]`` is the script dropdown."""
        all_titles = [wrap_call(s.title, s.filename, "title") or s.filename for s in self.scripts]
        self.title_map = {title.lower(): script for title, script in zip(all_titles, self.scripts, strict=True)}
        self.titles = [wrap_call(s.title, s.filename, "title") or f"{s.filename} [error]"
                       for s in self.selectable_scripts]
        for script in self.alwayson_scripts:
            with gr.Group(visible=script.alwayson):
                self.create_script_ui(script)
        self.inputs[0] = gr.Dropdown(label="Script", elem_id="script_list", choices=["None", *self.titles],
                                     value="None", type="index")
        for script in self.selectable_scripts:
            with gr.Group(visible=False):
                self.create_script_ui(script)
        return self.inputs

    def default_script_args(self):
        """What ``Api.init_default_script_args`` builds: 0, then every control's ``.value``."""
        args = [None] * max(len(self.inputs), 1)
        args[0] = 0
        for script in self.scripts:
            if script.args_from is not None and script.controls:
                for i, control in enumerate(script.controls):
                    args[script.args_from + i] = control.value
        return args

    def run(self, p, *args):
        script_index = args[0]
        if script_index == 0 or script_index is None:
            return None
        script = self.selectable_scripts[script_index - 1]
        if script is None:
            return None
        script_args = args[script.args_from:script.args_to]
        processed = script.run(p, *script_args)
        shared.total_tqdm.clear()
        return processed

    def ordered_scripts(self, method_name):
        """Always-on scripts that override ``method_name`` (only those are called)."""
        return [s for s in self.alwayson_scripts
                if getattr(type(s), method_name, None) is not getattr(Script, method_name, None)]

    def _call(self, method_name, p, *leading, **kwargs):
        for script in self.ordered_scripts(method_name):
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                getattr(script, method_name)(p, *leading, *script_args, **kwargs)
            except Exception:
                errors.report(f"Error running {method_name}: {script.filename}", exc_info=True)

    def setup_scrips(self, p, *, is_ui=True):
        for script in self.ordered_scripts("setup"):
            if not is_ui and script.setup_for_ui_only:
                continue
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                script.setup(p, *script_args)
            except Exception:
                errors.report(f"Error running setup: {script.filename}", exc_info=True)

    def before_process(self, p):
        self._call("before_process", p)

    def process(self, p):
        self._call("process", p)

    def before_process_batch(self, p, **kwargs):
        self._call("before_process_batch", p, **kwargs)

    def after_extra_networks_activate(self, p, **kwargs):
        self._call("after_extra_networks_activate", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._call("process_batch", p, **kwargs)

    def process_before_every_sampling(self, p, **kwargs):
        self._call("process_before_every_sampling", p, **kwargs)

    def before_hr(self, p):
        self._call("before_hr", p)

    def post_sample(self, p, ps: PostSampleArgs):
        self._call("post_sample", p, ps)

    def on_mask_blend(self, p, mba: MaskBlendArgs):
        self._call("on_mask_blend", p, mba)

    def postprocess_batch(self, p, images, **kwargs):
        self._call("postprocess_batch", p, images=images, **kwargs)

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, **kwargs):
        self._call("postprocess_batch_list", p, pp, **kwargs)

    def postprocess_image(self, p, pp: PostprocessImageArgs):
        self._call("postprocess_image", p, pp)

    def postprocess_maskoverlay(self, p, ppmo: PostProcessMaskOverlayArgs):
        self._call("postprocess_maskoverlay", p, ppmo)

    def postprocess_image_after_composite(self, p, pp: PostprocessImageArgs):
        self._call("postprocess_image_after_composite", p, pp)

    def postprocess(self, p, processed):
        self._call("postprocess", p, processed)


scripts_txt2img: ScriptRunner | None = None
scripts_img2img: ScriptRunner | None = None
