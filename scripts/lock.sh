#!/usr/bin/env bash
# Refreshes requirements/lock.txt, the exact version of every Python dependency that scripts/setup.sh installs
# (without resolving anything at set-up time). Run after changing a dependency in pyproject.toml:
#   bash scripts/lock.sh            # then commit pyproject.toml and requirements/lock.txt together
# torch itself is left out of the lock (set-up installs the CPU build, torch==2.13.0, first) but its own
# dependencies are in it: the resolution sees torch's CPU wheel, found in the folders pip's find-links names
# (or TORCH_FIND_LINKS), so no CUDA packages enter the lock. moshi is not in the lock either: set-up installs it
# with --no-deps (its metadata caps torch below 2.13); the imports it needs are the `moshi` extra.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python3 -m pip install -q "uv==0.13.9"
find_links=${TORCH_FIND_LINKS:-$(python3 -m pip config get global.find-links 2>/dev/null || true)}
overrides=$(mktemp)
trap 'rm -f "$overrides"' EXIT
echo "torch==2.13.0" >"$overrides"
args=()
for dir in $find_links; do args+=(--find-links "$dir"); done
cd "$root"
python3 -m uv pip compile -q pyproject.toml --extra dev --extra moshi \
  --python-version 3.11 --python-platform x86_64-manylinux_2_31 \
  --override "$overrides" --no-emit-package torch "${args[@]}" \
  --no-header --annotation-style line -o requirements/lock.txt
grep -q '^nvidia-' requirements/lock.txt && { echo "lock: a CUDA package entered the lock (torch's CPU wheel not found)" >&2; exit 1; }
echo "lock: requirements/lock.txt ($(grep -c '==' requirements/lock.txt) packages)"
