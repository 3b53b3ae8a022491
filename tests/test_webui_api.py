"""FreeCure's API layer on a real FastAPI app: invalid settings answer 422 naming the field before the WebUI
sees the request; everything else reaches the WebUI's route with its body untouched."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

import freecure
from freecure.options import UI_FIELDS
from freecure.webui import api


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    received: list[bytes] = []

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(request: Request) -> dict:
        body = await request.body()
        received.append(body)
        return {"received": len(body)}

    @app.post("/sdapi/v1/options")
    async def options(request: Request) -> dict:
        return {"received": len(await request.body())}

    api.install(app)
    test_client = TestClient(app)
    test_client.received = received
    return test_client


def post(client: TestClient, payload: dict, path: str = "/sdapi/v1/txt2img"):
    return client.post(path, content=json.dumps(payload).encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ([True, {"strength": "strong"}], "strength"),
        ([{"method": "paint"}], "method"),
        ([{"attributes": ["hair", "wings"]}], "attributes"),
        ([{"enabled": True, "colour": "red"}], "colour"),
        ([True, "fasa", "auto", float("nan")], "strength"),
        ([True, "fasa", ["auto"], 20.0], "strength"),
        ([True, "paint"], "method"),
        ([{"attribute_strength": "hair:11"}], "attribute_strength"),
        ([{"attribute_dilation": {"wings": 2}}], "attribute_dilation"),
    ],
)
def test_invalid_settings_are_refused_with_the_field(client: TestClient, args: list, field: str) -> None:
    payload = {"prompt": "a woman with red hair", "alwayson_scripts": {"FreeCure": {"args": args}}}
    body = json.dumps(payload, allow_nan=True).encode()
    response = client.post("/sdapi/v1/txt2img", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["field"] == field
    assert field in response.json()["detail"]
    assert client.received == []  # the WebUI never saw it


@pytest.mark.parametrize(
    "args",
    [
        [True, {"method": "blend", "attributes": "hair+glasses"}],
        [{"enabled": True, "strength": 0.8}],
        [{"attribute_strength": {"hair": 1.2, "glasses": 0.6}, "attribute_dilation": "earrings:8"}],
        [True, "blend"],  # the WebUI fills the missing trailing args with the UI defaults
        [],
    ],
)
def test_valid_settings_pass_with_the_body_untouched(client: TestClient, args: list) -> None:
    payload = {"prompt": "a woman, " * 2000, "alwayson_scripts": {"freecure": {"args": args}}}
    body = json.dumps(payload).encode()
    response = client.post("/sdapi/v1/txt2img", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200
    assert client.received == [body]


def test_full_positional_list_is_validated(client: TestClient) -> None:
    from freecure.webui.controls import ui_defaults

    args = ui_defaults()
    args[UI_FIELDS.index("mask_dilation")] = 500
    response = post(client, {"alwayson_scripts": {"FreeCure": {"args": args}}})
    assert response.status_code == 422
    assert response.json()["field"] == "mask_dilation"


def test_requests_without_freecure_and_other_routes_are_untouched(client: TestClient) -> None:
    assert post(client, {"prompt": "x", "alwayson_scripts": {"ADetailer": {"args": [True]}}}).status_code == 200
    assert post(client, {"alwayson_scripts": {"FreeCure": {"args": [{"method": "x"}]}}},
                path="/sdapi/v1/options").status_code == 200
    broken = client.post("/sdapi/v1/txt2img", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 200  # the WebUI's own validation answers malformed JSON


def test_schema_and_version_routes(client: TestClient) -> None:
    schema = client.get("/freecure/v1/schema").json()["settings"]
    assert list(schema["fields"]) == list(UI_FIELDS)
    assert schema["fields"]["method"]["choices"] == ["fasa", "blend"]
    assert client.get("/freecure/v1/version").json() == {"version": freecure.__version__}
