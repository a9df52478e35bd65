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
# 2 workers (pytest-xdist; tests/xdist_groups.py decides what runs together), then the end-to-end tests in one
# process on their own: the single-node cluster's pods get the cores to themselves. With arguments, one pytest
# run of them on 2 workers (`bash scripts/test.sh -n 0 tests/serving -x`: one process, one folder).
# OpenMP's threads sleep when idle instead of spinning: with two workers (and the servers they start) sharing the
# cores, spinning threads take the cores from the others (a torch evaluation beside another torch process took
# 57 s spinning and 10 s sleeping on 2 cores).
export OMP_WAIT_POLICY=PASSIVE
PYTEST=(python3 -m pytest -q -p no:cacheprovider --durations=30)
if [ $# -gt 0 ]; then
  "${PYTEST[@]}" -n 2 --dist loadgroup --no-loadscope-reorder "$@"
else
  "${PYTEST[@]}" -n 2 --dist loadgroup --no-loadscope-reorder --ignore=tests/e2e
  echo "== pytest: end-to-end, alone"
  "${PYTEST[@]}" tests/e2e
fi
