"""FreeCure's own API layer: settings validation for txt2img/img2img requests, schema and version routes.

The WebUI catches every exception raised inside a script hook and still answers 200, so invalid FreeCure
settings sent through ``alwayson_scripts`` would only surface as an uncured image. This ASGI middleware
checks them first and answers 422 naming the field; every other request, and every valid one, passes
through with its body replayed untouched (a middleware that consumes the body makes the request hang).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import freecure
from freecure.options import OptionsError, schema
from freecure.webui.controls import options_from_script_args, ui_defaults

SCRIPT_TITLE = "freecure"
GUARDED_PATHS = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def validation_error(body: bytes) -> dict[str, Any] | None:
    """The 422 payload for a request body with invalid FreeCure args; None when there is nothing to refuse
    (no FreeCure entry, valid args, or a body the WebUI itself will reject)."""
    try:
        payload = json.loads(body or b"null")
    except ValueError:
        return None
    scripts = payload.get("alwayson_scripts") if isinstance(payload, dict) else None
    if not isinstance(scripts, dict):
        return None
    for title, entry in scripts.items():
        if str(title).lower() != SCRIPT_TITLE:
            continue
        args = entry.get("args", []) if isinstance(entry, dict) else entry
        if not isinstance(args, list):
            return {"error": "FreeCure settings", "field": "args",
                    "detail": "alwayson_scripts.FreeCure.args must be a list (positional values or [settings dict])"}
        if not any(isinstance(value, dict) for value in args[:2]):
            # The WebUI fills missing trailing args with the UI defaults before the hooks see them.
            args = list(args) + ui_defaults()[len(args):]
        try:
            options_from_script_args(tuple(args))
        except OptionsError as error:
            return {"error": "FreeCure settings", "field": error.field, "detail": str(error)}
    return None


class OptionsValidationMiddleware:
    """Pure ASGI middleware (no BaseHTTPMiddleware: its body handling differs across Starlette versions)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") not in GUARDED_PATHS:
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        error = validation_error(body)
        if error is not None:
            content = json.dumps(error).encode()
            await send({"type": "http.response.start", "status": 422,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(content)).encode())]})
            await send({"type": "http.response.body", "body": content})
            return

        replay = iter(messages)

        async def replayed_receive() -> Message:
            try:
                return next(replay)
            except StopIteration:
                return await receive()

        await self.app(scope, replayed_receive, send)


def install(app: Any) -> None:
    """Add the middleware and the routes to the WebUI's FastAPI app (from ``on_app_started``)."""
    app.add_api_route("/freecure/v1/schema", lambda: {"settings": schema()}, methods=["GET"])
    app.add_api_route("/freecure/v1/version", lambda: {"version": freecure.__version__}, methods=["GET"])
    try:
        app.add_middleware(OptionsValidationMiddleware)
    except RuntimeError:
        # The app already built its middleware stack (it served a request): wrap the built stack instead.
        app.middleware_stack = OptionsValidationMiddleware(app.middleware_stack)
