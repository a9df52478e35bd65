"""The operator killed mid-reconcile and started again: shared by ``bench/faults.py operator-restart`` (100
models) and ``tests/operator/test_operator_restart.py`` (10).

"Converged" for one DuplexModel = its status was written for its current generation and it has exactly the
children its spec renders to, counted per kind ("duplicates" = a model with more of a kind than that)."""

from __future__ import annotations

import collections
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from duplex_cluster_plugin import OperatorProcess
from duplex_controlplane import wait_until

from duplex.operator.kube import Kube
from duplex.operator.naming import MANAGED_BY, MANAGED_BY_LABEL, ModelRef
from duplex.operator.reconcile import child_kinds
from duplex.operator.render import ApiVersions, render_children
from duplex.operator.resolve import parse_spec, resolve

SPEC: dict[str, Any] = {"engine": {"shards": 2}, "replicas": 1}
MODEL_LABEL = "duplex.ai/model"


def expected_kinds(apis: ApiVersions) -> collections.Counter[str]:
    """Children per kind that one model with ``SPEC`` renders to."""
    return collections.Counter(
        m["kind"] for m in render_children(ModelRef("x", "ns", "uid"), resolve(parse_spec(SPEC)), apis)
    )


def children_by_model(kube: Kube, ns: str, apis: ApiVersions) -> dict[str, collections.Counter[str]]:
    """Every operator-made object in ``ns``, counted per kind for each model."""
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for av, kind in child_kinds(apis):
        for obj in kube.list_objects(av, kind, ns, f"{MANAGED_BY_LABEL}={MANAGED_BY}"):
            counts[obj["metadata"].get("labels", {}).get(MODEL_LABEL, "?")][kind] += 1
    return counts


def status_current(m: dict[str, Any]) -> bool:
    status = m.get("status") or {}
    return bool(status.get("observedGeneration") == m["metadata"].get("generation") and status.get("conditions"))


@dataclass
class RestartRun:
    models: int
    children_per_model: int
    kill_after_s: float
    """Apply of the first model → SIGKILL of the operator."""
    children_at_kill: int
    converged_at_kill: int
    restart_to_converged_s: float
    """Operator start (process spawned) → every model converged."""
    apply_to_converged_s: float
    duplicates: list[tuple[str, str, int]] = field(default_factory=list)
    """(model, kind, count) where a model has more of a kind than its spec renders to."""
    missing: list[tuple[str, str, int]] = field(default_factory=list)


def converged(kube: Kube, ns: str, apis: ApiVersions, names: list[str]) -> int:
    """How many of ``names`` are converged (status current, children exactly as rendered)."""
    want = expected_kinds(apis)
    counts = children_by_model(kube, ns, apis)
    models = {m["metadata"]["name"]: m for m in kube.list_objects("duplex.ai/v1alpha1", "DuplexModel", ns, "")}
    return sum(1 for n in names if n in models and status_current(models[n]) and counts.get(n) == want)


def restart_mid_reconcile(
    op: OperatorProcess, kube: Kube, ns: str, n: int, kill_at: float, deadline_s: float = 300.0
) -> RestartRun:
    """Apply ``n`` models at once, SIGKILL the operator once ``kill_at`` of them have children, start it
    again and wait until every model converged; then count the children per kind per model."""
    apis = kube.api_versions()
    want = expected_kinds(apis)
    per_model = sum(want.values())
    names = [f"m{i:03d}" for i in range(n)]
    t0 = time.perf_counter()
    for name in names:
        body = {"apiVersion": "duplex.ai/v1alpha1", "kind": "DuplexModel", "metadata": {"name": name}, "spec": SPEC}
        kube.create(body, ns)
    threshold = max(1, int(kill_at * n))
    selector = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
    wait_until(  # one ConfigMap per model: the cheapest gauge of how far the reconcile got
        lambda: len(kube.list_objects("v1", "ConfigMap", ns, selector)) >= threshold,
        deadline_s,
        "children before the kill",
        interval=0.02,
    )
    assert op.proc is not None
    op.proc.send_signal(signal.SIGKILL)
    op.proc.wait()
    killed = time.perf_counter()
    at_kill = children_by_model(kube, ns, apis)
    converged_at_kill = converged(kube, ns, apis, names)
    restarted = time.perf_counter()
    op.start()
    wait_until(lambda: converged(kube, ns, apis, names) == n, deadline_s, f"{n} models converged", interval=0.2)
    done = time.perf_counter()
    final = children_by_model(kube, ns, apis)
    duplicates = [(m, k, c) for m, kinds in final.items() for k, c in kinds.items() if c > want[k]]
    none: collections.Counter[str] = collections.Counter()
    missing = [(m, k, final.get(m, none)[k]) for m in names for k in want if final.get(m, none)[k] < want[k]]
    return RestartRun(
        models=n,
        children_per_model=per_model,
        kill_after_s=killed - t0,
        children_at_kill=sum(sum(c.values()) for c in at_kill.values()),
        converged_at_kill=converged_at_kill,
        restart_to_converged_s=done - restarted,
        apply_to_converged_s=done - t0,
        duplicates=duplicates,
        missing=missing,
    )
