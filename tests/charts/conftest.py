from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))

from duplex_controlplane import ControlPlane, control_plane


@pytest.fixture(scope="module")
def bare_cluster() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver 1.20 + kube-controller-manager WITHOUT the DuplexModel CRD: the chart installs it."""
    with control_plane() as cp:
        yield cp
