"""The offline image (scripts/image.sh): built, or reused from the cache, and checked by running the image's own
python in a chroot of its root filesystem as the pods' user — no container runtime needed. Also the OCI archive
containerd imports: its name, entrypoint and user."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tarfile
from collections.abc import Iterator
from importlib.metadata import Distribution, distributions
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from duplex import __version__
from duplex.operator.render.posture import RUN_AS, TMP_DIR

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "model" / "checkpoints" / "tiny.safetensors"
# whichever test builds the image first: a cold build (debootstrap, wheels, install) takes minutes
pytestmark = pytest.mark.timeout(3600)

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def build_image() -> dict[str, Any]:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "image.sh"), "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    built: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return built


@pytest.fixture(scope="module")
def image() -> Iterator[dict[str, Any]]:
    yield build_image()


def in_image(rootfs: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside the image's root filesystem as the pods' user, with the environment a pod starts
    from (the image sets no ENV; HOME comes from its passwd entry, as the runtime does for a pod)."""
    home = next(
        line.split(":")[5]
        for line in (Path(rootfs) / "etc" / "passwd").read_text().splitlines()
        if line.split(":")[2] == str(RUN_AS)
    )
    return subprocess.run(
        ["chroot", f"--userspec={RUN_AS}:{RUN_AS}", rootfs, "/usr/bin/env", "-i", f"PATH={PATH}", f"HOME={home}",
         *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip


def test_duplex_cli_runs_as_the_pod_user(image: dict[str, Any]) -> None:
    proc = in_image(image["rootfs"], "duplex", "--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("engine", "gateway", "agent", "operator"):
        assert command in proc.stdout


def test_pod_user_home_is_the_tmp_emptydir(image: dict[str, Any]) -> None:
    passwd = (Path(image["rootfs"]) / "etc" / "passwd").read_text().splitlines()
    (entry,) = [line.split(":") for line in passwd if line.split(":")[2] == str(RUN_AS)]
    assert (entry[3], entry[5]) == (str(RUN_AS), TMP_DIR)


def test_serving_model_and_cpu_torch_import(image: dict[str, Any]) -> None:
    code = "import duplex.serving, duplex.model, duplex.operator.probe, torch; print(torch.__version__)"
    proc = in_image(image["rootfs"], "python3", "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "2.13.0+cpu"
    # the probe runner the operator's exec probes call
    probe = in_image(image["rootfs"], "python3", "-m", "duplex.operator.probe", "--help")
    assert probe.returncode == 0, probe.stderr


def test_shipped_checkpoint_is_in_the_image_and_loads(image: dict[str, Any]) -> None:
    code = (
        "import hashlib; from duplex.model.runtime import SHIPPED, load_part;"
        "from duplex.model.spec import ModelSource;"
        "p = SHIPPED / 'tiny.safetensors'; print(hashlib.sha256(p.read_bytes()).hexdigest());"
        "m = load_part(ModelSource()); print(type(m).__name__, sum(t.numel() for t in m.parameters()))"
    )
    proc = in_image(image["rootfs"], "python3", "-c", code)
    assert proc.returncode == 0, proc.stderr
    sha, loaded = proc.stdout.split("\n")[:2]
    assert sha == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    name, params = loaded.split()
    assert name == "DuplexModel" and int(params) > 0
    assert "RANDOM weights" not in proc.stderr


def site_packages(rootfs: str) -> Path:
    (path,) = Path(rootfs).glob("usr/local/lib/python3.*/dist-packages")
    return path


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure(dists: dict[str, Distribution], roots: list[str], python: str) -> set[str]:
    """The distributions ``roots`` need at run time: their Requires-Dist (markers evaluated for the image's
    python version ``python``, no extras unless a requirement asks for one), transitively."""
    versions = {"python_full_version": python, "python_version": ".".join(python.split(".")[:2])}
    needed: set[str] = set()
    todo = [(canonical(r), frozenset[str]()) for r in roots]
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


def test_only_runtime_dependencies_no_dev_tools_or_compilers(image: dict[str, Any]) -> None:
    dists = {canonical(d.metadata["Name"]): d for d in distributions(path=[str(site_packages(image["rootfs"]))])}
    installed = set(dists)
    assert {"duplex", "torch", "kserve", "kopf"} <= installed
    # everything installed is needed by the project at run time: no dev extra, nothing left over
    python = in_image(image["rootfs"], "python3", "-c", "import platform; print(platform.python_version())")
    assert installed == runtime_closure(dists, ["duplex"], python.stdout.strip())
    # the dev extra's tools in particular (pytest itself is there only as locust's own runtime requirement)
    assert not installed & {"ruff", "mypy", "pytest-asyncio", "pytest-timeout", "hypothesis", "checkov", "playwright"}
    assert not installed & {"pip", "setuptools-scm"}  # pip ran from its wheel
    rootfs = Path(image["rootfs"])
    assert not [p for p in ("usr/bin/gcc", "usr/bin/cc", "usr/bin/g++", "usr/bin/make") if (rootfs / p).exists()]
    # the build's wheels left with the build
    assert not (rootfs / "tmp" / "image-build").exists()


def test_oci_archive_is_named_for_the_pods_and_starts_duplex(image: dict[str, Any]) -> None:
    assert image["ref"] == f"docker.io/library/duplex:{__version__}"  # what `image: duplex:<version>` resolves to
    with tarfile.open(image["archive"]) as archive:

        def blob(digest: str) -> Any:
            f = archive.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
            assert f is not None
            return json.load(f)

        index_file = archive.extractfile("index.json")
        assert index_file is not None
        (manifest_desc,) = json.load(index_file)["manifests"]
        assert manifest_desc["annotations"]["org.opencontainers.image.ref.name"] == image["ref"]
        config = blob(blob(manifest_desc["digest"])["config"]["digest"])["config"]
    assert config["Entrypoint"] == ["duplex"]
    assert config["User"] == str(RUN_AS)


def test_unchanged_tree_reuses_the_cached_image(image: dict[str, Any]) -> None:
    again = build_image()
    assert again["cached"] is True
    assert (again["archive"], again["rootfs"]) == (image["archive"], image["rootfs"])
    assert set(again["stages"]) == {"cached"}  # no stage ran
