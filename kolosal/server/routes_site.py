"""GET / (the built-in chat page), GET /openapi.json and GET /metrics."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, Response, current_app

from .http import json_response
from .observe import Metrics
from .openapi import openapi_document

blueprint = Blueprint("site", __name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"


@functools.cache
def chat_page() -> bytes:
    return (STATIC_DIR / "index.html").read_bytes()


@functools.cache
def openapi() -> dict[str, Any]:
    return openapi_document()


@blueprint.get("/")
async def index() -> Response:
    """The built-in chat page: static HTML + JS, no build step, no CDN."""
    return Response(chat_page(), content_type="text/html; charset=utf-8")


@blueprint.get("/openapi.json")
async def openapi_json() -> Response:
    return json_response(openapi())


@blueprint.get("/metrics")
async def prometheus_metrics() -> Response:
    metrics: Metrics = current_app.config["METRICS"]
    return Response(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)
