#!/usr/bin/env bash
# The whole suite: lint, type-check, every test (unit, integration against real services, end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy --strict"
bash scripts/typecheck.sh
echo "== pytest"
python3 -m pytest -q -p no:cacheprovider --durations=30 "$@"
