"""Endpoint lists as file-based EDS resources: Envoy watches their directory and reloads a file when a new one
is renamed into place (``os.replace``, atomic: Envoy never reads half a file). Envoy routes only to the
addresses listed here; it resolves no names. One file per cluster (``EndpointFiles``): the session picker
writes them, Envoy only reads them."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .config import ENGINES_CLUSTER, endpoints


def check_addresses(addresses: list[str], what: str = "engine endpoint") -> None:
    """ValueError naming the first entry that is not ``IP:PORT`` (Envoy is given no names to resolve)."""
    import ipaddress

    for addr in addresses:
        host, _, port = addr.rpartition(":")
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            host = ""
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{what} {addr!r}: expected IP:PORT")


def _write(path: Path, content: dict[str, object]) -> Path:
    """``content`` as JSON in a new file beside ``path`` (not yet in place): its name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(content, f)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_endpoints(path: Path, addresses: list[str], version: int, cluster: str = ENGINES_CLUSTER) -> None:
    """Replace ``path`` with ``cluster``'s endpoint list ``addresses`` (IP:PORT each) as ``version``."""
    check_addresses(addresses)
    tmp = _write(path, endpoints(addresses, str(version), cluster))
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class EndpointFiles:
    """The EDS files one process writes: a path per cluster name (``ENGINES_CLUSTER`` first; another cluster,
    such as the engines' Realtime ports, is one more entry), each with its own version count."""

    def __init__(self, paths: dict[str, Path]) -> None:
        for cluster, path in paths.items():
            if not path.parent.is_dir():
                raise ValueError(f"EDS file of cluster {cluster!r}: directory {str(path.parent)!r} does not exist")
        self.paths = dict(paths)
        self.versions = dict.fromkeys(paths, 0)

    def publish(self, cluster: str, addresses: list[str]) -> None:
        """Write ``cluster``'s endpoints (IP:PORT each; ValueError naming a bad one, KeyError for no such file)."""
        self.versions[cluster] += 1
        write_endpoints(self.paths[cluster], addresses, self.versions[cluster], cluster)
