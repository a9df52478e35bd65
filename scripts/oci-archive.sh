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
# Uses podman (Debian package) with a throwaway storage under a temp dir, so nothing is left in
# /var/lib/containers. podman can import and save on these machines, not run containers.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 DIR REF OUT.tar [CMD...]" >&2
  exit 2
fi
dir=$1 ref=$2 out=$3
shift 3
[[ -d "$dir" ]] || { echo "oci-archive: DIR $dir is not a directory" >&2; exit 2; }

store=$(mktemp -d "${TMPDIR:-/tmp}/oci-archive.XXXXXX")
trap 'rm -rf "$store"' EXIT
# file locks, the CNI network backend and every state dir inside $store: the defaults would leave
# /dev/shm/libpod_lock, /run/libpod and /run/containers behind (only podman's blob-info cache in
# /var/lib/containers/cache remains)
printf '[engine]\nlock_type = "file"\n[network]\nnetwork_backend = "cni"\n' >"$store/containers.conf"
export CONTAINERS_CONF="$store/containers.conf"
pm=(podman --root "$store/root" --runroot "$store/run" --tmpdir "$store/tmp" --network-config-dir "$store/net"
    --storage-driver vfs --cgroup-manager cgroupfs --events-backend none)

changes=()
if [[ $# -gt 0 ]]; then
  cmd=$(python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@")
  changes+=(--change "CMD $cmd")
fi
for kv in ${OCI_ENV:-}; do changes+=(--change "ENV $kv"); done
[[ -n "${OCI_WORKDIR:-}" ]] && changes+=(--change "WORKDIR $OCI_WORKDIR")

tar -C "$dir" --numeric-owner -cf - . | "${pm[@]}" import -q "${changes[@]}" - "$ref" >/dev/null
mkdir -p "$(dirname "$out")"
rm -f "$out.partial"
"${pm[@]}" save -q --format oci-archive -o "$out.partial" "$ref" >/dev/null
mv "$out.partial" "$out"
echo "oci-archive: $ref -> $out"
