"""The settings page, the models folder, the command-line flags and install.py, on the stand-in host."""

from __future__ import annotations

import argparse
import runpy
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from webui_host import WebUIHost, installed_host

from freecure.options import UI_FIELDS
from freecure.webui import settings

EXTENSION_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture
def webui() -> Iterator[WebUIHost]:
    with installed_host("a1111") as host:
        yield host


def test_settings_page_section_and_defaults_for_the_controls(webui: WebUIHost) -> None:
    import gradio as gr

    settings.register()
    opts = webui.shared.opts
    keys = ["freecure_face_parser", "freecure_models_dir", "freecure_allow_download", "freecure_debug_images"]
    assert all(opts.data_labels[key].section == settings.SECTION for key in keys)
    assert opts.data_labels["freecure_face_parser"].component_args == {"choices": ["bisenet", "parsenet", "none"]}
    opts.data["freecure_face_parser"] = "parsenet"
    opts.data["freecure_debug_images"] = True
    webui.load_scripts(EXTENSION_DIR)
    with gr.Blocks():
        components = webui.script("FreeCure").ui(False)
    values = dict(zip(UI_FIELDS, [c.value for c in components], strict=True))
    assert values["face_parser"] == "parsenet"
    assert values["debug_images"] is True


def test_models_folder_flag_then_settings_then_the_gfpgan_folder(webui: WebUIHost, tmp_path: Path) -> None:
    shared = webui.shared
    shared.cmd_opts.gfpgan_models_path = str(tmp_path / "gfpgan")
    assert settings.models_dir() == str(tmp_path / "gfpgan")
    shared.cmd_opts.gfpgan_models_path = None
    assert settings.models_dir() == str(Path(webui.paths.models_path) / "GFPGAN")
    shared.opts.data["freecure_models_dir"] = str(tmp_path / "configured")
    assert settings.models_dir() == str(tmp_path / "configured")
    shared.cmd_opts.freecure_models_dir = str(tmp_path / "flag")
    assert settings.models_dir() == str(tmp_path / "flag")


def test_no_download_flag_overrides_a_request(webui: WebUIHost) -> None:
    webui.load_scripts(EXTENSION_DIR)
    webui.shared.cmd_opts.freecure_no_download = True
    p = webui.txt2img(prompt="a woman with red hair")
    script = webui.script("FreeCure")
    webui.set_script_args(p, script, [{"enabled": True, "allow_download": True}])
    script.process(p, *p.script_args[script.args_from:script.args_to])
    assert p._freecure_job.options.allow_download is False


def test_preload_adds_the_flags() -> None:
    namespace = runpy.run_path(str(EXTENSION_DIR / "preload.py"))
    parser = argparse.ArgumentParser()
    namespace["preload"](parser)
    args = parser.parse_args(["--freecure-models-dir", "/weights", "--freecure-no-download"])
    assert args.freecure_models_dir == "/weights" and args.freecure_no_download is True
    assert parser.parse_args([]).freecure_no_download is False


@pytest.mark.parametrize(("installed", "expected"), [(True, []), (False, ["install facexlib==0.3.0"])])
def test_install_only_what_is_missing(monkeypatch: pytest.MonkeyPatch, installed: bool, expected: list) -> None:
    calls: list[str] = []
    launch = types.ModuleType("launch")
    launch.is_installed = lambda package: installed
    launch.run_pip = lambda command, description: calls.append(command)
    monkeypatch.setitem(sys.modules, "launch", launch)
    runpy.run_path(str(EXTENSION_DIR / "install.py"))
    assert calls == expected


def test_every_hover_hint_names_a_real_control() -> None:
    import re

    from freecure.webui.controls import CONTROLS

    script = (EXTENSION_DIR / "javascript" / "freecure-hints.js").read_text()
    labels = re.findall(r'^\s*"([^"]+)": "', script, flags=re.M)
    assert labels, "the hints file lists labels"
    assert set(labels) <= {c.label for c in CONTROLS.values()} | {"FreeCure"}
