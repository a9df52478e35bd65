"""Write OCI image archives (``ctr -n k8s.io images import OUT.tar``) from root-filesystem directories: the one
writer for every image the project makes (the duplex image's two layers, ``scripts/image.py``; the e2e node's
pause and busybox images through ``scripts/oci-archive.sh``).

The format is small and fixed (OCI image layout + image spec v1): an uncompressed tar holding ``oci-layout``,
``index.json`` and content-addressed blobs under ``blobs/sha256/``: one manifest, one config (entrypoint, user,
env, the layers' ``diff_ids``, one history entry per layer) and each layer as a gzip'ed tar. A layer's *digest*
is the sha256 of its compressed bytes (the manifest names the blob by it), its *diff_id* the sha256 of the
uncompressed tar (the config's ``rootfs.diff_ids``, which containerd checks after unpacking).

    python3 scripts/oci_archive.py DIR REF OUT.tar [CMD...]    (what scripts/oci-archive.sh runs)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"
"""containerd's own name annotation: ``ctr images import`` names the image by it (the OCI one is kept for other
tools)."""
GZIP_LEVEL = 6
"""gzip's default: level 9 costs twice the time for about 1 % less on the duplex base layer."""
COPY_BUFFER = 1 << 20


@dataclass(frozen=True)
class Layer:
    """A gzip'ed layer tarball and the two hashes the image refers to it by."""

    path: str
    """The ``.tar.gz`` file."""
    digest: str
    """``sha256:<hex>`` of the compressed file: the manifest's layer descriptor and the blob's name."""
    diff_id: str
    """``sha256:<hex>`` of the uncompressed tar: the config's ``rootfs.diff_ids`` entry."""
    size: int
    """Bytes of the compressed file."""
    created_by: str = ""
    """What made the layer, for the config's history."""

    @classmethod
    def load(cls, path: Path) -> Layer:
        """A layer written earlier (its descriptor is kept next to it as ``<path>.json``; the file may have moved
        with its directory since)."""
        return cls(**{**json.loads(Path(f"{path}.json").read_text()), "path": str(path)})

    def save(self) -> None:
        Path(f"{self.path}.json").write_text(json.dumps(asdict(self), indent=2))


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an image config (the OCI spec's ``config`` object)."""

    entrypoint: list[str] = field(default_factory=list)
    """``Entrypoint``: what a container runs, with the pod's ``args`` appended."""
    cmd: list[str] = field(default_factory=list)
    """``Cmd``: the default arguments (or command, with no entrypoint)."""
    user: str = ""
    """``User``: ``uid`` or ``uid:gid``; empty runs as root."""
    env: list[str] = field(default_factory=list)
    """``Env``: ``KEY=value`` entries."""
    working_dir: str = ""
    """``WorkingDir``; empty leaves the runtime's default (``/``)."""

    def as_oci(self) -> dict[str, Any]:
        config: dict[str, Any] = {}
        for key, value in (
            ("Entrypoint", self.entrypoint),
            ("Cmd", self.cmd),
            ("User", self.user),
            ("Env", self.env),
            ("WorkingDir", self.working_dir),
        ):
            if value:
                config[key] = value
        return config


class WhiteoutError(ValueError):
    """A layer directory holds an overlayfs deletion marker, which a layer made only by adding files must not."""


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to ``sink``."""

    def __init__(self, sink: IO[bytes] | gzip.GzipFile) -> None:
        self.sink = sink
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sha256.update(view)
        self.sink.write(view)
        self.size += len(view)
        return len(view)


def _walk(top: Path) -> Iterator[Path]:
    """Every path below ``top`` (not ``top`` itself), parents before children, in a stable order."""
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            yield base / name


def _is_overlay_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def write_layer(tree: Path, out: Path, created_by: str = "", overlay_upper: bool = False) -> Layer:
    """Pack the directory ``tree`` as the gzip'ed layer ``out`` (owners numeric, modes, links and device nodes
    kept; ``tree`` itself is the layer's root). ``overlay_upper``: ``tree`` is an overlayfs upper directory;
    a deletion marker in it (whiteout device or opaque directory) raises :class:`WhiteoutError` instead of
    being packed as a device node."""
    partial = out.with_name(out.name + ".partial")
    with partial.open("wb") as raw:
        compressed = _Hashing(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, compresslevel=GZIP_LEVEL, mtime=0) as gz:
            uncompressed = _Hashing(gz)
            with tarfile.TarFile(
                fileobj=uncompressed, mode="w", format=tarfile.PAX_FORMAT, copybufsize=COPY_BUFFER
            ) as tar:
                for path in _walk(tree):
                    st = path.lstat()
                    if overlay_upper and (_is_overlay_whiteout(st) or (path.is_dir() and _is_opaque(path))):
                        raise WhiteoutError(f"{path.relative_to(tree)}: the layer would delete from the one below")
                    info = tar.gettarinfo(str(path), str(path.relative_to(tree)))
                    if info is None:  # a socket: no tar type for it, and nothing an image needs
                        continue
                    info.uname = info.gname = ""  # the image's own passwd names them, not this machine's
                    info.mtime = int(info.mtime)  # whole seconds: no PAX header per file for a float
                    if info.isreg():
                        with path.open("rb") as f:
                            tar.addfile(info, f)
                    else:
                        tar.addfile(info)
    partial.rename(out)
    layer = Layer(
        path=str(out),
        digest=f"sha256:{compressed.sha256.hexdigest()}",
        diff_id=f"sha256:{uncompressed.sha256.hexdigest()}",
        size=compressed.size,
        created_by=created_by,
    )
    layer.save()
    return layer


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_archive(out: Path, ref: str, layers: list[Layer], config: ImageConfig) -> dict[str, Any]:
    """Write the OCI archive ``out`` of one image named ``ref`` (the full reference, e.g.
    ``docker.io/library/duplex:0.1.0``) from ``layers`` (bottom first). Returns its manifest."""
    created = _now()
    image_config = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": config.as_oci(),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": created, "created_by": layer.created_by or "layer"} for layer in layers],
    }
    config_blob = json.dumps(image_config).encode()
    config_digest = hashlib.sha256(config_blob).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": f"sha256:{config_digest}",
            "size": len(config_blob),
        },
        "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": layer.digest, "size": layer.size} for layer in layers],
    }
    manifest_blob = json.dumps(manifest).encode()
    manifest_digest = hashlib.sha256(manifest_blob).hexdigest()
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [
            {
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": f"sha256:{manifest_digest}",
                "size": len(manifest_blob),
                "annotations": {REF_ANNOTATION: ref, CONTAINERD_NAME_ANNOTATION: ref},
            }
        ],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    mtime = int(time.time())
    with tarfile.TarFile(partial, "w", format=tarfile.PAX_FORMAT, copybufsize=COPY_BUFFER) as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, mtime
            tar.addfile(info, io.BytesIO(data))

        def add_dir(name: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
            tar.addfile(info)

        add("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        add_dir("blobs")
        add_dir("blobs/sha256")
        seen = set()
        for layer in layers:
            if layer.digest in seen:  # the same content twice is one blob
                continue
            seen.add(layer.digest)
            info = tarfile.TarInfo(f"blobs/sha256/{layer.digest.removeprefix('sha256:')}")
            info.size, info.mode, info.mtime = layer.size, 0o644, mtime
            with open(layer.path, "rb") as f:
                tar.addfile(info, f)
        add(f"blobs/sha256/{config_digest}", config_blob)
        add(f"blobs/sha256/{manifest_digest}", manifest_blob)
        add("index.json", json.dumps(index).encode())
    partial.rename(out)
    return manifest


def archive_from_tree(tree: Path, ref: str, out: Path, config: ImageConfig) -> Path:
    """A one-layer image of the directory ``tree`` (the e2e node's pause and busybox images)."""
    out.parent.mkdir(parents=True, exist_ok=True)  # a cold cache has no folder for it yet
    layer_path = out.with_name(out.name + ".layer.tar.gz")
    try:
        layer = write_layer(tree, layer_path, created_by=f"root filesystem {tree.name}")
        write_archive(out, ref, [layer], config)
    finally:
        layer_path.unlink(missing_ok=True)
        Path(f"{layer_path}.json").unlink(missing_ok=True)
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        usage = "usage: oci_archive.py DIR REF OUT.tar [CMD...]  (env: OCI_ENV='K=V ...', OCI_WORKDIR=/path)"
        print(usage, file=sys.stderr)
        return 2
    tree, ref, out, cmd = Path(argv[0]), argv[1], Path(argv[2]), argv[3:]
    if not tree.is_dir():
        print(f"oci-archive: DIR {tree} is not a directory", file=sys.stderr)
        return 2
    config = ImageConfig(
        cmd=cmd, env=os.environ.get("OCI_ENV", "").split(), working_dir=os.environ.get("OCI_WORKDIR", "")
    )
    archive_from_tree(tree, ref, out, config)
    print(f"oci-archive: {ref} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
