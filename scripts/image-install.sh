#!/bin/sh
# The ONE recipe for what the duplex image contains. Both builds use it, so both images hold the same
# Debian packages, the same wheels and the same user:
#   scripts/image.sh  (offline: a debootstrap'ed Debian root filesystem, imported into containerd)
#   Dockerfile        (for users: python:3.11-slim-bookworm)
#
#   image-install.sh debs                  print the Debian packages the pods need at run time
#   image-install.sh wheels SRC OUT        on the builder (network): wheel the runtime dependencies of the project
#                                          in SRC (torch's CPU build, no dev extras) and pip itself into OUT
#   image-install.sh project SRC OUT WHEELS  on the builder, offline: wheel the project alone into OUT
#   image-install.sh install WHEELS        inside the root filesystem, offline (--no-index): the Debian packages
#                                          if missing, the runtime dependencies (WHEELS/requirements.txt), the pod
#                                          user, then removes caches: the image's BASE layer
#   image-install.sh install-project WHEELS PROJECT
#                                          on top of that, offline: the project's wheel alone (--no-deps), bytecode
#                                          compiled: the thin PROJECT layer, all a source change rebuilds
#
# POSIX sh on purpose: the slim base image and a minbase Debian both have dash, not necessarily bash.
set -eu

# What the pods run: python3 (engine, session picker, agent, operator and the exec probes all run it). No compilers:
# every dependency arrives as a wheel built on the builder. Redis runs from its own image (the chart's
# redis.image); espeak-ng and sox are only for making the test corpus on the host.
DEBS="python3 ca-certificates"

# The pod user of operator/render/posture.py (RUN_AS) and the chart's securityContext. Its home is /tmp, the one
# writable directory (an emptyDir) under readOnlyRootFilesystem, so HOME-relative caches (matplotlib, torch)
# land there even where a pod spec sets no HOME.
POD_UID=10001

# torch first and pinned: a looser spec would pull a multi-GB CUDA build
TORCH="torch==2.13.0"

# The Moshi family's model library (docs/moshi.md), as scripts/setup.sh installs it on the host: without its
# dependencies (its metadata caps torch below 2.13 and asks for packages the serving path never imports); the
# imports it needs are the project's `moshi` extra, which "wheels" wheels and "install" installs with the rest.
MOSHI="moshi==0.2.13"

cmd="${1:-}"
[ -n "$cmd" ] || { echo "usage: image-install.sh debs|wheels SRC OUT|project SRC OUT WHEELS|install WHEELS|install-project WHEELS PROJECT" >&2; exit 2; }
shift
# PYTHON: the builder's python, the same minor version as the image's (cp311) and best the same patch level
# (environment markers: redis needs async-timeout below 3.11.3); scripts/image.sh uses Debian's own python3.
PY="${PYTHON:-python3}"

case "$cmd" in
debs)
  echo "$DEBS"
  ;;

wheels)
  [ $# -eq 2 ] || { echo "usage: image-install.sh wheels SRC OUT" >&2; exit 2; }
  mkdir -p "$2"
  src=$(cd "$1" && pwd)
  out=$(cd "$2" && pwd)
  # not in the source tree: `python3 -m` puts the working directory first on sys.path, and the repository's
  # operator/ folder would shadow the standard library's operator module
  cd /
  # the runtime dependencies only ("$src", not "$src[dev]"); sdists are built here, so no compiler in the image.
  # CONSTRAINTS (optional): a pip constraints file; scripts/image.sh passes the builder's `pip freeze`, so the
  # image holds exactly the versions the test suite ran with and the resolver has nothing to search.
  # shellcheck disable=SC2086
  "$PY" -m pip wheel -q --wheel-dir "$out" --find-links "$out" ${CONSTRAINTS:+--constraint "$CONSTRAINTS"} \
    "$TORCH" "$src[moshi]"
  "$PY" -m pip wheel -q --no-deps --wheel-dir "$out" "$MOSHI"
  # pip runs from its own wheel inside the root filesystem: the image needs no pip package of its own. The
  # project's build requirements (pyproject's build-system.requires) let "project" build offline, fast.
  build_requires=$("$PY" -c 'import sys, tomllib; print(" ".join(tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"]))' "$src/pyproject.toml")
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --only-binary=:all: --dest "$out" pip $build_requires
  # the project itself is wheeled apart ("project"): a source change must not invalidate the dependencies
  rm -f "$out"/duplex-*.whl
  # what "install" installs: torch's pin and the project's runtime dependencies with the `moshi` extra (not the
  # project), so the base layer needs neither the project's wheel nor its sources; moshi itself apart (--no-deps)
  { echo "$TORCH"; "$PY" -c 'import sys, tomllib; p = tomllib.load(open(sys.argv[1], "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["moshi"]))' "$src/pyproject.toml"; } >"$out/requirements.txt"
  echo "$MOSHI" >"$out/requirements-no-deps.txt"
  ;;

project)
  [ $# -eq 3 ] || { echo "usage: image-install.sh project SRC OUT WHEELS" >&2; exit 2; }
  mkdir -p "$2"
  src=$(cd "$1" && pwd)
  out=$(cd "$2" && pwd)
  wheels=$(cd "$3" && pwd)
  cd /
  rm -f "$out"/duplex-*.whl
  # offline: the isolated build environment comes from the wheelhouse of "wheels"
  "$PY" -m pip wheel -q --no-deps --no-index --find-links "$wheels" --wheel-dir "$out" "$src"
  ;;

install)
  [ $# -eq 1 ] || { echo "usage: image-install.sh install WHEELS" >&2; exit 2; }
  missing=""
  for p in $DEBS; do
    # python3 may come from the base image instead (python:3.11-slim has it in /usr/local)
    if [ "$p" = python3 ] && command -v python3 >/dev/null 2>&1; then continue; fi
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
  fi
  pip_wheel=$(ls "$1"/pip-*.whl | head -n1)
  # --break-system-packages: Debian's python3 marks its site-packages as apt's (PEP 668); this root filesystem
  # is the image, nothing else installs Python packages into it. The packages land in /usr/local, where
  # `duplex` and `python3 -m duplex.operator.probe` find them for any user.
  python3 "$pip_wheel/pip" install -q --no-index --no-cache-dir --break-system-packages \
    --disable-pip-version-check --root-user-action=ignore --find-links "$1" --requirement "$1/requirements.txt"
  python3 "$pip_wheel/pip" install -q --no-index --no-cache-dir --break-system-packages --no-deps \
    --disable-pip-version-check --root-user-action=ignore --find-links "$1" --requirement "$1/requirements-no-deps.txt"
  if ! getent passwd "$POD_UID" >/dev/null; then
    echo "duplex:x:$POD_UID:" >>/etc/group
    echo "duplex:x:$POD_UID:$POD_UID:duplex pods:/tmp:/usr/sbin/nologin" >>/etc/passwd
  fi
  # caches and documentation the pods never read
  apt-get clean
  rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /usr/share/doc/* /usr/share/man/* /usr/share/info/* \
    /root/.cache
  ;;

install-project)
  [ $# -eq 2 ] || { echo "usage: image-install.sh install-project WHEELS PROJECT" >&2; exit 2; }
  pip_wheel=$(ls "$1"/pip-*.whl | head -n1)
  # the dependencies are the base layer's ("install"); this adds only the project's files (its package, the
  # `duplex` console script, their bytecode) and deletes nothing, so its layer needs no whiteouts.
  # PYTHONDONTWRITEBYTECODE: pip itself writes no __pycache__ outside the project (pip compiles the project's
  # bytecode explicitly, which the setting does not stop).
  PYTHONDONTWRITEBYTECODE=1 python3 "$pip_wheel/pip" install -q --no-index --no-deps --no-cache-dir \
    --break-system-packages --disable-pip-version-check --root-user-action=ignore "$2"/duplex-*.whl
  ;;

*)
  echo "image-install.sh: unknown command '$cmd' (debs, wheels, project, install, install-project)" >&2
  exit 2
  ;;
esac
