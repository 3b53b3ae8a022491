"""Forge vendors k-diffusion; samplers are those of the A1111 stand-in, ``external`` adds
``ForgeScheduleLinker``."""

import os

__path__.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "webui_stub", "k_diffusion"))

from . import external, sampling  # noqa: E402, F401
