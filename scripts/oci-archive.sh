#!/usr/bin/env bash
# Turn a root-filesystem directory into an OCI archive that containerd imports without a registry:
#
#   scripts/oci-archive.sh DIR REF OUT.tar [CMD...]
#   ctr -n k8s.io images import OUT.tar        # then pods use REF with imagePullPolicy: Never/IfNotPresent
#
# CMD... becomes the image's entrypoint (exec form); optional environment: OCI_USER (the image's user, e.g.
# 10001) and OCI_ENV (space-separated NAME=VALUE pairs for the image's environment).
# REF is normalised the way the kubelet normalises a pod's image (duplex:0.1.0 -> docker.io/library/duplex:0.1.0),
# so the imported name is exactly what a pod spec's `image: duplex:0.1.0` looks up.
# podman imports and saves here (it cannot run containers on this machine); it works in a private, throwaway
# storage so nothing stays behind in /var/lib/containers.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  echo "usage: oci-archive.sh DIR REF OUT.tar [CMD...]" >&2
  exit 2
fi
dir=$1
ref=$2
out=$3
shift 3
[[ -d "$dir" ]] || { echo "oci-archive: DIR '$dir' is not a directory" >&2; exit 2; }

# kubelet/containerd normalisation: no registry -> docker.io, no namespace on docker.io -> library/
name=${ref%%@*}
first=${name%%/*}
if [[ "$name" != */* ]]; then
  ref="docker.io/library/$ref"
elif [[ "$first" != *.* && "$first" != *:* && "$first" != localhost ]]; then
  ref="docker.io/$ref"
fi

changes=()
if [[ $# -gt 0 ]]; then
  entrypoint=$(python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@")
  changes+=(--change "ENTRYPOINT $entrypoint" --change 'CMD []')
fi
[[ -n "${OCI_USER:-}" ]] && changes+=(--change "USER $OCI_USER")
for kv in ${OCI_ENV:-}; do changes+=(--change "ENV $kv"); done

store=$(mktemp -d "${TMPDIR:-/tmp}/oci-archive.XXXXXX")
podman_() { podman --root "$store/root" --runroot "$store/run" --storage-driver vfs "$@"; }
cleanup() {
  podman_ rmi -a -f >/dev/null 2>&1 || true
  rm -rf "$store"
}
trap cleanup EXIT

# numeric owners, every file (the layer must carry root:root and the pod user's ids as they are)
tar --numeric-owner --xattrs -C "$dir" -cf - . | podman_ import -q "${changes[@]}" - "$ref" >/dev/null
rm -f "$out"
podman_ save -q --format oci-archive -o "$out" "$ref"
echo "oci-archive: $ref -> $out"
