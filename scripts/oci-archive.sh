#!/usr/bin/env bash
# Turn a root-filesystem directory into an OCI archive that containerd imports
# (`ctr -n k8s.io images import OUT.tar`); images on the test node are imported, never pulled.
#
#   bash scripts/oci-archive.sh DIR REF OUT.tar [CMD...]
#     DIR   root filesystem (becomes the image's single layer, owners and modes kept)
#     REF   image reference written into the archive, e.g. registry.k8s.io/pause:3.6
#     CMD   the image's default command (exec form), e.g. /pause
#   Environment: OCI_ENV="K=V K2=V2" (image Env), OCI_WORKDIR=/path (image WorkingDir).
#
# The archive is written by scripts/oci_archive.py, the one OCI writer (the duplex image's two layers use it too).
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 DIR REF OUT.tar [CMD...]" >&2
  exit 2
fi
exec "${PYTHON:-python3}" "$(dirname "$0")/oci_archive.py" "$@"
