"""The built-in chat page, the OpenAPI document and the Prometheus scrape. The document
and the metrics are the app's (``create_app`` puts them in its config)."""
from __future__ import annotations

import functools
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Response, current_app

from ..http import json_response
from ..observe import Metrics
from ..routing import Route

STATIC_DIR = Path(__file__).resolve().parent / "static"


@functools.cache
def chat_page() -> bytes:
    return (STATIC_DIR / "index.html").read_bytes()


async def index() -> Response:
    """The built-in chat page: static HTML + JS, no build step, no CDN."""
    return Response(chat_page(), content_type="text/html; charset=utf-8")


async def openapi_json() -> Response:
    return json_response(current_app.config["OPENAPI"])


async def prometheus_metrics() -> Response:
    metrics: Metrics = current_app.config["METRICS"]
    return Response(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)


ROUTES = (
    Route("get", ("/metrics",), prometheus_metrics, "Prometheus metrics",
          media=CONTENT_TYPE_LATEST.split(";")[0], quiet=True),
    Route("get", ("/openapi.json",), openapi_json, "This document", media="application/json",
          public=True),
    Route("get", ("/",), index, "The built-in chat page", media="text/html", public=True),
)
