"""How the suite is spread over pytest-xdist workers (``scripts/test.sh`` runs ``-n 2 --dist loadgroup``).

A unit of work is one test module: its tests run in file order on one worker, and its module-scoped servers start
once (a session-scoped fixture starts once in each worker that uses it; every server takes a free port and a
temporary folder of its own). Modules that share something machine-wide, or that hold real-time conversations
whose pace must not compete with each other's, form one unit together (``GROUPS``). Those units are handed out
first, in the order of ``GROUPS``, so that the longest work never starts last. A test that names its own
``xdist_group`` keeps it. ``-n 0`` runs the whole suite in one process, in the same order.
"""

from __future__ import annotations

import pytest

GROUPS: dict[str, tuple[str, ...]] = {
    # The session's single-node cluster (tests/e2e/duplex_node.py): one per machine (the node bridge, the
    # KUBE-* chains, the cgroup tree, /run/containerd). The image tests run a throwaway containerd, whose shims
    # and /run/containerd entries the node's set-up clears and its teardown test requires gone, and build the
    # image the platform tests import.
    "node": ("tests/e2e/", "tests/image/test_image.py"),
    # Real-time conversations held at load (Locust users, the live-mic evaluation, the browser page): each
    # asserts that its clients kept real-time pace (a client-lag bound, no chunk substituted), so no two of
    # them run at once.
    "realtime-load": (
        "tests/loadtest/test_loadtest_cli.py",
        "tests/loadtest/test_live_eval.py",
        "tests/loadtest/test_overload.py",
        "tests/loadtest/test_tls_api_key.py",
        "tests/web/",
    ),
    # Compute-bound model tests (the Moshi family's exactness against upstream, expert-parallel ranks, training
    # runs): minutes of CPU each on 2 cores; two at once on the two workers each took more than the per-test
    # timeout on a busy machine, so they run one after another.
    "model-cpu": (
        "tests/model/test_moshi_checkpoint.py",
        "tests/model/test_moshi_hibiki.py",
        "tests/model/test_moshi_plan.py",
        "tests/model/test_moshi_prompt.py",
        "tests/model/test_moshi_served.py",
        "tests/model/test_parallel.py",
        "tests/model/test_shipped_checkpoint.py",
        "tests/model/test_timespeak_corpus.py",
    ),
}


def group_of(path: str) -> str:
    """The xdist group of the test module at ``path`` (relative to the repository root, ``/``-separated): the
    group that lists it or its folder (a prefix ending in ``/``), else the module's own path."""
    for name, prefixes in GROUPS.items():
        if any(path == p or (p.endswith("/") and path.startswith(p)) for p in prefixes):
            return name
    return path


def explicit_group(item: pytest.Item) -> str | None:
    mark = item.get_closest_marker("xdist_group")
    if mark is None:
        return None
    return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))


def assign_groups(items: list[pytest.Item], config: pytest.Config) -> None:
    """Mark every item without an ``xdist_group`` with its module's group, then put the items of ``GROUPS`` first
    (in that order; a stable sort, so file order is kept within each)."""
    rank = {name: i for i, name in enumerate(GROUPS)}
    groups: dict[str, str] = {}
    for item in items:
        name = explicit_group(item)
        if name is None:
            name = group_of(item.path.relative_to(config.rootpath).as_posix())
            item.add_marker(pytest.mark.xdist_group(name))
        groups[item.nodeid] = name
    items.sort(key=lambda item: rank.get(groups[item.nodeid], len(rank)))
