"""Forge Neo built-ins that change what a K/V bank sees: found from the job's script args (the layouts of the
real scripts, named in freecure/webui/builtins.py) and the compiled-model mark; the note names the setting."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from freecure.webui.builtins import builtin_reason


class Script:
    def __init__(self, title: str, n_args: int) -> None:
        self._title, self.n_args = title, n_args

    def title(self) -> str:
        return self._title


def job(*scripts_and_args: tuple[Script, list], compiled: bool = False) -> SimpleNamespace:
    runner, args = SimpleNamespace(alwayson_scripts=[]), []
    for script, script_args in scripts_and_args:
        assert len(script_args) == script.n_args
        script.args_from, script.args_to = len(args), len(args) + len(script_args)
        runner.alwayson_scripts.append(script)
        args += script_args
    apply_model = SimpleNamespace(_torch_compile_wrapper=True) if compiled else SimpleNamespace()
    unet = SimpleNamespace(model=SimpleNamespace(apply_model=apply_model))
    return SimpleNamespace(scripts=runner, script_args=tuple(args),
                           sd_model=SimpleNamespace(forge_objects=SimpleNamespace(unet=unet)))


def fbcache(on: bool):
    return Script("First Block Cache Integrated", 4), [on, 0.1, 3, 20]  # enable, threshold, max_consecutive, start


def spectrum(on: bool):
    return Script("Spectrum Integrated", 8), [on, 0.25, 6, 0.5, 2, 0.0, 6, 0.9]


def compile_preset(preset: str):
    return Script("Torch Compile Integrated", 1), [preset]


def test_nothing_on_is_no_reason():
    assert builtin_reason(job(fbcache(False), spectrum(False), compile_preset("Automatic"))) is None
    assert builtin_reason(SimpleNamespace(scripts=None, script_args=None, sd_model=SimpleNamespace())) is None


@pytest.mark.parametrize(("scripts", "named"), [
    ([fbcache(True), spectrum(False)], "First Block Cache Integrated is on"),
    ([fbcache(False), spectrum(True)], "Spectrum Integrated is on"),
    ([compile_preset("max-autotune")], "Torch Compile Integrated is on"),
])
def test_a_builtin_that_is_on_is_named(scripts, named):
    assert named in builtin_reason(job(*scripts))


def test_a_model_compiled_in_an_earlier_job_counts_until_the_preset_is_disable():
    assert "set its preset to Disable" in builtin_reason(job(compile_preset("Automatic"), compiled=True))
    assert builtin_reason(job(compile_preset("Disable"), compiled=True)) is None
