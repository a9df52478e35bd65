"""The engines' endpoint list as a file-based EDS resource: Envoy watches its directory and reloads the file
when a new one is renamed into place (``os.replace``, atomic: Envoy never reads half a file). Envoy routes
only to the addresses listed here; it resolves no names."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .config import ENGINES_CLUSTER, endpoints


def write_endpoints(path: Path, addresses: list[str], version: int, cluster: str = ENGINES_CLUSTER) -> None:
    """Replace ``path`` with ``cluster``'s endpoint list ``addresses`` (HOST:PORT each, IP addresses) as
    ``version``."""
    for addr in addresses:
        host, _, port = addr.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"engine endpoint {addr!r}: expected IP:PORT")
    fd, tmp = tempfile.mkstemp(prefix=".engines-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(endpoints(addresses, str(version), cluster), f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
