"""``modules/script_callbacks.py`` (A1111 1.10.1 82a973c0; Forge 2 dfdcbab6 has the same): global callbacks.
Every dispatcher catches and reports a callback's exception, as the real one does (``report_exception``).
Dispatch walks the cached ordered list of its category (``ordered_callbacks``, rebuilt when the number of
callbacks changed) and ``remove_callbacks_for_function`` removes from that very list in place, as the real
ones: a callback removed while the list is being walked makes the walk skip the next one. The user's and
the extensions' callback order settings are not mirrored (registration order)."""

from __future__ import annotations

import inspect
from collections import namedtuple
from collections.abc import Callable
from typing import Any

from modules import errors

ScriptCallback = namedtuple("ScriptCallback", ["script", "callback", "name"])


class CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond,
                 denoiser=None):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


class CFGDenoisedParams:
    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.inner_model = inner_model


class AfterCFGCallbackParams:
    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps


class ImageSaveParams:
    def __init__(self, image, p, filename, pnginfo):
        self.image = image
        self.p = p
        self.filename = filename
        self.pnginfo = pnginfo


_CATEGORIES = (
    "app_started", "model_loaded", "ui_tabs", "ui_train_tabs", "ui_settings", "before_image_saved",
    "image_saved", "extra_noise", "cfg_denoiser", "cfg_denoised", "cfg_after_cfg", "before_component",
    "after_component", "image_grid", "infotext_pasted", "script_unloaded", "before_ui", "on_reload",
    "list_optimizers", "list_unets", "before_token_counter",
)
callback_map: dict[str, list[ScriptCallback]] = {f"callbacks_{c}": [] for c in _CATEGORIES}
ordered_callbacks_map: dict[str, list[ScriptCallback]] = {}


def clear_callbacks() -> None:
    for callback_list in callback_map.values():
        callback_list.clear()
    ordered_callbacks_map.clear()


def ordered_callbacks(category: str, unordered_callbacks: list | None = None) -> list[ScriptCallback]:
    if unordered_callbacks is None:
        unordered_callbacks = callback_map.get(f"callbacks_{category}", [])
    callbacks = ordered_callbacks_map.get(category)
    if callbacks is not None and len(callbacks) == len(unordered_callbacks):
        return callbacks
    callbacks = list(unordered_callbacks)
    ordered_callbacks_map[category] = callbacks
    return callbacks


def _caller_filename() -> str:
    for frame in inspect.stack()[2:]:
        if frame.filename != __file__:
            return frame.filename
    return "unknown"


def add_callback(callbacks: list, fun: Callable, *, name: str | None = None, category: str = "unknown",
                 filename: str | None = None) -> None:
    filename = filename or _caller_filename()
    callbacks.append(ScriptCallback(filename, fun, name or f"{filename}/{category}"))


def remove_current_script_callbacks() -> None:
    filename = _caller_filename()
    for callback_list in [*callback_map.values(), *ordered_callbacks_map.values()]:
        for cb in [cb for cb in callback_list if cb.script == filename]:
            callback_list.remove(cb)


def remove_callbacks_for_function(callback_func: Callable) -> None:
    for callback_list in callback_map.values():
        for cb in [cb for cb in callback_list if cb.callback == callback_func]:
            callback_list.remove(cb)
    for ordered_callback_list in ordered_callbacks_map.values():
        for cb in [cb for cb in ordered_callback_list if cb.callback == callback_func]:
            ordered_callback_list.remove(cb)


def _dispatch(category: str, *args: Any) -> None:
    for c in ordered_callbacks(category):
        try:
            c.callback(*args)
        except Exception:
            errors.report(f"Error executing callback {category}_callback for {c.script}", exc_info=True)


def app_started_callback(demo, app) -> None:
    _dispatch("app_started", demo, app)


def model_loaded_callback(sd_model) -> None:
    _dispatch("model_loaded", sd_model)


def ui_settings_callback() -> None:
    _dispatch("ui_settings")


def before_ui_callback() -> None:
    _dispatch("before_ui")


def script_unloaded_callback() -> None:
    _dispatch("script_unloaded")


def infotext_pasted_callback(infotext: str, params: dict) -> None:
    _dispatch("infotext_pasted", infotext, params)


def cfg_denoiser_callback(params: CFGDenoiserParams) -> None:
    _dispatch("cfg_denoiser", params)


def cfg_denoised_callback(params: CFGDenoisedParams) -> None:
    _dispatch("cfg_denoised", params)


def cfg_after_cfg_callback(params: AfterCFGCallbackParams) -> None:
    _dispatch("cfg_after_cfg", params)


def before_component_callback(component, **kwargs) -> None:
    _dispatch("before_component", component, kwargs)


def after_component_callback(component, **kwargs) -> None:
    _dispatch("after_component", component, kwargs)


def _register(category: str) -> Callable:
    def on(callback: Callable, *, name: str | None = None) -> None:
        add_callback(callback_map[f"callbacks_{category}"], callback, name=name, category=category)

    on.__name__ = f"on_{category}"
    return on


on_app_started = _register("app_started")
on_model_loaded = _register("model_loaded")
on_ui_tabs = _register("ui_tabs")
on_ui_settings = _register("ui_settings")
on_before_image_saved = _register("before_image_saved")
on_image_saved = _register("image_saved")
on_cfg_denoiser = _register("cfg_denoiser")
on_cfg_denoised = _register("cfg_denoised")
on_cfg_after_cfg = _register("cfg_after_cfg")
on_before_component = _register("before_component")
on_after_component = _register("after_component")
on_infotext_pasted = _register("infotext_pasted")
on_script_unloaded = _register("script_unloaded")
on_before_ui = _register("before_ui")
