"""``modules/options.py``: ``Options`` (``shared.opts``) and ``OptionInfo``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class OptionInfo:
    def __init__(self, default: Any = None, label: str = "", component: Any = None,
                 component_args: Any = None, onchange: Callable | None = None, section: Any = None,
                 refresh: Callable | None = None, comment_before: str = "", comment_after: str = "",
                 infotext: str | None = None, restrict_api: bool = False, category_id: str | None = None):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.category_id = category_id
        self.refresh = refresh
        self.do_not_save = False
        self.comment_before = comment_before
        self.comment_after = comment_after
        self.infotext = infotext
        self.restrict_api = restrict_api

    def info(self, info: str) -> OptionInfo:
        self.comment_after += f"<span class='info'>({info})</span>"
        return self

    def needs_reload_ui(self) -> OptionInfo:
        return self


class Options:
    """Settings: attribute access reads ``data`` and falls back to the registered default."""


    def __init__(self, data_labels: dict[str, OptionInfo], restricted_opts: set[str] | None = None):
        self.data_labels = data_labels
        self.data = {k: v.default for k, v in data_labels.items() if not v.do_not_save}
        self.restricted_opts = restricted_opts or set()

    def __setattr__(self, key: str, value: Any) -> None:
        if key in ("data", "data_labels", "restricted_opts"):
            return super().__setattr__(key, value)
        if key in self.data or key in self.data_labels:
            self.data[key] = value
            return
        super().__setattr__(key, value)

    def __getattr__(self, item: str) -> Any:
        if item in ("data", "data_labels", "restricted_opts"):
            raise AttributeError(item)
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        return super().__getattribute__(item)

    def set(self, key: str, value: Any, is_api: bool = False, run_callbacks: bool = True) -> bool:
        oldval = self.data.get(key, None)
        if oldval == value:
            return False
        option = self.data_labels.get(key)
        if option is not None and option.do_not_save:
            return False
        setattr(self, key, value)
        if run_callbacks and option is not None and option.onchange is not None:
            option.onchange()
        return True

    def get_default(self, key: str) -> Any:
        info = self.data_labels.get(key)
        return None if info is None else info.default

    def add_option(self, key: str, info: OptionInfo) -> None:
        self.data_labels[key] = info
        if key not in self.data and not info.do_not_save:
            self.data[key] = info.default

    def onchange(self, key: str, func: Callable, call: bool = True) -> None:
        item = self.data_labels.get(key)
        item.onchange = func
        if call:
            func()
