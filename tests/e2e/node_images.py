"""Binaries and images for the e2e node (:mod:`duplex_node`): the Kubernetes node binaries built from Debian's
source (``scripts/kube-build.sh``, cached), the Debian tools it needs, and OCI archives made from root-filesystem
directories (``scripts/oci-archive.sh``) for containerd to import: the pause image compiled from the source tree and
a tiny busybox test image. Archives are cached in ``$DUPLEX_CACHE/e2e-images``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))

from duplex_controlplane import REPO, cache_dir, ensure_binaries, kube_bin_dir

PAUSE_IMAGE = "registry.k8s.io/pause:3.6"
BUSYBOX_IMAGE = "duplex.test/busybox:1"
NODE_BINARIES = ("kubelet", "kube-scheduler", "kube-proxy")
DEBIAN_TOOLS = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "podman", "iptables", "ip6tables", "ip", "gcc")
CNI_BIN_DIR = Path("/usr/lib/cni")


def ensure_node_binaries() -> dict[str, Path]:
    """Control-plane and node binaries; builds the Kubernetes ones (scripts/kube-build.sh, cached) if absent."""
    bins = ensure_binaries()
    if not all((kube_bin_dir() / n).exists() for n in NODE_BINARIES):
        env = dict(os.environ, KUBE_BUILD_WHAT=" ".join(f"cmd/{n}" for n in NODE_BINARIES))
        subprocess.run(["bash", str(REPO / "scripts" / "kube-build.sh")], check=True, env=env)
    missing = [t for t in DEBIAN_TOOLS if shutil.which(t) is None]
    if missing or not (CNI_BIN_DIR / "bridge").exists():
        raise RuntimeError(f"missing {missing or [str(CNI_BIN_DIR / 'bridge')]}: run scripts/setup.sh (as root)")
    return {**bins, **{n: kube_bin_dir() / n for n in NODE_BINARIES}}


def image_cache() -> Path:
    return cache_dir() / "e2e-images"


def oci_archive(rootfs: Path, ref: str, out: Path, cmd: list[str]) -> Path:
    """``scripts/oci-archive.sh``: a root-filesystem directory as an OCI archive containerd imports."""
    subprocess.run(
        ["bash", str(REPO / "scripts" / "oci-archive.sh"), str(rootfs), ref, str(out), *cmd],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return out


def kube_source_dir() -> Path:
    found = sorted((kube_bin_dir().parent / "src").glob("kubernetes-*/build/pause/linux/pause.c"))
    if not found:
        raise RuntimeError("Kubernetes source tree not in the cache: run scripts/kube-build.sh")
    return found[0].parents[3]


def pause_archive() -> Path:
    """The sandbox image: the source tree's build/pause/linux/pause.c, compiled static, as pause:3.6 (cached)."""
    out = image_cache() / "pause-3.6.tar"
    if not out.exists():
        with tempfile.TemporaryDirectory() as tmp:
            rootfs = Path(tmp) / "rootfs"
            rootfs.mkdir()
            src = kube_source_dir() / "build" / "pause" / "linux" / "pause.c"
            subprocess.run(
                ["gcc", "-Os", "-static", "-Wall", "-DVERSION=3.6", "-o", str(rootfs / "pause"), str(src)], check=True
            )
            oci_archive(rootfs, PAUSE_IMAGE, out, ["/pause"])
    return out


def busybox_archive() -> Path:
    """A tiny test image: Debian's static busybox with its applets linked into /bin (cached)."""
    out = image_cache() / "busybox-1.tar"
    busybox = Path("/bin/busybox")
    if not out.exists():
        if not busybox.exists():
            raise RuntimeError("/bin/busybox missing: install Debian's busybox-static (scripts/setup.sh)")
        with tempfile.TemporaryDirectory() as tmp:
            rootfs = Path(tmp) / "rootfs"
            (rootfs / "bin").mkdir(parents=True)
            (rootfs / "tmp").mkdir(mode=0o1777)
            shutil.copy2(busybox, rootfs / "bin" / "busybox")
            applets = subprocess.run([str(busybox), "--list"], check=True, capture_output=True, text=True).stdout
            for applet in applets.split():
                if applet != "busybox":
                    (rootfs / "bin" / applet).symlink_to("busybox")
            oci_archive(rootfs, BUSYBOX_IMAGE, out, ["/bin/sh"])
    return out


REDIS_BINARIES = (Path("/usr/bin/redis-server"), Path("/usr/bin/redis-cli"))
POD_UID = 10001
"""The rendered pods' UID/GID (operator/render/posture.py RUN_AS; the chart's pod security context too)."""


def redis_version() -> str:
    """The host's redis-server version (``Redis server v=7.0.15 ...`` → ``7.0.15``): the image tag."""
    out = subprocess.run([str(REDIS_BINARIES[0]), "--version"], check=True, capture_output=True, text=True).stdout
    return out.split("v=", 1)[1].split()[0]


def shared_libraries(binary: Path) -> list[Path]:
    """What ``ldd`` lists for ``binary``: the libraries and the dynamic loader (paths as the loader asks for them)."""
    out = subprocess.run(["ldd", str(binary)], check=True, capture_output=True, text=True).stdout
    paths = []
    for line in out.splitlines():
        # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        path = line.split("=>", 1)[-1].strip().split(" (", 1)[0]
        if path.startswith("/"):
            paths.append(Path(path))
    return paths


def redis_image() -> str:
    return f"duplex.test/redis:{redis_version()}"


def redis_archive() -> Path:
    """A Redis image from Debian's redis-server: the binaries, the libraries ``ldd`` lists, a passwd entry for the
    pods' user, ``/data`` and ``/tmp``; default command ``redis-server`` (cached, keyed by the version)."""
    version = redis_version()
    out = image_cache() / f"redis-{version}.tar"
    if not out.exists():
        missing = [str(b) for b in REDIS_BINARIES if not b.exists()]
        if missing:
            raise RuntimeError(f"{missing} missing: install Debian's redis-server (scripts/setup.sh)")
        with tempfile.TemporaryDirectory() as tmp:
            rootfs = Path(tmp) / "rootfs"
            files = {lib for b in REDIS_BINARIES for lib in shared_libraries(b)} | set(REDIS_BINARIES)
            for f in sorted(files):
                dest = rootfs / f.relative_to("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f.resolve(), dest)  # the file itself, not the host's symlink
            etc = rootfs / "etc"
            etc.mkdir()
            passwd = f"root:x:0:0::/root:/bin/false\nredis:x:{POD_UID}:{POD_UID}::/data:/bin/false\n"
            (etc / "passwd").write_text(passwd)
            (etc / "group").write_text(f"root:x:0:\nredis:x:{POD_UID}:\n")
            (rootfs / "tmp").mkdir()
            (rootfs / "tmp").chmod(0o1777)  # mkdir's mode goes through the umask
            (rootfs / "data").mkdir()
            os.chown(rootfs / "data", POD_UID, POD_UID)
            oci_archive(rootfs, redis_image(), out, ["redis-server"])
    return out
