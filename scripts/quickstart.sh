#!/usr/bin/env bash
# Set everything up, then serve the default model on http://localhost:8080.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/kolosal-server "$@"
