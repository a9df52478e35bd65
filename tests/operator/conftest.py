from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))

from duplex_cluster_plugin import duplex_operator, kube, kube_cluster, namespace

__all__ = ["duplex_operator", "kube", "kube_cluster", "namespace"]
