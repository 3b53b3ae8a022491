"""``modules/script_loading.py``: a script file becomes a module named after its file name (for example
``xyz_grid.py``) and is *not* put into ``sys.modules``."""

import importlib.util
import os
from types import ModuleType


def load_module(path: str) -> ModuleType:
    module_spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module
