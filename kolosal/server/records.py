"""One RequestRecord per request (kolosal/server/observe.py): made before routing, so a
refused request is counted and logged too, and finished after the response. A stream
finishes its own record when it ends, not when its headers go out.

Balancers probe every second and Prometheus scrapes every few: the routes declared
``quiet`` log their successful calls at DEBUG, so they do not drown the requests (a
failing probe stays at INFO)."""
from __future__ import annotations

from quart import Quart, Response, current_app, g, request

from .observe import UNMATCHED_ROUTE, Metrics, RequestRecord, new_request_id


def install(app: Quart, metrics: Metrics, quiet_rules: frozenset[str]) -> None:
    @app.before_request
    async def start_record() -> None:
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
        g.record = RequestRecord(metrics, new_request_id(request.headers.get("X-Request-Id")),
                                 request.method, request.path, route, quiet=route in quiet_rules)

    @app.after_request
    async def finish_record(response: Response) -> Response:
        record: RequestRecord | None = g.get("record")
        if record is not None:
            response.headers["X-Request-Id"] = record.request_id
            if response.mimetype != "text/event-stream":  # streams finish when they end
                record.finish(response.status_code)
        return response


def log_prompt(text: str) -> None:
    """Prompts reach the access log only when the operator asked (--log-prompts)."""
    if current_app.config["SETTINGS"].log_prompts:
        g.record.prompt = text if g.record.prompt is None else f"{g.record.prompt}\n{text}"
