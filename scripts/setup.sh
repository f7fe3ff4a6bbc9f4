#!/usr/bin/env bash
# Idempotent setup: Python venv + dependencies, libllama from pinned source, default model.
# Re-running is fast: pip is quiet when satisfied, and build_llama.py answers from its cache.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${KOLOSAL_VENV:-.venv}

if ! command -v cmake >/dev/null || ! command -v c++ >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing cmake and a C/C++ toolchain with apt-get"
    apt-get update -qq && apt-get install -y -qq cmake build-essential >/dev/null
  else
    echo "[setup] error: cmake and a C++ compiler are required (Debian/Ubuntu: apt-get install cmake build-essential)" >&2
    exit 1
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "[setup] installing Python dependencies"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q -e ".[dev]"

echo "[setup] building libllama (cached after the first run)"
"$VENV/bin/python" build_llama.py ${KOLOSAL_BUILD_FLAGS:-}

echo "[setup] compiling bindings and assembling the default model"
"$VENV/bin/python" -c "from kolosal.llama import load; load()"
"$VENV/bin/python" -m kolosal.default_model
