"""Build the duplex container image offline (run through ``scripts/image.sh``; needs root).

Stages, each cached under ``${DUPLEX_CACHE:-~/.cache/duplex}`` so a warm build only redoes what changed:

1. ``debootstrap``: a minbase Debian bookworm with the Debian packages of ``image-install.sh debs``, kept as
   debootstrap's own tarball (``image-debootstrap-<hash>.tar.gz``, keyed by the package list);
2. ``wheels``: the runtime dependencies as cp311 wheels, built on this machine (``image-wheels-<hash>``, keyed by
   pyproject.toml and image-install.sh);
3. ``project``: the project's own wheel;
4. ``rootfs``: the tarball unpacked, then ``image-install.sh install`` in a chroot, offline (``--no-index``);
5. ``archive``: ``oci-archive.sh`` → an OCI archive for ``ctr -n k8s.io images import``, entrypoint ``duplex``.

Stages 3–5 land in ``image-<KEY>`` where KEY hashes pyproject.toml, the image scripts and every project source
file: a changed tree builds a new image, an unchanged one is reused as it is. ``--json`` prints what was built
(paths, reference, sizes, stage times) on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "scripts" / "image-install.sh"
OCI_ARCHIVE = ROOT / "scripts" / "oci-archive.sh"
SUITE = "bookworm"
POD_UID = 10001
"""The image's user: operator/render/posture.py's RUN_AS (a test keeps the two equal)."""
ENTRYPOINT = ["duplex"]
"""The image's entrypoint: the command every rendered pod and the chart's operator run."""
SOURCE_DIRS = ("duplex", "model", "serving", "operator", "loadtest", "protos")
"""The folders pyproject maps to duplex.* (plus the .proto sources): their files are in the image key."""

console = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class BuiltImage:
    """What ``scripts/image.sh --json`` reports."""

    ref: str
    """The image reference containerd knows it by after the import (pod specs say ``duplex:<version>``)."""
    archive: str
    """The OCI archive, for ``ctr -n k8s.io images import``."""
    rootfs: str
    """The unpacked root filesystem (the tests chroot into it)."""
    rootfs_bytes: int
    """Apparent size of the root filesystem."""
    archive_bytes: int
    """Size of the (gzip-compressed) OCI archive."""
    cached: bool
    """True when nothing was built: the image for this tree already existed."""
    stages: dict[str, float] = field(default_factory=dict)
    """Seconds per stage in this run (a cache hit counts as the time to find it)."""


def cache_dir() -> Path:
    return Path(os.environ.get("DUPLEX_CACHE", Path.home() / ".cache" / "duplex"))


def digest(paths: list[Path], extra: str = "") -> str:
    """Hash of the files' paths (relative to the repository) and contents."""
    h = hashlib.sha256(extra.encode())
    for p in sorted(paths):
        h.update(str(p.relative_to(ROOT)).encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def source_files() -> list[Path]:
    files = []
    for d in SOURCE_DIRS:
        for p in (ROOT / d).rglob("*"):
            if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc"):
                files.append(p)
    return files


def image_key() -> str:
    scripts = [ROOT / "pyproject.toml", INSTALL, OCI_ARCHIVE, Path(__file__).resolve()]
    return digest(scripts + source_files())


def version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def bookworm_mirror() -> str:
    """The machine's own Debian mirror for bookworm, read from its apt sources (never written in the repo)."""
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", f.read_text()):
            fields = dict(
                (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in stanza.splitlines()) if v
            )
            if "deb" in fields.get("Types", "").split() and SUITE in fields.get("Suites", "").split():
                return fields["URIs"].split()[0]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                return parts[1]
    raise SystemExit(f"image: no '{SUITE}' mirror in /etc/apt/sources* to debootstrap from")


def run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    """Run quietly into ``log``; on failure show its tail and stop."""
    with log.open("ab") as out:
        out.write(("\n$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        console.print("\n".join(tail), markup=False)
        raise SystemExit(f"image: `{' '.join(cmd)}` failed ({proc.returncode}); full log: {log}")


def tree_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


class Stages:
    """Times each stage and shows a spinner while it runs."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, what: str) -> _Stage:
        return _Stage(self, name, what)


class _Stage:
    def __init__(self, stages: Stages, name: str, what: str) -> None:
        self.stages, self.name, self.what = stages, name, what
        self.note = ""

    def __enter__(self) -> _Stage:
        self.start = time.monotonic()
        self.status = console.status(f"[bold]{self.name}[/]: {self.what}")
        self.status.start()
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.status.stop()
        took = time.monotonic() - self.start
        self.stages.seconds[self.name] = round(took, 1)
        if exc_type is None:
            console.print(f"[green]✓[/] {self.name:<12} {took:6.1f} s  {self.note or self.what}")


def debootstrap_tarball(cache: Path, debs: list[str], log: Path) -> Path:
    tarball = cache / f"image-debootstrap-{SUITE}-{digest([], ','.join(debs))}.tar.gz"
    if tarball.exists():
        return tarball
    work = cache / f"{tarball.name}.work"
    shutil.rmtree(work, ignore_errors=True)
    partial = tarball.with_suffix(".partial")
    run(
        [
            "debootstrap", "--variant=minbase", f"--include={','.join(debs)}",
            f"--make-tarball={partial}", SUITE, str(work), bookworm_mirror(),
        ],
        log,
    )  # fmt: skip
    partial.rename(tarball)
    shutil.rmtree(work, ignore_errors=True)
    return tarball


def builder_versions() -> str:
    """The builder's installed versions (``pip freeze``, the project itself left out): the wheelhouse is pinned
    to what the test suite runs with, and pip resolves nothing."""
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
        cwd="/",  # `-m` puts the working directory on sys.path: the repository's operator/ shadows the stdlib's
    ).stdout
    return "".join(f"{line}\n" for line in freeze.splitlines() if "==" in line and not line.startswith("duplex=="))


BUILDER_PYTHON = "/usr/bin/python3"
"""Debian's python3 on this (bookworm) machine: the very interpreter the image gets, so pip evaluates the
dependencies' environment markers for it (e.g. redis needs async-timeout on 3.11.2, not on a newer 3.11)."""


def builder_python_version() -> str:
    return subprocess.run(
        [BUILDER_PYTHON, "-c", "import platform; print(platform.python_version())"],
        check=True,
        capture_output=True,
        text=True,
        cwd="/",
    ).stdout.strip()


def wheelhouse(cache: Path, log: Path) -> Path:
    constraints = builder_versions()
    python = builder_python_version()
    wheels = cache / f"image-wheels-{digest([ROOT / 'pyproject.toml', INSTALL], constraints + python)}"
    if (wheels / ".complete").exists():
        return wheels
    wheels.mkdir(parents=True, exist_ok=True)
    (wheels / "constraints.txt").write_text(constraints)
    env = dict(os.environ, CONSTRAINTS=str(wheels / "constraints.txt"), PYTHON=BUILDER_PYTHON)
    run(["sh", str(INSTALL), "wheels", str(ROOT), str(wheels)], log, env=env)
    (wheels / ".complete").touch()
    return wheels


def set_entrypoint(archive: Path, entrypoint: list[str], user: str) -> None:
    """Give the single image in an OCI archive an entrypoint and a user (``oci-archive.sh`` sets only a CMD).

    The config blob and the manifest naming it get new digests, the index points at the new manifest; the layer
    is copied as it is.
    """
    partial = archive.with_suffix(".partial")
    with tarfile.open(archive) as src, tarfile.open(partial, "w") as dst:

        def read(name: str) -> Any:
            f = src.extractfile(name)
            assert f is not None, name
            return json.load(f)

        def write(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            dst.addfile(info, io.BytesIO(data))

        def write_blob(document: Any) -> dict[str, Any]:
            """Store ``document`` as a blob; its descriptor's digest and size."""
            data = json.dumps(document).encode()
            digest = hashlib.sha256(data).hexdigest()
            write(f"blobs/sha256/{digest}", data)
            return {"digest": f"sha256:{digest}", "size": len(data)}

        def blob(digest: str) -> str:
            return "blobs/sha256/" + digest.removeprefix("sha256:")

        index = read("index.json")
        (manifest_desc,) = index["manifests"]
        manifest = read(blob(manifest_desc["digest"]))
        config = read(blob(manifest["config"]["digest"]))
        replaced = {blob(manifest_desc["digest"]), blob(manifest["config"]["digest"]), "index.json"}
        for member in src.getmembers():
            if member.name.removeprefix("./") not in replaced:
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        config["config"].pop("Cmd", None)
        config["config"].update(Entrypoint=entrypoint, User=user)
        manifest["config"].update(write_blob(config))
        manifest_desc.update(write_blob(manifest))
        write("index.json", json.dumps(index).encode())
    partial.rename(archive)


def install_rootfs(rootfs: Path, tarball: Path, debs: list[str], wheels: Path, project: Path, log: Path) -> None:
    shutil.rmtree(rootfs, ignore_errors=True)
    run(
        [
            "debootstrap", "--variant=minbase", f"--include={','.join(debs)}",
            f"--unpack-tarball={tarball}", SUITE, str(rootfs), bookworm_mirror(),
        ],
        log,
    )  # fmt: skip
    # The wheels enter the root filesystem as hard links (no copy, no mount to undo) and leave it afterwards.
    staging = rootfs / "tmp" / "image-build"
    staging.mkdir(parents=True)
    shutil.copytree(wheels, staging / "wheels", copy_function=os.link)
    shutil.copytree(project, staging / "project", copy_function=os.link)
    shutil.copy(INSTALL, staging / "image-install.sh")
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C"}
    run(
        ["chroot", str(rootfs), "sh", "/tmp/image-build/image-install.sh", "install",
         "/tmp/image-build/wheels", "/tmp/image-build/project"],
        log,
        env=env,
    )  # fmt: skip
    shutil.rmtree(staging)


def build() -> BuiltImage:
    if os.geteuid() != 0:
        raise SystemExit("image: needs root (debootstrap and chroot); run it with sudo")
    for tool in ("debootstrap", "podman", "chroot"):
        if shutil.which(tool) is None:
            raise SystemExit(f"image: `{tool}` not found (Debian packages: debootstrap podman)")
    if subprocess.run([BUILDER_PYTHON, "-m", "pip", "--version"], capture_output=True, cwd="/").returncode != 0:
        raise SystemExit(f"image: {BUILDER_PYTHON} has no pip (Debian package python3-pip)")
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    key = image_key()
    out = cache / f"image-{key}"
    report = out / "image.json"
    ref = f"duplex:{version()}"
    full_ref = f"docker.io/library/{ref}"  # what a pod's `image: duplex:<version>` resolves to in containerd
    stages = Stages()
    lock = (cache / "image.lock").open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time per cache; a waiting build then finds the image
    if report.exists():
        with stages("cached", f"image {ref} for this tree"):
            built = BuiltImage(**json.loads(report.read_text()))
        built.cached = True
        built.stages = stages.seconds
        return built

    work = cache / f"image-{key}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    log = work / "build.log"
    debs = subprocess.run(["sh", str(INSTALL), "debs"], check=True, capture_output=True, text=True).stdout.split()
    console.print(f"image: building {ref} (key {key}); log: {log}")

    with stages("debootstrap", f"minbase {SUITE} + {' '.join(debs)}") as s:
        tarball = debootstrap_tarball(cache, debs, log)
        s.note = f"{tarball.name} ({tarball.stat().st_size / 2**20:.0f} MiB)"
    with stages("wheels", "runtime dependencies (cp311 wheels)") as s:
        wheels = wheelhouse(cache, log)
        s.note = f"{len(list(wheels.glob('*.whl')))} wheels in {wheels.name}"
    with stages("project", "the duplex wheel"):
        project_env = dict(os.environ, PYTHON=BUILDER_PYTHON)
        run(["sh", str(INSTALL), "project", str(ROOT), str(work / "project"), str(wheels)], log, env=project_env)
    rootfs = work / "rootfs"
    with stages("rootfs", "unpack + image-install.sh install (chroot, offline)"):
        install_rootfs(rootfs, tarball, debs, wheels, work / "project", log)
    archive = work / f"duplex-{version()}.oci.tar"
    with stages("archive", "OCI archive (podman import + save), entrypoint duplex"):
        run(["bash", str(OCI_ARCHIVE), str(rootfs), full_ref, str(archive)], log)
        set_entrypoint(archive, ENTRYPOINT, str(POD_UID))
    shutil.rmtree(work / "project")

    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    built = BuiltImage(
        ref=full_ref,
        archive=str(out / archive.name),
        rootfs=str(out / "rootfs"),
        rootfs_bytes=tree_bytes(out / "rootfs"),
        archive_bytes=(out / archive.name).stat().st_size,
        cached=False,
        stages=stages.seconds,
    )
    report.write_text(json.dumps(asdict(built), indent=2))
    return built


def summary(built: BuiltImage) -> Table:
    table = Table(title=f"{built.ref}{' (cached)' if built.cached else ''}", show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")  # paths whole, to copy
    table.add_row("root filesystem", f"{built.rootfs_bytes / 2**20:,.0f} MiB  {built.rootfs}")
    table.add_row("OCI archive", f"{built.archive_bytes / 2**20:,.0f} MiB  {built.archive}")
    table.add_row("build time", f"{sum(built.stages.values()):.1f} s")
    table.add_row("import", f"ctr -n k8s.io images import {built.archive}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print what was built as JSON on stdout")
    args = parser.parse_args()
    built = build()
    console.print(summary(built))
    if args.json:
        print(json.dumps(asdict(built)))


if __name__ == "__main__":
    sys.exit(main())
