"""HTTP layer: never sees a slot or a cffi object, only AsyncEngine and its events."""
from .app import create_app

__all__ = ["create_app"]
