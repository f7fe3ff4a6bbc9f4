"""Where POST /engines may load a model (and its LoRA adapters) from: the path expanded and
resolved (symlinks too), and confined to --models-dir when one is configured."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

from quart import current_app

from ..errors import APIError, bad_request


def _resolve(raw: str, param: str) -> Path:
    """Expanded and resolved (symlinks too). A NUL byte or a symlink loop is the caller's
    error (400), never a 500."""
    if "\0" in raw:
        raise bad_request(f"{param} contains a NUL byte", param=param, code="invalid_model_path")
    try:
        return Path(os.path.expanduser(raw)).resolve()
    except (RuntimeError, OSError, ValueError) as error:  # RuntimeError: a symlink loop (< 3.13)
        raise bad_request(f"{param} cannot be resolved: {error}", param=param,
                          code="invalid_model_path") from None


def _within(path: Path, allowed: list[str]) -> bool:
    for directory in allowed:
        try:
            if path.is_relative_to(Path(directory).expanduser().resolve()):
                return True
        except (RuntimeError, OSError, ValueError):  # a models dir that cannot be resolved allows nothing
            continue
    return False


async def resolve_model_path(raw: str, param: str = "model_path") -> Path:
    """Expand and resolve (symlinks too, off the event loop); confine to --models-dir when
    one is configured. ``param``: the field the path came from (model_path, lora)."""
    allowed = current_app.config["SETTINGS"].models_dirs
    path = await asyncio.to_thread(_resolve, raw, param)
    if allowed and not await asyncio.to_thread(_within, path, allowed):
        raise APIError(403, f"{param} is outside the configured models directories",
                       type="permission_error", param=param, code="model_path_forbidden")
    return path
