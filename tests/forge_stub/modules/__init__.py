"""Stand-in of the Forge 2 (``2.0.1v1.10.1``) ``modules`` package for CPU tests.

Forge keeps A1111 1.10's ``modules`` and changes a few files. Here only those files exist (processing, sd_hijack,
the CFG denoiser, the k-diffusion sampler, ui_components); every other ``modules.X`` is found in the
A1111 stand-in (``tests/webui_stub/modules``) through this package's search path, and imports
``modules.Y`` from here first. ``ldm``/``sgm`` are *not* importable, as on Forge 2.
"""

import os

__path__.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "webui_stub", "modules"))


def load_a1111(name: str):
    """A private copy of the A1111 stand-in's ``modules/<name>.py`` for a Forge file that changes it; its
    ``modules.*`` imports resolve to the Forge files first."""
    import importlib.util
    import sys

    path = os.path.join(__path__[-1], f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"modules._a1111_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module
