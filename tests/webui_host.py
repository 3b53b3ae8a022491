"""Put one WebUI stand-in (A1111 1.10 under ``tests/webui_stub`` or Forge 2 under ``tests/forge_stub``)
on ``sys.path`` for a test and remove every trace afterwards: both define ``modules``.

Fixtures (import them into a test module: ``from webui_host import a1111_host, forge_host``):

- ``a1111_host`` / ``forge_host``: a ``WebUIHost`` with a fresh SD1-layout model loaded.
  ``host.load_model("sdxl")`` swaps in an SDXL-layout one.
- ``host.load_scripts(extension_dir)``: the real discovery path: ``modules.extensions`` gets the
  extension, ``scripts.load_scripts()`` imports the WebUI's scripts (``xyz_grid.py``) and the extension's,
  then the txt2img and img2img ``ScriptRunner`` are initialized and their UIs built (``ui()`` per script,
  args_from/args_to).
- ``host.txt2img(**fields)``: a ``StableDiffusionProcessingTxt2Img`` wired to that runner with the
  default script args (index 0 = no selectable script); ``host.img2img(image, **fields)`` the same with the
  img2img runner; ``host.set_script_args(p, script, [...])``
  writes one script's slice; ``host.process(p)`` runs ``state.begin()`` + ``process_images(p)``.
- ``host.errors``: everything the host caught and reported (hooks, callbacks).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

TESTS = Path(__file__).resolve().parent
A1111_ROOT = TESTS / "webui_stub"
FORGE_ROOT = TESTS / "forge_stub"
# Top-level names the stand-ins (and a real WebUI) provide; none may survive a test.
HOST_PACKAGES = ("modules", "ldm", "sgm", "gradio", "k_diffusion", "backend", "modules_forge", "stand_in",
                 "ldm_patched", "launch", "network", "networks", "extra_networks_lora")
# Forge's built-in LoRA extension: its scripts import these modules with the extension's folder on sys.path.
FORGE_LORA = FORGE_ROOT / "extensions-builtin" / "sd_forge_lora"


def _is_host_module(name: str) -> bool:
    return name.split(".")[0] in HOST_PACKAGES


class WebUIHost:
    """Handle on an installed stand-in: its modules, a loaded model and the script machinery."""

    def __init__(self, kind: str, root: Path):
        self.kind = kind
        self.root = root
        self.runner = None

    def module(self, name: str) -> ModuleType:
        return importlib.import_module(name)

    def __getattr__(self, name: str) -> Any:
        # host.shared, host.processing, host.scripts ... are the stand-in's modules.* of that name.
        if name.startswith("_"):
            raise AttributeError(name)
        return importlib.import_module(f"modules.{name}")

    @property
    def errors(self) -> list:
        return importlib.import_module("modules.errors").reported

    def load_model(self, family: str = "sd1", seed: int = 0) -> Any:
        from tiny_models import SD1_CONTEXT_DIM, SDXL_CONTEXT_DIM, SDXL_POOLED_DIM, tiny_sd1_unet, tiny_sdxl_unet

        shared = self.shared
        if family not in ("sd1", "sdxl"):
            raise ValueError(f"family must be 'sd1' or 'sdxl', got {family!r}")
        unet = tiny_sd1_unet(seed) if family == "sd1" else tiny_sdxl_unet(seed)
        context_dim = SD1_CONTEXT_DIM if family == "sd1" else SDXL_CONTEXT_DIM
        if self.kind == "a1111":
            from stand_in.sd_model import DiffusionEngine, LatentDiffusion

            model = LatentDiffusion(unet, context_dim) if family == "sd1" else \
                DiffusionEngine(unet, context_dim, SDXL_POOLED_DIM)
            self.module("modules.sd_hijack").model_hijack.hijack(model)  # as sd_models.load_model does
        else:
            from backend.diffusion_engine.stand_in import build_engine

            model = build_engine(family, unet, context_dim, SDXL_POOLED_DIM)
        shared.sd_model = model
        return model

    def load_scripts(self, *extension_dirs: str | Path) -> Any:
        extensions = self.extensions
        extensions.extensions[:] = [extensions.Extension(Path(d).name, str(d)) for d in extension_dirs]
        scripts = self.scripts
        scripts.load_scripts()
        import gradio as gr

        for runner, is_img2img in ((scripts.scripts_txt2img, False), (scripts.scripts_img2img, True)):
            runner.initialize_scripts(is_img2img=is_img2img)
            with gr.Blocks():
                runner.prepare_ui()
                runner.setup_ui()
        self.runner = scripts.scripts_txt2img
        return self.runner

    def script(self, title: str) -> Any:
        return self.runner.title_map[title.lower()]

    def txt2img(self, **fields: Any) -> Any:
        defaults = {"prompt": "a photo", "negative_prompt": "", "seed": 1, "steps": 3, "width": 64,
                    "height": 64, "cfg_scale": 5.0, "sampler_name": "Euler", "batch_size": 1, "n_iter": 1}
        p = self.processing.StableDiffusionProcessingTxt2Img(**{**defaults, **fields})
        if self.runner is not None:
            p.scripts = self.runner
            p.script_args = tuple(self.runner.default_script_args())
        return p

    def img2img(self, init_image: Any, **fields: Any) -> Any:
        """A plain img2img job from ``init_image`` with the img2img runner's default script args."""
        defaults = {"prompt": "a photo", "negative_prompt": "", "seed": 1, "steps": 3, "width": init_image.width,
                    "height": init_image.height, "cfg_scale": 5.0, "sampler_name": "Euler", "batch_size": 1,
                    "n_iter": 1, "denoising_strength": 0.6}
        p = self.processing.StableDiffusionProcessingImg2Img(init_images=[init_image], **{**defaults, **fields})
        if self.runner is not None:
            runner = self.scripts.scripts_img2img
            p.scripts = runner
            p.script_args = tuple(runner.default_script_args())
        return p

    def set_script_args(self, p: Any, script: Any, args: list) -> None:
        full = list(p.script_args)
        full[script.args_from:script.args_from + len(args)] = args
        p.script_args = tuple(full)

    def process(self, p: Any) -> Any:
        self.shared.state.begin()
        try:
            return self.processing.process_images(p)
        finally:
            self.shared.state.end()


def _load_from_a1111_tree(name: str, path: Path, package: bool = False) -> ModuleType:
    """Import one module of tests/webui_stub (the toy models, gradio) for the Forge stand-in without putting
    that tree, and so ``ldm``/``sgm``, on ``sys.path``."""
    locations = [str(path.parent)] if package else None
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=locations)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _register_forge_lora(host: WebUIHost) -> None:
    """As ``sd_forge_lora/scripts/lora_script.py``: imported with the extension's folder on ``sys.path`` (as
    ``modules/scripts.py`` loads an extension's scripts), its network registered at ``before_ui``."""
    sys.path.insert(0, str(FORGE_LORA))
    try:
        extra_networks_lora = importlib.import_module("extra_networks_lora")
        networks = importlib.import_module("networks")
    finally:
        sys.path.remove(str(FORGE_LORA))
    networks.extra_network_lora = extra_networks_lora.ExtraNetworkLora()
    host.extra_networks.register_extra_network(networks.extra_network_lora)


@contextmanager
def installed_host(kind: str, family: str = "sd1") -> Iterator[WebUIHost]:
    """Install one stand-in, load a model, and afterwards restore ``sys.path`` and ``sys.modules``."""
    if kind not in ("a1111", "forge"):
        raise ValueError(f"kind must be 'a1111' or 'forge', got {kind!r}")
    root = A1111_ROOT if kind == "a1111" else FORGE_ROOT
    saved_path = list(sys.path)
    # Tiny models on a shared 2-core machine: several intra-op threads spin against each other.
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    saved_modules = {name: mod for name, mod in sys.modules.items() if _is_host_module(name)}
    for name in saved_modules:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    if str(TESTS) not in sys.path:
        sys.path.insert(1, str(TESTS))
    importlib.invalidate_caches()
    try:
        if kind == "forge":
            _load_from_a1111_tree("stand_in", A1111_ROOT / "stand_in" / "__init__.py", package=True)
            _load_from_a1111_tree("gradio", A1111_ROOT / "gradio.py").__version__ = "4.40.0"
        host = WebUIHost(kind, root)
        host.extra_networks.initialize()
        if kind == "a1111":
            from stand_in.extra_networks_lora import ExtraNetworkLora

            host.extra_networks.register_extra_network(ExtraNetworkLora())
        else:
            _register_forge_lora(host)
        host.load_model(family)
        from freecure.webui import controller

        controller._FOUNDATIONS.clear()  # a fresh WebUI process has no foundations of earlier jobs
        yield host
    finally:
        torch.set_num_threads(saved_threads)
        sys.path[:] = saved_path
        for name in [n for n in sys.modules if _is_host_module(n)]:
            del sys.modules[name]
        sys.modules.update(saved_modules)
        importlib.invalidate_caches()


@pytest.fixture
def a1111_host() -> Iterator[WebUIHost]:
    with installed_host("a1111") as host:
        yield host


@pytest.fixture
def forge_host() -> Iterator[WebUIHost]:
    with installed_host("forge") as host:
        yield host
