"""``modules/paths.py`` and ``paths_internal``: where the WebUI keeps its scripts and models."""

import os
import tempfile

script_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
data_path = os.environ.get("WEBUI_STUB_DATA_DIR") or tempfile.mkdtemp(prefix="webui_stub_data_")
models_path = os.path.join(data_path, "models")
extensions_dir = os.path.join(data_path, "extensions")
extensions_builtin_dir = os.path.join(script_path, "extensions-builtin")
