"""Suite-wide test settings and the WebUI host fixture."""

from collections.abc import Iterator

import pytest
import torch

# The models here are tiny: per-op overhead dominates, and on a shared 2-core machine two torch threads
# contend with each other (a tiny UNet call took 3.5 s with 2 threads and 0.14 s with 1).
torch.set_num_threads(1)


@pytest.fixture(params=["a1111", "forge"])
def webui(request: pytest.FixtureRequest) -> Iterator:
    """The extension loaded into each WebUI stand-in. On Forge the identity adapter arrives from another
    extension's process_before_every_sampling (tests/fake_extensions/faceid)."""
    from webui_checks import EXTENSION_DIR, FAKE_FACEID
    from webui_host import installed_host

    with installed_host(request.param) as host:
        host.load_scripts(*([FAKE_FACEID] if host.kind == "forge" else []), EXTENSION_DIR)
        yield host
