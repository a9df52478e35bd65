"""The session's single-node cluster (tests/e2e/duplex_node.py), shared by every e2e test.

Tests marked ``node_teardown`` tear it down themselves and check what is left, so they run last in the
session whatever file they are in.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from duplex_node import NodeCluster, node_cluster


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "node_teardown: tears the session's e2e node down; runs last")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("node_teardown") is not None)  # stable: order kept


@pytest.fixture(scope="session")
def node() -> Iterator[NodeCluster]:
    """etcd, kube-apiserver, controller-manager, scheduler, containerd, kubelet, kube-proxy: one Ready node."""
    with node_cluster() as cluster:
        print(f"\ne2e node up in {cluster.timings['total']:.1f}s: {cluster.timings}")
        yield cluster
