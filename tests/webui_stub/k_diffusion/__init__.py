"""Stand-in of crowsonkb/k-diffusion (``repositories/k-diffusion`` in A1111): the parts the WebUI uses."""

from . import external, sampling  # noqa: F401
