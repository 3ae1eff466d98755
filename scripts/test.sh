#!/usr/bin/env bash
# The test command (README, CI): install what is missing, then run the whole suite against
# real services (Redis, Label Studio, FAISS, real images).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
