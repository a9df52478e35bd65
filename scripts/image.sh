#!/usr/bin/env bash
# Build the duplex container image offline: a debootstrap'ed Debian bookworm root filesystem with the project
# installed by scripts/image-install.sh, packed as an OCI archive for containerd. Idempotent and cached under
# ${DUPLEX_CACHE:-~/.cache/duplex}/image-KEY (KEY: pyproject.toml + the image scripts + the project's sources).
#
#   sudo bash scripts/image.sh [--json]
#   ctr -n k8s.io images import ~/.cache/duplex/image-KEY/duplex-VERSION.oci.tar
#
# Needs root and the Debian packages debootstrap and podman. The stages are in scripts/image.py.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
exec "${PYTHON:-python3}" "$root/scripts/image.py" "$@"
