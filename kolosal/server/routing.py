"""Every route declared once, as data: a ``Route`` row in its family's ``routes`` module
(``server/<family>/routes.py``), collected in ``endpoints.ROUTES``. The app registers the
rows, auth reads which are public and which need an admin key, the request records read
which are quiet, and ``/openapi.json`` describes them; no route path is written anywhere
else.

Paths are OpenAPI templates (``/v1/models/{model_id}``); the first is the route's own, the
others aliases. A path parameter may hold ``/`` only when the route says so (``slashes``).
"""
from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from pydantic import BaseModel
from quart import Quart
from quart.typing import ResponseReturnValue

Handler = Callable[..., Awaitable[ResponseReturnValue]]
Method = Literal["get", "post", "delete"]
PARAMETER = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True, slots=True)
class Route:
    method: Method
    paths: tuple[str, ...]               # OpenAPI templates: the route's own, then its aliases
    handler: Handler
    summary: str
    request: type[BaseModel] | None = None   # the JSON body, validated by this model
    response: type | None = None         # the success body's TypedDict (or list of one); None: not JSON
    status: int = 200
    errors: tuple[int, ...] = ()         # statuses beyond what the method, auth and body imply
    media: str = "application/json"      # of a success body without a TypedDict
    stream: bool = False                 # also answers text/event-stream when the body asks
    public: bool = False                 # no API key needed
    admin: bool = False                  # an admin key needed, when admin keys are configured
    quiet: bool = False                  # successful calls are logged at DEBUG (probes, scrapes)
    also: Mapping[int, type] = field(default_factory=lambda: MappingProxyType({}))  # status -> body
    slashes: frozenset[str] = frozenset()  # path parameters that may hold "/"
    query: tuple[str, ...] = ()          # optional query parameters (strings)

    def rules(self) -> list[str]:
        """The paths as Quart rules: ``{name}`` -> ``<name>`` (``<path:name>`` with slashes)."""
        def rule(match: re.Match[str]) -> str:
            name = match.group(1)
            return f"<path:{name}>" if name in self.slashes else f"<{name}>"
        return [PARAMETER.sub(rule, path) for path in self.paths]


def register(app: Quart, routes: Iterable[Route]) -> None:
    """Each route under its handler's name, once per path."""
    for route in routes:
        for rule in route.rules():
            app.add_url_rule(rule, route.handler.__name__, route.handler, methods=[route.method.upper()])


def public_paths(routes: Iterable[Route]) -> frozenset[str]:
    """Paths answered without an API key (none of them has a parameter)."""
    return frozenset(path for route in routes if route.public for path in route.paths)


def quiet_rules(routes: Iterable[Route]) -> frozenset[str]:
    """Quart rules whose successful calls are logged at DEBUG."""
    return frozenset(rule for route in routes if route.quiet for rule in route.rules())


def admin_prefixes(routes: Iterable[Route]) -> dict[str, tuple[str, ...]]:
    """Method -> the path prefixes (up to the first parameter) of routes needing an admin key."""
    prefixes: dict[str, set[str]] = {}
    for route in routes:
        if route.admin:
            prefixes.setdefault(route.method.upper(), set()).update(
                path.split("{")[0] for path in route.paths)
    return {method: tuple(sorted(found)) for method, found in prefixes.items()}

