#!/usr/bin/env bash
# The test command (README, CI): install what is missing, then run the whole suite against
# real services it starts itself (an embedded Redis, Label Studio, FAISS, the real images in
# tests/data): no Redis server, PostgreSQL or data outside the clone needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
