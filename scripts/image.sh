#!/usr/bin/env bash
# Build the duplex container image offline: a debootstrap'ed Debian bookworm with the runtime dependencies (the
# cached base layer) and the project on top (a thin layer), both installed by scripts/image-install.sh and written
# as an OCI archive for containerd by scripts/oci_archive.py. Idempotent and cached under
# ${DUPLEX_CACHE:-~/.cache/duplex}: image-base-HASH (the dependencies' inputs) and image-KEY (+ the sources).
#
#   sudo bash scripts/image.sh [--json]
#   ctr -n k8s.io images import ~/.cache/duplex/image-KEY/duplex-VERSION.oci.tar
#
# Needs root (chroot, overlay mounts) and the Debian package debootstrap. The stages are in scripts/image.py.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
exec "${PYTHON:-python3}" "$root/scripts/image.py" "$@"
