"""Suite-wide test settings and the WebUI host fixture."""

from collections.abc import Iterator

import pytest
import torch

# The models here are tiny: per-op overhead dominates, and on a shared 2-core machine two torch threads
# contend with each other (a tiny UNet call took 3.5 s with 2 threads and 0.14 s with 1).
torch.set_num_threads(1)


@pytest.fixture(params=["a1111", "forge"])
def webui(request: pytest.FixtureRequest) -> Iterator:
    """The extension loaded into each WebUI stand-in, after a fake of the extension that brings IP-Adapter
    units on that host (tests/fake_extensions: sd-webui-controlnet on A1111, Forge's IP-Adapter on Forge)."""
    from webui_checks import EXTENSION_DIR, FAKE_ADAPTERS
    from webui_host import installed_host

    with installed_host(request.param) as host:
        host.load_scripts(FAKE_ADAPTERS[host.kind], EXTENSION_DIR)
        yield host
