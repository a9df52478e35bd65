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
# 2 workers (pytest-xdist); tests/xdist_groups.py decides what runs together. `bash scripts/test.sh -n 0` runs
# everything in one process (for debugging); further arguments go to pytest (`-n 0 tests/serving -x`).
python3 -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup --no-loadscope-reorder --durations=30 "$@"
