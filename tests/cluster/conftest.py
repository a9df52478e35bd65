from __future__ import annotations

from duplex_cluster_plugin import kube, kube_cluster

__all__ = ["kube", "kube_cluster"]
