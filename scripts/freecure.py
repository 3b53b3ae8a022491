"""FreeCure as an AlwaysOn WebUI script. Thin: every decision lives in ``freecure.webui``."""

from __future__ import annotations

import os
import sys

from modules import script_callbacks, scripts

# A1111 puts the extension folder on sys.path only while this file is imported; our package is imported
# lazily later too, so keep the folder there (Forge does this for every extension anyway).
_EXTENSION_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _EXTENSION_DIR not in sys.path:
    sys.path.insert(0, _EXTENSION_DIR)

from freecure.webui import api, settings, xyz  # noqa: E402
from freecure.webui.controller import Controller, release_leftovers  # noqa: E402
from freecure.webui.controls import build_ui  # noqa: E402


class FreeCureScript(scripts.Script):
    sorting_priority = 15

    def __init__(self) -> None:
        super().__init__()
        self.controller = Controller()

    def title(self) -> str:
        return "FreeCure"

    def show(self, is_img2img: bool) -> object:
        # txt2img, img2img and inpaint: the foundation pass samples what the tab's main pass samples.
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list:
        components, self.infotext_fields = build_ui(is_img2img, self.elem_id)
        self.paste_field_names = ["FreeCure"]
        return components

    def process(self, p, *args) -> None:
        self.controller.process(p, args)

    def process_batch(self, p, *args, **kwargs) -> None:
        self.controller.process_batch(p, **kwargs)

    def process_before_every_sampling(self, p, *args, **kwargs) -> None:
        self.controller.before_sampling(p, **kwargs)

    def post_sample(self, p, ps, *args) -> None:
        self.controller.post_sample(p, ps)

    def postprocess_image(self, p, pp, *args) -> None:
        self.controller.postprocess_image(p)

    def postprocess(self, p, processed, *args) -> None:
        self.controller.postprocess(p, processed)


# At import, not in on_before_ui: an API-only server (--nowebui) never builds the UI.
xyz.register_with_host()
script_callbacks.on_before_ui(xyz.register_with_host)
script_callbacks.on_ui_settings(settings.register)
script_callbacks.on_app_started(lambda _demo, app: api.install(app))
script_callbacks.on_script_unloaded(release_leftovers)
