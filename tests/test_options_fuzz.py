"""Fuzzing every door into the settings model: whatever arrives, the answer is valid Options or one
OptionsError naming a field; never another exception (which the WebUI would swallow mid-job)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from freecure.options import UI_FIELDS, Options, OptionsError
from freecure.webui.controls import options_from_script_args

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
field_names = st.sampled_from(UI_FIELDS) | st.text(max_size=12)


def accepted_or_refused(build) -> None:
    try:
        result = build()
    except OptionsError as error:
        assert isinstance(error.field, str) and error.field in str(error)
        return
    assert result is None or isinstance(result, Options)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(field_names, json_values, max_size=6))
def test_api_dicts(values: dict) -> None:
    accepted_or_refused(lambda: Options.from_dict(values))
    accepted_or_refused(lambda: Options().with_overrides(values))


@settings(max_examples=300, deadline=None)
@given(st.lists(json_values, max_size=len(UI_FIELDS) + 2))
def test_positional_script_args(args: list) -> None:
    accepted_or_refused(lambda: options_from_script_args(tuple(args)))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_pasted_infotext(text: str) -> None:
    accepted_or_refused(lambda: Options.from_infotext({"FreeCure": text}))
