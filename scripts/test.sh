#!/usr/bin/env bash
# Set everything up (idempotent), then run the whole test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# llama-server from the same source and flags: the reference that the parity tests compare
# our logprobs and prompt tokens with (built once, cached beside libllama).
.venv/bin/python build_llama.py --with-server ${KOLOSAL_BUILD_FLAGS:-}
# The chat-page test drives a real headless browser: Debian's chromium (playwright's own
# browser download is never used).
if ! command -v chromium >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "[test] installing chromium with apt-get"
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "[test] error: the chat-page test needs chromium (apt-get install chromium)" >&2
    exit 1
  fi
fi
# The deployment test puts Debian's haproxy in front of two replicas (it skips itself
# where haproxy cannot be installed).
if ! command -v haproxy >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "[test] installing haproxy with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
  else
    echo "[test] note: haproxy is missing, the HAProxy deployment test will be skipped" >&2
  fi
fi
exec .venv/bin/python -m pytest "$@"
