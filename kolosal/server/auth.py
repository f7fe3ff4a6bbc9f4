"""Who is calling and what they may do: each request's API key is identified against the
key ring (``--api-key``, ``--admin-key``, ``--keys-file``; kolosal/tenants/keys.py) before
routing; the rest of the server asks ``caller`` about it.

Policy:
- Routes declared ``public`` need no key. Routes declared ``admin`` need an admin key when
  admin keys are configured (a known non-admin key gets 403, anything else 401). Every
  other route needs a known key when any non-admin key is configured; otherwise it is open
  and a caller without a key is anonymous (no limits, every engine, default fair share).
- What the key may use, its limits and its fair share: ``caller.py``. Every answer to a
  key with request or token limits carries OpenAI's ``x-ratelimit-*`` headers.
- SIGHUP re-reads the keys file (``reload_keys``); a bad file keeps the old keys. Keys are
  compared as SHA-256 digests in constant time and never logged: logs and metrics name them.
"""
from __future__ import annotations

import logging

from quart import Quart, Response, g, request

from ..config import ServerSettings
from ..tenants.keys import KeyRing, flag_keys, load_keys_file
from ..tenants.limits import Limiter
from .caller import caller
from .endpoints import ROUTES
from .errors import APIError
from .routing import admin_prefixes, public_paths

logger = logging.getLogger(__name__)
PUBLIC_PATHS = public_paths(ROUTES)
ADMIN_PREFIXES = admin_prefixes(ROUTES)   # method -> path prefixes


def supplied_key() -> bytes:
    """The key from ``Authorization: Bearer`` (preferred) or ``X-API-Key``."""
    authorization = request.headers.get("Authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip().encode()
    return request.headers.get("X-API-Key", "").encode()


def is_management(method: str, path: str) -> bool:
    """Loading and deleting engines (reading their status stays an API-key call)."""
    return path.startswith(ADMIN_PREFIXES.get(method, ()))


def key_ring(settings: ServerSettings) -> KeyRing:
    """The flags' keys and the keys file's (KeysFileError when the file is unusable)."""
    specs = flag_keys(settings.api_keys, settings.admin_keys)
    if settings.keys_file:
        specs += load_keys_file(settings.keys_file)
    return KeyRing(specs)


def reload_keys(app: Quart, settings: ServerSettings) -> None:
    """SIGHUP: the keys file again; connections and limits' windows carry on."""
    try:
        app.config["KEYRING"] = key_ring(settings)
    except ValueError as error:
        logger.error("keys not reloaded, the old keys stay: %s", error)
        return
    logger.info("keys reloaded: %d keys", len(app.config["KEYRING"].specs))


def install(app: Quart, settings: ServerSettings) -> None:
    """Identify the caller before routing; add the rate-limit headers after."""
    app.config["KEYRING"] = key_ring(settings)
    app.config["LIMITER"] = Limiter()

    @app.before_request
    async def identify() -> None:
        g.key = None
        if request.method == "OPTIONS" or request.path in PUBLIC_PATHS:
            return
        ring: KeyRing = app.config["KEYRING"]
        spec = ring.identify(supplied_key()) if ring else None
        if ring.has_admin_keys and is_management(request.method, request.path):
            if spec is None:
                raise APIError(401, "Incorrect or missing admin key. Send it as 'Authorization: Bearer "
                               "<key>'.", code="invalid_api_key")
            if not spec.admin:
                raise APIError(403, "Managing engines requires an admin key.", type="permission_error",
                               code="admin_key_required")
        elif spec is None and ring.requires_key:
            raise APIError(401, "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.",
                           code="invalid_api_key")
        g.key = spec
        if spec is not None:
            g.record.key = spec.name

    @app.after_request
    async def rate_limit_headers(response: Response) -> Response:
        spec = caller()
        if spec is not None and (spec.rpm is not None or spec.tpm is not None):
            response.headers.update(app.config["LIMITER"].headers(spec))
        return response
