"""The request's caller, as ``auth`` identified it: what its key may use, its share in the
engines' fair admission, and its limits.

Policy:
- A key restricted to some engines does not see the others: they are 404
  ``model_not_found`` for it and absent from its model list (``may_use``).
- Its requests are admitted fairly between keys by weight within priority classes
  (``tenancy``; a request's own ``priority`` overrides the key's default).
- A key's limits are checked when its generation is submitted (``admit``): 429
  ``rate_limit_exceeded`` with Retry-After (and ``retry-after-ms``) when over one.
"""
from __future__ import annotations

import math

from quart import current_app, g

from ..engine import Tenancy
from ..engine.request import ANONYMOUS
from ..tenants.keys import KeySpec
from ..tenants.limits import Limiter, RateLimitedError, Ticket
from .errors import APIError


def caller() -> KeySpec | None:
    """The request's key, None for an anonymous caller."""
    spec: KeySpec | None = g.get("key")
    return spec


def may_use(engine_id: str) -> bool:
    spec = caller()
    return spec is None or spec.may_use(engine_id)


def tenancy(priority: int | None = None) -> Tenancy:
    """Whose request this is for the engines' fair admission: the key's name, weight and
    default priority (the request's own ``priority`` first)."""
    spec = caller()
    base = ANONYMOUS if spec is None else spec.tenancy
    return base if priority is None else Tenancy(base.tenant, base.weight, priority)


def default_lora() -> tuple[tuple[int, float], ...] | None:
    """The key's LoRA adapter set for a request that names none (None: the engine's)."""
    spec = caller()
    return None if spec is None else spec.lora


def admit(tokens: int) -> Ticket | None:
    """Count a request that may use ``tokens`` tokens against its key's limits, or refuse
    it with a 429. None when the key has no limits."""
    spec = caller()
    if spec is None or not spec.limited:
        return None
    try:
        limiter: Limiter = current_app.config["LIMITER"]
        return limiter.admit(spec, tokens)
    except RateLimitedError as error:
        wait = max(error.retry_after_s, 0.001)
        headers = {**error.headers, "Retry-After": str(max(1, math.ceil(wait))),
                   "retry-after-ms": str(math.ceil(wait * 1000))}
        raise APIError(429, str(error), type="tokens" if error.limit == "tokens" else "requests",
                       code="rate_limit_exceeded", headers=headers) from None
