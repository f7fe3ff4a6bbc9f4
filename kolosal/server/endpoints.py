"""The one registry of routes: every endpoint family's ``ROUTES``, in the order the app
registers them. A new family adds one line here; a new endpoint of a family, none."""
from __future__ import annotations

from .completions import routes as completions
from .embeddings import routes as embeddings
from .engines import routes as engines
from .lora import routes as lora
from .models import routes as models
from .responses import routes as responses
from .routing import Route
from .site import routes as site

ROUTES: tuple[Route, ...] = (
    *completions.ROUTES,
    *responses.ROUTES,
    *embeddings.ROUTES,
    *models.ROUTES,
    *engines.ROUTES,
    *lora.ROUTES,
    *site.ROUTES,
)
