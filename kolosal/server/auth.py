"""API keys and admin keys: which requests need which key (the routes declared ``public``
need none, those declared ``admin`` an admin key when admin keys are configured), compared
in constant time."""
from __future__ import annotations

import hmac

from quart import Quart, request

from ..config import ServerSettings
from .endpoints import ROUTES
from .errors import APIError
from .routing import admin_prefixes, public_paths

PUBLIC_PATHS = public_paths(ROUTES)
ADMIN_PREFIXES = admin_prefixes(ROUTES)   # method -> path prefixes


def supplied_key() -> bytes:
    """The key from ``Authorization: Bearer`` (preferred) or ``X-API-Key``."""
    authorization = request.headers.get("Authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip().encode()
    return request.headers.get("X-API-Key", "").encode()


def key_matches(supplied: bytes, keys: list[bytes]) -> bool:
    """Constant time: every key is compared, no early exit on a match."""
    valid = False
    for key in keys:
        valid |= hmac.compare_digest(supplied, key)
    return valid


def is_management(method: str, path: str) -> bool:
    """Loading and deleting engines (reading their status stays an API-key call)."""
    return path.startswith(ADMIN_PREFIXES.get(method, ()))


def install(app: Quart, settings: ServerSettings) -> None:
    """Refuse requests without a valid key (when keys are configured) before routing."""
    api_keys = [key.encode() for key in settings.api_keys if key]
    admin_keys = [key.encode() for key in settings.admin_keys if key]

    @app.before_request
    async def check_keys() -> None:
        if request.method == "OPTIONS" or request.path in PUBLIC_PATHS:
            return
        supplied = supplied_key()
        if admin_keys and is_management(request.method, request.path):
            if key_matches(supplied, admin_keys):
                return
            if key_matches(supplied, api_keys):
                raise APIError(403, "Managing engines requires an admin key.",
                               type="permission_error", code="admin_key_required")
            raise APIError(401, "Incorrect or missing admin key. Send it as 'Authorization: Bearer <key>'.",
                           code="invalid_api_key")
        if not api_keys or key_matches(supplied, api_keys) or key_matches(supplied, admin_keys):
            return
        raise APIError(401, "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.",
                       code="invalid_api_key")
