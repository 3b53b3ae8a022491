"""Stand-in of the ``gradio`` package for CPU tests of an extension's ``ui()``.

Only what a WebUI script builds: layout blocks usable as context managers, input components that keep
their ``.value``, event listeners that record their arguments, and ``gr.update``. Constructors accept the
keyword arguments that exist in both gradio 3.41 (A1111) and gradio 4.x (Forge 2) and reject any other
keyword with a ``TypeError``, as gradio 4 does, so an argument that would break one of the two hosts
fails here too.
"""

from __future__ import annotations

from typing import Any

__version__ = "3.41.2"

_COMMON = frozenset(
    {
        "label", "info", "show_label", "container", "scale", "min_width", "interactive", "visible",
        "elem_id", "elem_classes", "every", "render", "key",
    }
)

_open_blocks: list[Block] = []


class Block:
    """Base of every gradio object: records its keyword arguments and joins the enclosing layout."""

    allowed_kwargs: frozenset[str] = frozenset({"visible", "elem_id", "elem_classes", "render"})

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - self.allowed_kwargs
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword arguments: {sorted(unknown)}")
        self.visible = kwargs.pop("visible", True)
        self.elem_id = kwargs.pop("elem_id", None)
        self.elem_classes = kwargs.pop("elem_classes", None)
        self.kwargs = kwargs
        self.children: list[Block] = []
        self.parent = _open_blocks[-1] if _open_blocks else None
        if self.parent is not None:
            self.parent.children.append(self)
        self.listeners: list[tuple[str, dict[str, Any]]] = []

    def _listen(self, event: str, fn: Any = None, **kwargs: Any) -> None:
        self.listeners.append((event, {"fn": fn, **kwargs}))

    def change(self, fn: Any = None, **kwargs: Any) -> None:
        self._listen("change", fn, **kwargs)

    def input(self, fn: Any = None, **kwargs: Any) -> None:
        self._listen("input", fn, **kwargs)

    def click(self, fn: Any = None, **kwargs: Any) -> None:
        self._listen("click", fn, **kwargs)

    def select(self, fn: Any = None, **kwargs: Any) -> None:
        self._listen("select", fn, **kwargs)

    def release(self, fn: Any = None, **kwargs: Any) -> None:
        self._listen("release", fn, **kwargs)

    def get_block_name(self) -> str:
        return type(self).__name__.lower()


class BlockContext(Block):
    """A layout block: ``with gr.Row():`` collects the components created inside it."""

    def __enter__(self) -> BlockContext:
        _open_blocks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _open_blocks.remove(self)


class Blocks(BlockContext):
    allowed_kwargs = Block.allowed_kwargs | {"theme", "analytics_enabled", "mode", "title", "css", "head"}


class Row(BlockContext):
    allowed_kwargs = Block.allowed_kwargs | {"variant", "equal_height"}


class Column(BlockContext):
    allowed_kwargs = Block.allowed_kwargs | {"scale", "min_width", "variant"}

    def __init__(self, scale: int = 1, min_width: int = 320, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = scale
        self.min_width = min_width


class Group(BlockContext):
    pass


class Tabs(BlockContext):
    allowed_kwargs = Block.allowed_kwargs | {"selected"}


class Tab(BlockContext):
    allowed_kwargs = Block.allowed_kwargs | {"id"}

    def __init__(self, label: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.label = label


TabItem = Tab


class Accordion(BlockContext):
    def __init__(self, label: str | None = None, open: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.label = label
        self.open = open


class Component(Block):
    """An input/output component: ``value`` is what the WebUI passes to a script hook by default."""

    allowed_kwargs = _COMMON

    def __init__(self, value: Any = None, **kwargs: Any) -> None:
        self.label = kwargs.pop("label", None)
        self.info = kwargs.pop("info", None)
        self.interactive = kwargs.pop("interactive", None)
        super().__init__(**kwargs)
        self.value = value


class Checkbox(Component):
    def __init__(self, value: bool = False, **kwargs: Any) -> None:
        super().__init__(value, **kwargs)


class Slider(Component):
    allowed_kwargs = _COMMON | {"step", "randomize"}

    def __init__(self, minimum: float = 0, maximum: float = 100, value: float | None = None, **kwargs: Any):
        self.minimum = minimum
        self.maximum = maximum
        self.step = kwargs.pop("step", None)
        super().__init__(minimum if value is None else value, **kwargs)


class Number(Component):
    allowed_kwargs = _COMMON | {"precision", "minimum", "maximum", "step"}

    def __init__(self, value: float | None = None, **kwargs: Any) -> None:
        self.precision = kwargs.pop("precision", None)
        self.minimum = kwargs.pop("minimum", None)
        self.maximum = kwargs.pop("maximum", None)
        self.step = kwargs.pop("step", 1)
        super().__init__(value, **kwargs)


class Dropdown(Component):
    allowed_kwargs = _COMMON | {"allow_custom_value", "max_choices", "filterable"}

    def __init__(self, choices: list | None = None, value: Any = None, type: str = "value",
                 multiselect: bool | None = None, **kwargs: Any) -> None:
        if type not in ("value", "index"):
            raise ValueError(f"Dropdown type must be 'value' or 'index', got {type!r}")
        self.choices = list(choices or [])
        self.type = type
        self.multiselect = multiselect
        self.allow_custom_value = kwargs.pop("allow_custom_value", False)
        self.max_choices = kwargs.pop("max_choices", None)
        super().__init__(([] if multiselect else None) if value is None else value, **kwargs)


class Radio(Component):
    def __init__(self, choices: list | None = None, value: Any = None, type: str = "value", **kwargs: Any):
        self.choices = list(choices or [])
        self.type = type
        super().__init__(value, **kwargs)


class CheckboxGroup(Radio):
    def __init__(self, choices: list | None = None, value: Any = None, type: str = "value", **kwargs: Any):
        super().__init__(choices, [] if value is None else value, type, **kwargs)


class Textbox(Component):
    allowed_kwargs = _COMMON | {"lines", "max_lines", "placeholder", "type", "autofocus", "show_copy_button",
                                "text_align", "rtl", "autoscroll"}

    def __init__(self, value: str = "", **kwargs: Any) -> None:
        self.lines = kwargs.pop("lines", 1)
        self.max_lines = kwargs.pop("max_lines", 20)
        self.placeholder = kwargs.pop("placeholder", None)
        super().__init__(value, **kwargs)


class Markdown(Component):
    allowed_kwargs = Block.allowed_kwargs | {"rtl", "sanitize_html", "line_breaks", "header_links"}

    def __init__(self, value: str = "", **kwargs: Any) -> None:
        super().__init__(value, **kwargs)


class HTML(Component):
    allowed_kwargs = Block.allowed_kwargs | {"label", "show_label"}

    def __init__(self, value: str = "", **kwargs: Any) -> None:
        super().__init__(value, **kwargs)


class Button(Component):
    allowed_kwargs = Block.allowed_kwargs | {"variant", "size", "icon", "link", "interactive", "scale",
                                             "min_width"}

    def __init__(self, value: str = "Run", **kwargs: Any) -> None:
        self.variant = kwargs.pop("variant", "secondary")
        super().__init__(value, **kwargs)


class Image(Component):
    allowed_kwargs = _COMMON | {"type", "image_mode", "sources", "height", "width", "show_download_button"}

    def __init__(self, value: Any = None, **kwargs: Any) -> None:
        self.type = kwargs.pop("type", "numpy")
        super().__init__(value, **kwargs)


class Gallery(Component):
    allowed_kwargs = _COMMON | {"columns", "rows", "height", "preview", "object_fit"}


class State(Component):
    allowed_kwargs = frozenset()


def update(**kwargs: Any) -> dict[str, Any]:
    """What a listener returns to change a component's properties (``gr.update`` in 3.41 and 4.x)."""
    return {"__type__": "update", **kwargs}
