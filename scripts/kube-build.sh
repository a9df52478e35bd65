#!/usr/bin/env bash
# Build the test control plane (kube-apiserver + kube-controller-manager) from Debian's `kubernetes`
# source package, once, into a cache outside the repository. Idempotent: exits at once when the
# binaries are already there. Needs root (apt) the first time.
#
#   apt packages: golang-go rsync etcd-server golang-github-modern-go-reflect2-dev dpkg-dev
#   output:       ${DUPLEX_CACHE:-$HOME/.cache/duplex}/kube-1.20.2/bin/{kube-apiserver,kube-controller-manager}
#
# More binaries from the same tree (e.g. for a real node, see docs/e2e.md):
#   KUBE_BUILD_WHAT="cmd/kubelet cmd/kube-scheduler cmd/kube-proxy" bash scripts/kube-build.sh
# The unpacked source + Go build output stay in the cache (~2.2 GB) so such later builds are incremental.
#
# Why the reflect2 swap: the vendored github.com/modern-go/reflect2 v1.0.1 crashes under Go >= 1.18
# (SIGSEGV in map iteration); Debian ships the fixed 1.0.2.
set -euo pipefail

CACHE="${DUPLEX_CACHE:-$HOME/.cache/duplex}"
KVER="1.20.2"
OUT="$CACHE/kube-$KVER"
BIN="$OUT/bin"
WHAT="${KUBE_BUILD_WHAT:-cmd/kube-apiserver cmd/kube-controller-manager}"

have_all() {
  for w in $WHAT; do
    [[ -x "$BIN/$(basename "$w")" ]] || return 1
  done
}

if have_all; then
  echo "kube-build: binaries present in $BIN"
  exit 0
fi

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9
if have_all; then  # another process built them while we waited for the lock
  echo "kube-build: binaries present in $BIN"
  exit 0
fi

SUDO=""
if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi

# 1. A deb-src entry for the same mirror and suite the machine already uses for binaries. The mirror is
#    read from the existing apt sources at run time, never written into the repository.
SRC_LIST=/etc/apt/sources.list.d/duplex-kube-src.sources
if ! apt-get source --print-uris kubernetes >/dev/null 2>&1; then
  mirror=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    # deb822: first stanza whose Suites has plain "bookworm" -> its URIs
    mirror=$(awk 'BEGIN{RS=""} /Suites:[^\n]*bookworm( |\n|$)/ && /Types:[^\n]*deb/ {
               match($0, /URIs: *[^ \n]+/); print substr($0, RSTART+6, RLENGTH-6); exit }' "$f" | tr -d ' ')
    [[ -n "$mirror" ]] && break
  done
  if [[ -z "$mirror" && -f /etc/apt/sources.list ]]; then
    mirror=$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list)
  fi
  if [[ -z "$mirror" ]]; then
    echo "kube-build: cannot find a bookworm mirror in /etc/apt/sources*" >&2
    exit 1
  fi
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  printf 'Types: deb-src\nURIs: %s\nSuites: bookworm\nComponents: main\nSigned-By: %s\n' \
    "$mirror" "$keyring" | $SUDO tee "$SRC_LIST" >/dev/null
  $SUDO apt-get update -q
fi

# 2. Toolchain + etcd (the tests need etcd too) + the fixed reflect2.
need=()
for p in golang-go rsync etcd-server golang-github-modern-go-reflect2-dev dpkg-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}"
fi

# 3. Source, unpacked once.
SRC_PARENT="$OUT/src"
mkdir -p "$SRC_PARENT"
SRC=$(find "$SRC_PARENT" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -n1 || true)
if [[ -z "$SRC" ]]; then
  (cd "$SRC_PARENT" && apt-get source -q kubernetes)
  SRC=$(find "$SRC_PARENT" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -n1)
fi
echo "kube-build: source in $SRC"

# 4. Swap reflect2 for Debian's 1.0.2.
R2_SYS=/usr/share/gocode/src/github.com/modern-go/reflect2
R2_VEN="$SRC/vendor/github.com/modern-go/reflect2"
if [[ -d "$R2_SYS" && ! -f "$R2_VEN/.duplex-swapped" ]]; then
  rm -rf "$R2_VEN"
  mkdir -p "$R2_VEN"
  cp -r "$R2_SYS/." "$R2_VEN/"
  rm -rf "$R2_VEN"/*_test.go "$R2_VEN/test"* 2>/dev/null || true
  touch "$R2_VEN/.duplex-swapped"
fi

# 5. Build with a GOPATH layout inside the tree.
cd "$SRC"
mkdir -p .go/src/k8s.io
[[ -e .go/src/k8s.io/kubernetes ]] || ln -s ../../.. .go/src/k8s.io/kubernetes
export GOPATH="$SRC/.go" CGO_ENABLED=0
export KUBE_GIT_VERSION="v$KVER" KUBE_GIT_TREE_STATE=clean
cd .go/src/k8s.io/kubernetes
make WHAT="$WHAT"

mkdir -p "$BIN"
for w in $WHAT; do
  b=$(basename "$w")
  f=$(find "$SRC/_output" -type f -name "$b" -perm -u+x | head -n1)
  install -m 0755 "$f" "$BIN/$b"
done
echo "kube-build: built $(ls "$BIN") into $BIN"
