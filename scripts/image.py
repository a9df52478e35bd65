"""Build the duplex container image offline (run through ``scripts/image.sh``; needs root).

The image has two layers, so a source change rebuilds only the thin top one:

* **base**: a debootstrap'ed minbase Debian bookworm with every runtime dependency installed
  (``image-install.sh install``: Debian packages, torch and the rest from wheels, the pod user);
* **project**: what installing the project's wheel on top adds (``image-install.sh install-project``: the
  package, the ``duplex`` console script, their bytecode), captured as the upper directory of an overlay
  mount on the base, so it holds exactly the added files.

Stages, each cached under ``${DUPLEX_CACHE:-~/.cache/duplex}`` and keyed by what it depends on:

1. ``debootstrap``: debootstrap's own tarball of the Debian packages (``image-debootstrap-<hash>.tar.gz``, keyed
   by the package list);
2. ``wheels``: the runtime dependencies as cp311 wheels, built on this machine (``image-wheels-<hash>``, keyed by
   pyproject's dependencies, image-install.sh and the builder's versions);
3. ``base``: the tarball unpacked, ``image-install.sh install`` in a chroot, offline, and the gzip'ed layer
   (``image-base-<hash>``: ``rootfs/`` + ``base.tar.gz`` + its digest/diff_id, keyed by 1 and 2 and the recipe);
4. ``project``: the project's wheel, installed on an overlay of the base; the upper directory becomes the
   gzip'ed project layer;
5. ``archive``: both layers as an OCI archive (``oci_archive.py``) for ``ctr -n k8s.io images import``,
   entrypoint ``duplex``, user 10001.

Stages 4–5 land in ``image-<KEY>`` where KEY hashes the base's key, pyproject.toml, the image scripts and every
project source file: a changed tree builds a new image on the cached base, an unchanged one is reused as it is.
``--json`` prints what was built (paths, reference, sizes, stage times) on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling writer, however this file is loaded
from oci_archive import ImageConfig, Layer, write_archive, write_layer

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "scripts" / "image-install.sh"
OCI_WRITER = ROOT / "scripts" / "oci_archive.py"
SUITE = "bookworm"
POD_UID = 10001
"""The image's user: operator/render/posture.py's RUN_AS (a test keeps the two equal)."""
ENTRYPOINT = ["duplex"]
"""The image's entrypoint: the command every rendered pod and the chart's operator run."""
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENV = [f"PATH={PATH}"]
"""The image's Env. No HOME: the runtime takes it from the user's passwd entry (``/tmp``), as for any pod."""
SOURCE_DIRS = ("duplex", "model", "serving", "operator", "loadtest", "protos")
"""The folders pyproject maps to duplex.* (plus the .proto sources): their files are in the image key."""
BASE_RECIPE = "2"
"""Part of the base key: bump it when this file changes how the base layer is made (its other inputs are hashed)."""
BASE_DIR_NAME = "rootfs"
PROJECT_DIR_NAME = "layer"

console = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class BuiltImage:
    """What ``scripts/image.sh --json`` reports."""

    ref: str
    """The image reference containerd knows it by after the import (pod specs say ``duplex:<version>``)."""
    archive: str
    """The OCI archive, for ``ctr -n k8s.io images import``."""
    layers: list[str]
    """The layers' trees, bottom first: the base root filesystem, then the project layer's files
    (:func:`merged_rootfs` mounts them as the image's root filesystem; the tests chroot into it)."""
    rootfs_bytes: int
    """Apparent size of the image's root filesystem (both layers' trees)."""
    archive_bytes: int
    """Size of the OCI archive (its layers gzip'ed)."""
    cached: bool
    """True when nothing was built: the image for this tree already existed."""
    reused: list[str] = field(default_factory=list)
    """The stages whose product came from the cache (``base`` after a source change)."""
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


def pyproject() -> dict[str, object]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def version() -> str:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    return str(project["version"])


def dependency_spec() -> str:
    """What the wheelhouse depends on in pyproject.toml: the runtime dependencies, the ``moshi`` extra (the upstream
    package's imports, in the image too) and the build system (not the version, the tool settings or the dev
    extra, so editing those keeps the base)."""
    data = pyproject()
    project = data["project"]
    assert isinstance(project, dict)
    moshi = project["optional-dependencies"]["moshi"]
    return json.dumps({"dependencies": project["dependencies"], "moshi": moshi, "build-system": data["build-system"]})


def bookworm_mirror() -> str:
    """The machine's own Debian mirror for bookworm, read from its apt sources (never written in the repo)."""
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", f.read_text()):
            fields = dict(
                (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in stanza.splitlines()) if v
            )
            if "deb" in fields.get("Types", "").split() and SUITE in fields.get("Suites", "").split():
                return str(fields["URIs"].split()[0])
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
    """Times each stage, shows a spinner while it runs and notes which stages the cache answered."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.reused: list[str] = []

    def __call__(self, name: str, what: str) -> _Stage:
        return _Stage(self, name, what)


class _Stage:
    def __init__(self, stages: Stages, name: str, what: str) -> None:
        self.stages, self.name, self.what = stages, name, what
        self.note = ""

    def reused(self, note: str) -> None:
        """The stage's product was in the cache."""
        self.stages.reused.append(self.name)
        self.note = f"{note} (cached)"

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


def wheelhouse_dir(cache: Path) -> Path:
    """Where the wheelhouse for this tree's dependencies lives (built or not)."""
    extra = dependency_spec() + builder_versions() + builder_python_version()
    return cache / f"image-wheels-{digest([INSTALL], extra)}"


def wheelhouse(wheels: Path, log: Path) -> None:
    wheels.mkdir(parents=True, exist_ok=True)
    (wheels / "constraints.txt").write_text(builder_versions())
    env = dict(os.environ, CONSTRAINTS=str(wheels / "constraints.txt"), PYTHON=BUILDER_PYTHON)
    run(["sh", str(INSTALL), "wheels", str(ROOT), str(wheels)], log, env=env)
    (wheels / ".complete").touch()


CHROOT_ENV = {"PATH": PATH, "HOME": "/root", "LC_ALL": "C"}


def base_layer(base: Path, tarball: Path, debs: list[str], wheels: Path) -> None:
    """The base layer in ``base``: ``rootfs/`` (debootstrap's tarball unpacked, the dependencies installed in a
    chroot) and its gzip'ed layer ``base.tar.gz``. Built in ``<base>.partial`` and renamed when complete."""
    work = base.with_name(base.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    log = work / "build.log"
    rootfs = work / BASE_DIR_NAME
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
    shutil.copy(INSTALL, staging / "image-install.sh")
    run(
        ["chroot", str(rootfs), "sh", "/tmp/image-build/image-install.sh", "install", "/tmp/image-build/wheels"],
        log,
        env=CHROOT_ENV,
    )
    shutil.rmtree(staging)
    write_layer(rootfs, work / "base.tar.gz", created_by=f"debootstrap {SUITE} + image-install.sh install")
    (work / "rootfs_bytes").write_text(str(tree_bytes(rootfs)))
    shutil.rmtree(base, ignore_errors=True)
    work.rename(base)
    Layer.load(base / "base.tar.gz").save()  # its descriptor names the file where it now is


def unmount_below(path: Path) -> None:
    """Lazily unmount whatever a crashed build left mounted under ``path`` (deepest first), so removing the
    directory cannot reach into a mounted base."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{path}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False)


@contextmanager
def mounted(what: list[str], target: Path, options: str = "") -> Iterator[Path]:
    """``mount [-t TYPE] ... SOURCE TARGET`` for the block's duration."""
    subprocess.run(["mount", *what, str(target), *(["-o", options] if options else [])], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def project_layer(out: Path, base_rootfs: Path, wheels: Path, work: Path, log: Path) -> Layer:
    """Build the project's wheel, install it on an overlay of ``base_rootfs`` and pack the overlay's upper
    directory (``out/layer``: only what the install added) as the project layer ``out/project.tar.gz``."""
    staging = work / "staging"  # what the chroot sees at /mnt: the project wheel, pip's wheel, the script, a TMPDIR
    project_env = dict(os.environ, PYTHON=BUILDER_PYTHON)
    run(["sh", str(INSTALL), "project", str(ROOT), str(staging / "project"), str(wheels)], log, env=project_env)
    (staging / "wheels").mkdir()
    for pip_wheel in wheels.glob("pip-*.whl"):
        os.link(pip_wheel, staging / "wheels" / pip_wheel.name)
    shutil.copy(INSTALL, staging / "image-install.sh")
    (staging / "tmp").mkdir()
    upper, overlay_work, merged = out / PROJECT_DIR_NAME, work / "overlay-work", work / "merged"
    for d in (upper, overlay_work, merged):
        d.mkdir()
    if not (base_rootfs / "mnt").is_dir():
        raise SystemExit(f"image: the base has no /mnt to stage the project wheel at ({base_rootfs})")
    overlay = f"lowerdir={base_rootfs},upperdir={upper},workdir={overlay_work}"
    with mounted(["-t", "overlay", "overlay"], merged, overlay), mounted(["--bind", str(staging)], merged / "mnt"):
        env = dict(CHROOT_ENV, HOME="/mnt/tmp", TMPDIR="/mnt/tmp")  # nothing HOME- or TMPDIR-relative in the layer
        run(["chroot", str(merged), "sh", "/mnt/image-install.sh", "install-project", "/mnt/wheels", "/mnt/project"],
            log, env=env)  # fmt: skip
    for d in (staging, overlay_work, merged):
        shutil.rmtree(d)
    return write_layer(upper, out / "project.tar.gz", created_by="image-install.sh install-project", overlay_upper=True)


@contextmanager
def merged_rootfs(built: BuiltImage) -> Iterator[Path]:
    """The image's root filesystem, its layers mounted read-only as one overlay, with a fresh tmpfs on ``/tmp``
    (the pods' ``emptyDir``, their one writable path); unmounted when the block ends."""
    lower = ":".join(reversed(built.layers))  # overlayfs lists the top layer first
    with tempfile.TemporaryDirectory(prefix="duplex-image-") as tmp:
        root = Path(tmp)
        with (
            mounted(["-t", "overlay", "overlay"], root, f"ro,lowerdir={lower}"),
            mounted(["-t", "tmpfs", "tmpfs"], root / "tmp", "mode=1777,size=1g"),
        ):
            yield root


def base_key(debs: list[str], wheels: Path) -> str:
    """The base layer's inputs: the Debian packages, the wheelhouse (pyproject's dependencies, image-install.sh,
    the builder's versions), the recipe in this file."""
    return digest([INSTALL], f"{','.join(debs)}|{wheels.name}|{BASE_RECIPE}|{SUITE}")


def image_key(base: str) -> str:
    scripts = [ROOT / "pyproject.toml", INSTALL, OCI_WRITER, Path(__file__).resolve()]
    return digest(scripts + source_files(), base)


def build() -> BuiltImage:
    if os.geteuid() != 0:
        raise SystemExit("image: needs root (debootstrap, chroot and overlay mounts); run it with sudo")
    for tool in ("debootstrap", "chroot", "mount"):
        if shutil.which(tool) is None:
            raise SystemExit(f"image: `{tool}` not found (Debian packages: debootstrap coreutils mount)")
    if subprocess.run([BUILDER_PYTHON, "-m", "pip", "--version"], capture_output=True, cwd="/").returncode != 0:
        raise SystemExit(f"image: {BUILDER_PYTHON} has no pip (Debian package python3-pip)")
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    stages = Stages()
    ref = f"duplex:{version()}"
    full_ref = f"docker.io/library/{ref}"  # what a pod's `image: duplex:<version>` resolves to in containerd
    lock = (cache / "image.lock").open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time per cache; a waiting build then finds the image
    with stages("key", "hash the sources and the base's inputs"):
        debs = subprocess.run(["sh", str(INSTALL), "debs"], check=True, capture_output=True, text=True).stdout.split()
        wheels = wheelhouse_dir(cache)
        base = cache / f"image-base-{base_key(debs, wheels)}"
        key = image_key(base.name)
    out = cache / f"image-{key}"
    report = out / "image.json"
    if report.exists():
        built = BuiltImage(**json.loads(report.read_text()))
        if all(Path(layer).is_dir() for layer in built.layers):  # else the base was removed from the cache
            built.cached, built.reused, built.stages = True, ["image"], stages.seconds
            return built

    work = cache / f"image-{key}.partial"
    unmount_below(work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    log = work / "build.log"
    console.print(f"image: building {ref} (key {key}, base {base.name}); log: {log}")

    if not (base / "base.tar.gz.json").exists():
        with stages("debootstrap", f"minbase {SUITE} + {' '.join(debs)}") as s:
            tarball = cache / f"image-debootstrap-{SUITE}-{digest([], ','.join(debs))}.tar.gz"
            if tarball.exists():
                s.reused(tarball.name)
            tarball = debootstrap_tarball(cache, debs, log)
        with stages("wheels", "runtime dependencies (cp311 wheels)") as s:
            if (wheels / ".complete").exists():
                s.reused(wheels.name)
            else:
                wheelhouse(wheels, log)
                s.note = f"{len(list(wheels.glob('*.whl')))} wheels in {wheels.name}"
        with stages("base", "unpack + image-install.sh install (chroot, offline) + gzip'ed layer") as s:
            base_layer(base, tarball, debs, wheels)
            s.note = f"{base.name}: {Layer.load(base / 'base.tar.gz').size / 2**20:,.0f} MiB layer"
    else:
        with stages("base", "the base layer") as s:
            s.reused(base.name)
    base_tar = Layer.load(base / "base.tar.gz")
    with stages("project", "the duplex wheel, installed on an overlay of the base, as a layer") as s:
        project_tar = project_layer(work, base / BASE_DIR_NAME, wheels, work, log)
        s.note = f"{project_tar.size / 2**20:.1f} MiB layer"
    archive = work / f"duplex-{version()}.oci.tar"
    with stages("archive", "OCI archive: the two layers, entrypoint duplex, user 10001"):
        config = ImageConfig(entrypoint=ENTRYPOINT, user=str(POD_UID), env=ENV)
        write_archive(archive, full_ref, [base_tar, project_tar], config)

    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    built = BuiltImage(
        ref=full_ref,
        archive=str(out / archive.name),
        layers=[str(base / BASE_DIR_NAME), str(out / PROJECT_DIR_NAME)],
        rootfs_bytes=int((base / "rootfs_bytes").read_text()) + tree_bytes(out / PROJECT_DIR_NAME),
        archive_bytes=(out / archive.name).stat().st_size,
        cached=False,
        reused=stages.reused,
        stages=stages.seconds,
    )
    report.write_text(json.dumps(asdict(built), indent=2))
    return built


def summary(built: BuiltImage) -> Table:
    table = Table(title=f"{built.ref}{' (cached)' if built.cached else ''}", show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")  # paths whole, to copy
    table.add_row("root filesystem", f"{built.rootfs_bytes / 2**20:,.0f} MiB  {' + '.join(built.layers)}")
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
    main()
