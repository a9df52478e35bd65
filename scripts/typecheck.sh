#!/usr/bin/env bash
# mypy --strict over the duplex.* packages. The repository's folders are mapped to duplex.* by pyproject's
# package-dir (and `operator/` would shadow the standard library if put on the path), so mypy checks a
# staging tree of symlinks laid out as the installed package.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/duplex"
for f in "$root"/duplex/*; do ln -s "$f" "$stage/duplex/$(basename "$f")"; done
for comp in model serving operator loadtest; do
  [ -d "$root/$comp" ] && ln -s "$root/$comp" "$stage/duplex/$comp"
done
cd "$stage"
packages=()
for comp in model serving operator loadtest; do
  [ -f "duplex/$comp/__init__.py" ] && packages+=(-p "duplex.$comp")
done
exec mypy --config-file "$root/pyproject.toml" "${packages[@]}" -m duplex.cli
