"""The app's own hooks without a model (an empty registry, Quart's test client): keys and
admin keys, public paths, request ids, CORS, error shapes, the site routes."""
from __future__ import annotations

from typing import Any

import pytest
from quart import Quart
from werkzeug.datastructures import Headers

from kolosal.config import ServerSettings
from kolosal.engine import EngineRegistry
from kolosal.server.app import create_app
from kolosal.server.auth import is_management

API_KEY, ADMIN_KEY = "sk-api", "sk-admin"


@pytest.fixture
def app() -> Quart:
    settings = ServerSettings(api_keys=(API_KEY,), admin_keys=(ADMIN_KEY,), cors_origins=("https://ui.example",))
    return create_app(EngineRegistry(), settings)


async def call(app: Quart, method: str, path: str, key: str | None = None,
               **headers: str) -> tuple[int, Headers, Any]:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    response = await app.test_client().open(path, method=method, headers=headers, json=None)
    body = await response.get_data()
    is_json = response.mimetype == "application/json"
    return response.status_code, response.headers, (await response.get_json()) if is_json else body


def test_management_routes() -> None:
    assert is_management("POST", "/engines") and is_management("DELETE", "/v1/engines/x")
    assert not is_management("GET", "/engines/x/status") and not is_management("POST", "/v1/completions")
    assert is_management("POST", "/lora-adapters") and not is_management("GET", "/lora-adapters")


async def test_api_keys_guard_everything_but_the_public_paths(app: Quart) -> None:
    status, _, body = await call(app, "GET", "/v1/models")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert (await call(app, "GET", "/v1/models", "wrong"))[0] == 401
    for key in (API_KEY, ADMIN_KEY):  # admin keys also work as API keys
        status, _, body = await call(app, "GET", "/v1/models", key)
        assert status == 200 and body == {"object": "list", "data": []}
    for path in ("/", "/health", "/v1/health", "/openapi.json"):
        assert (await call(app, "GET", path))[0] == 200, path
    assert (await call(app, "GET", "/metrics"))[0] == 401
    status, headers, text = await call(app, "GET", "/metrics", API_KEY)
    assert status == 200 and headers["Content-Type"].startswith("text/plain") and b"kolosal_" in text


async def test_managing_engines_needs_an_admin_key(app: Quart) -> None:
    status, _, body = await call(app, "POST", "/engines", API_KEY)
    assert status == 403 and body["error"]["code"] == "admin_key_required"
    assert (await call(app, "DELETE", "/engines/x", "wrong"))[0] == 401
    status, _, body = await call(app, "DELETE", "/engines/x", ADMIN_KEY)  # past auth: no such engine
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert (await call(app, "GET", "/engines/x/status", API_KEY))[0] == 404  # reading is an API call
    status, _, body = await call(app, "POST", "/lora-adapters", API_KEY)  # re-scaling adapters too
    assert status == 403 and body["error"]["code"] == "admin_key_required"
    assert (await call(app, "GET", "/lora-adapters", API_KEY))[0] == 404  # no engine to list


async def test_request_ids_errors_and_cors(app: Quart) -> None:
    status, headers, body = await call(app, "GET", "/no/such/route", API_KEY, **{"X-Request-Id": "abc-1"})
    assert status == 404 and headers["X-Request-Id"] == "abc-1"
    assert body["error"]["message"] == "Unknown route: GET /no/such/route"
    _, headers, _ = await call(app, "GET", "/health")
    assert headers["X-Request-Id"].startswith("req_") and "Access-Control-Allow-Origin" not in headers
    _, headers, _ = await call(app, "GET", "/health", Origin="https://ui.example")
    assert headers["Access-Control-Allow-Origin"] == "https://ui.example" and headers["Vary"] == "Origin"
    _, headers, _ = await call(app, "GET", "/health", Origin="https://other.example")
    assert "Access-Control-Allow-Origin" not in headers


async def test_cors_preflight_answers_the_headers_it_is_asked_for(app: Quart) -> None:
    """Issue 27: the npm openai SDK in a browser sends its own x-stainless-* headers; a fixed
    Access-Control-Allow-Headers list made every call fail its preflight."""
    asked = "authorization, content-type, x-stainless-os, x-stainless-lang, x-stainless-retry-count"
    status, headers, _ = await call(app, "OPTIONS", "/v1/chat/completions", Origin="https://ui.example",
                                    **{"Access-Control-Request-Method": "POST",
                                       "Access-Control-Request-Headers": asked})
    assert status in (200, 204)
    assert headers["Access-Control-Allow-Origin"] == "https://ui.example"
    assert headers["Access-Control-Allow-Headers"] == asked
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in headers  # not configured
    _, headers, _ = await call(app, "OPTIONS", "/v1/chat/completions", Origin="https://ui.example",
                               **{"Access-Control-Request-Headers": "x-a; y=1"})  # not a header list
    assert headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type, X-API-Key, X-Request-Id"
    _, headers, _ = await call(app, "OPTIONS", "/v1/chat/completions", Origin="https://other.example",
                               **{"Access-Control-Request-Headers": asked})
    assert "Access-Control-Allow-Headers" not in headers
    credentialed = create_app(EngineRegistry(), ServerSettings(cors_origins=("*",), cors_credentials=True))
    _, headers, _ = await call(credentialed, "OPTIONS", "/v1/models", Origin="https://any.example")
    assert headers["Access-Control-Allow-Origin"] == "https://any.example"  # echoed, never *
    assert headers["Access-Control-Allow-Credentials"] == "true"


async def test_site_routes(app: Quart) -> None:
    status, headers, page = await call(app, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"<html" in page.lower()
    status, _, document = await call(app, "GET", "/openapi.json")
    assert status == 200 and document["openapi"].startswith("3.")
    assert "EngineCreateRequest" in document["components"]["schemas"]
