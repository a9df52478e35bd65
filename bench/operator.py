"""Operator benchmark: apply DuplexModels to a real control plane and time until all children exist.

    python bench/operator.py                 # 20 sequential models (p50/p95) + 100 at once (total)
    python bench/operator.py --json out.json

Starts its own etcd + kube-apiserver 1.20 + kube-controller-manager (tests/cluster/duplex_controlplane.py)
and ``duplex operator`` as a subprocess. "All children present" = every object the render functions
produce for that spec exists in the API (ConfigMap, Services, StatefulSet, Deployments, PDB).
Targets: p50 <= 2 s per model, 100 models <= 60 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "cluster"))

from duplex_cluster_plugin import OperatorProcess  # noqa: E402
from duplex_controlplane import control_plane, wait_until  # noqa: E402

from duplex.operator.crd import crd_manifest  # noqa: E402
from duplex.operator.kube import Kube, load_api_client  # noqa: E402
from duplex.operator.naming import (  # noqa: E402
    MANAGED_BY,
    MANAGED_BY_LABEL,
    ModelRef,
)
from duplex.operator.reconcile import child_kinds  # noqa: E402
from duplex.operator.render import ApiVersions, render_children  # noqa: E402
from duplex.operator.resolve import parse_spec, resolve  # noqa: E402

SPEC: dict[str, Any] = {"engine": {"shards": 2}, "replicas": 1}


def children_per_model(apis: ApiVersions) -> int:
    return len(render_children(ModelRef("x", "ns", "uid"), resolve(parse_spec(SPEC)), apis))


def count_children(kube: Kube, ns: str, apis: ApiVersions, selector: str) -> int:
    return sum(len(kube.list_objects(av, kind, ns, selector)) for av, kind in child_kinds(apis))


def create(kube: Kube, ns: str, name: str) -> None:
    kube.create(
        {"apiVersion": "duplex.ai/v1alpha1", "kind": "DuplexModel", "metadata": {"name": name}, "spec": SPEC}, ns
    )


def namespace(kube: Kube, name: str) -> str:
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def run(sequential: int, burst: int) -> dict[str, Any]:
    with control_plane([crd_manifest()]) as cp, tempfile.TemporaryDirectory() as logs:
        op = OperatorProcess(cp, Path(logs))
        op.start()
        try:
            kube = Kube(load_api_client(str(cp.kubeconfig)))
            apis = kube.api_versions()
            per_model = children_per_model(apis)

            ns = namespace(kube, "bench-seq")
            latencies = []
            for i in range(sequential):
                name = f"seq{i:03d}"
                t0 = time.perf_counter()
                create(kube, ns, name)
                wait_until(
                    lambda n=name: count_children(kube, ns, apis, f"duplex.ai/model={n}") == per_model,
                    60,
                    f"children of {name}",
                    interval=0.01,
                )
                latencies.append(time.perf_counter() - t0)

            ns = namespace(kube, "bench-burst")
            t0 = time.perf_counter()
            for i in range(burst):
                create(kube, ns, f"burst{i:03d}")
            created = time.perf_counter() - t0
            wait_until(
                lambda: count_children(kube, ns, apis, f"{MANAGED_BY_LABEL}={MANAGED_BY}") == burst * per_model,
                300,
                f"children of {burst} models",
                interval=0.1,
            )
            total = time.perf_counter() - t0
        finally:
            op.stop()
    lat = sorted(latencies)
    return {
        "children_per_model": per_model,
        "sequential_models": sequential,
        "p50_s": round(statistics.median(lat), 3),
        "p95_s": round(lat[max(0, round(0.95 * len(lat)) - 1)], 3),
        "max_s": round(lat[-1], 3),
        "burst_models": burst,
        "burst_create_calls_s": round(created, 2),
        "burst_total_s": round(total, 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "kubernetes": "kube-apiserver/kube-controller-manager 1.20.2 (Debian source build), etcd 3.4",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequential", type=int, default=20)
    p.add_argument("--burst", type=int, default=100)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    result = run(a.sequential, a.burst)
    print(json.dumps(result, indent=2))
    ok = result["p50_s"] <= 2.0 and result["burst_total_s"] <= 60.0
    print(f"targets (p50 <= 2 s, {a.burst} models <= 60 s): {'met' if ok else 'MISSED'}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
