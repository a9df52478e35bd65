"""The operator against a real control plane (etcd + kube-apiserver 1.20 + kube-controller-manager).

No kubelet runs: the StatefulSet/Deployment controllers create pods, and tests mark them ready by patching
their status. Every wait is a poll with a deadline.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from duplex_cluster_plugin import OperatorProcess
from duplex_controlplane import wait_until
from kubernetes.client.exceptions import ApiException

from duplex.operator.children import CHILDREN, ApiVersions, child_kinds
from duplex.operator.kube import Kube
from duplex.operator.naming import ModelRef
from duplex.operator.render import render_children
from duplex.operator.resolve import parse_spec, resolve
from duplex.serving.spec import EngineSpec

DM = "duplex.ai/v1alpha1"
MODEL_LABEL = "duplex.ai/model"
TIMEOUT = 30.0
"""Every wait's deadline: well under the operator's resync period (120 s), so a repair within it came from a watch."""
APIS = ApiVersions.for_kube_version("1.20")
"""The versions the test control plane (Kubernetes 1.20) serves: policy/v1beta1, autoscaling/v2beta2."""

pytestmark = pytest.mark.usefixtures("duplex_operator")


def create_model(kube: Kube, ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = {"apiVersion": DM, "kind": "DuplexModel", "metadata": {"name": name}, "spec": spec}
    return kube.create(body, ns)


def model(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    m = kube.get_model(ns, name)
    assert m is not None
    return m


def condition(m: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (m.get("status") or {}).get("conditions", []) if c["type"] == type_), {})


def children(kube: Kube, ns: str, name: str) -> dict[str, list[str]]:
    """Names of the model's children of every kind in the table (duplex.operator.children)."""
    return {
        kind: sorted(o["metadata"]["name"] for o in kube.list_children(av, kind, ns, name))
        for av, kind in child_kinds(APIS)
    }


def expected_children(name: str, replicas: int, hpa: bool = False, agent: bool = False) -> dict[str, list[str]]:
    """Agent workers default to 0: no agent Deployment and no managed Redis unless asked for."""
    return {
        "ConfigMap": [f"{name}-config"],
        "Service": sorted(
            [name, *([f"{name}-redis"] if agent else [])]
            + [f"{name}-engine-{i}{s}" for i in range(replicas) for s in ("", "-leader")]
        ),
        "StatefulSet": [f"{name}-engine-{i}" for i in range(replicas)],
        "Deployment": sorted([f"{name}-front", *([f"{name}-agent", f"{name}-redis"] if agent else [])]),
        "ServiceAccount": [f"{name}-front"],  # the front's session picker watches the engines' EndpointSlices
        "Role": [f"{name}-front"],
        "RoleBinding": [f"{name}-front"],
        "PodDisruptionBudget": [f"{name}-engine"],
        "HorizontalPodAutoscaler": [name] if hpa else [],
        "NetworkPolicy": [],  # networkPolicy.enabled defaults to false
    }


def pods(kube: Kube, ns: str, selector: str) -> list[dict[str, Any]]:
    return kube.list_objects("v1", "Pod", ns, selector)


def mark_ready(kube: Kube, ns: str, pod: dict[str, Any]) -> None:
    """What a kubelet would report for a running, ready pod."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {
        "phase": "Running",
        "startTime": now,
        "conditions": [
            {"type": t, "status": "True", "lastTransitionTime": now}
            for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ],
    }
    kube.patch("v1", "Pod", ns, pod["metadata"]["name"], {"status": status}, subresource="status")


def mark_all_ready(kube: Kube, ns: str, name: str) -> None:
    for p in pods(kube, ns, f"{MODEL_LABEL}={name}"):
        if p["metadata"].get("deletionTimestamp") is None:
            mark_ready(kube, ns, p)


def patch_model(kube: Kube, ns: str, name: str, patch: dict[str, Any]) -> None:
    kube.patch(DM, "DuplexModel", ns, name, patch)


# --- CRD ---------------------------------------------------------------------------------------------


def test_crd_applies_defaults(kube: Kube, namespace: str) -> None:
    created = create_model(kube, namespace, "defaults", {"engine": {"shards": 2}})
    spec = created["spec"]
    assert spec["engine"]["shards"] == 2
    assert spec["engine"]["chunkMs"] == 200 and spec["engine"]["backend"] == "torch"
    assert spec["replicas"] == 1 and spec["slo"] == {"turnTakingP50S": 0.3, "turnTakingP95S": 0.45}
    assert spec["agent"]["tools"] == ["clock", "calculator"] and spec["agent"]["redis"]["managed"] is True
    assert spec["agent"]["workers"] == 0
    assert spec["model"]["preset"] == "tiny"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"engine": {"chunkMs": 50}}, "spec.engine.chunkMs"),
        ({"engine": {"backend": "onnx"}}, "spec.engine.backend"),
        ({"engine": {"shards": "many"}}, "spec.engine.shards"),
        ({"replicas": -1}, "spec.replicas"),
    ],
)
def test_crd_rejects_schema_violations(kube: Kube, namespace: str, spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ApiException) as err:
        create_model(kube, namespace, "bad", spec)
    assert err.value.status == 422
    assert field in (err.value.body or "")


def test_invalid_spec_is_conditioned_and_creates_nothing(kube: Kube, namespace: str) -> None:
    create_model(kube, namespace, "odd", {"engine": {"shards": 3}})  # tiny has 8 experts
    wait_until(
        lambda: condition(model(kube, namespace, "odd"), "Degraded").get("reason") == "InvalidSpec",
        TIMEOUT,
        "Degraded=InvalidSpec",
    )
    m = model(kube, namespace, "odd")
    degraded = condition(m, "Degraded")
    assert degraded["status"] == "True" and "spec.engine.shards" in degraded["message"]
    assert "not divisible by 3" in degraded["message"]
    assert condition(m, "Ready")["status"] == "False"
    assert m["status"]["observedGeneration"] == m["metadata"]["generation"]
    assert all(v == [] for v in children(kube, namespace, "odd").values())
    # fixing the field brings the children
    patch_model(kube, namespace, "odd", {"spec": {"engine": {"shards": 4}}})
    wait_until(lambda: children(kube, namespace, "odd")["StatefulSet"] == ["odd-engine-0"], TIMEOUT, "children")
    wait_until(
        lambda: condition(model(kube, namespace, "odd"), "Degraded").get("status") == "False", TIMEOUT, "Degraded=False"
    )


@pytest.mark.parametrize(
    ("example", "field"),
    [("03-tensorrt-llm.yaml", "spec.engine.backend"), ("06-invalid-shards.yaml", "spec.engine.shards")],
)
def test_rejected_examples_are_conditioned_naming_the_field(
    kube: Kube, namespace: str, example: str, field: str
) -> None:
    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / example).read_text())
    name = doc["metadata"]["name"]
    create_model(kube, namespace, name, doc["spec"])
    wait_until(
        lambda: condition(model(kube, namespace, name), "Degraded").get("reason") == "InvalidSpec",
        TIMEOUT,
        "Degraded=InvalidSpec",
    )
    degraded = condition(model(kube, namespace, name), "Degraded")
    assert degraded["status"] == "True" and field in degraded["message"]
    assert all(v == [] for v in children(kube, namespace, name).values())  # nothing that would pretend to run


def test_agent_workers_render_the_agent_and_redis(kube: Kube, namespace: str) -> None:
    """The agent ships: workers > 0 is a normal spec (no Degraded), its children come and go with it."""
    create_model(kube, namespace, "ag", {"agent": {"workers": 2}})
    wait_until(
        lambda: children(kube, namespace, "ag") == expected_children("ag", 1, agent=True),
        TIMEOUT,
        "children with agent and Redis",
    )
    wait_until(
        lambda: condition(model(kube, namespace, "ag"), "Degraded").get("status") == "False", TIMEOUT, "Degraded=False"
    )
    patch_model(kube, namespace, "ag", {"spec": {"agent": {"workers": 0}}})
    wait_until(lambda: children(kube, namespace, "ag") == expected_children("ag", 1), TIMEOUT, "agent pruned")


def network_policies(kube: Kube, ns: str, name: str) -> list[str]:
    return sorted(o["metadata"]["name"] for o in kube.list_children("networking.k8s.io/v1", "NetworkPolicy", ns, name))


def test_network_policies_come_and_go_and_latest_is_degraded(kube: Kube, namespace: str) -> None:
    """The API server takes the rendered policies (a Kubernetes 1.20 one here) and the operator prunes them when
    turned off; an unpinned image is refused with Degraded naming the field."""
    create_model(kube, namespace, "np", {"agent": {"workers": 1}, "networkPolicy": {"enabled": True}})
    expected = ["np-agent", "np-engine", "np-front", "np-redis"]
    wait_until(lambda: network_policies(kube, namespace, "np") == expected, TIMEOUT, "NetworkPolicies")
    patch_model(kube, namespace, "np", {"spec": {"networkPolicy": {"enabled": False}}})
    wait_until(lambda: network_policies(kube, namespace, "np") == [], TIMEOUT, "NetworkPolicies pruned")
    patch_model(kube, namespace, "np", {"spec": {"engine": {"image": "duplex:latest"}}})
    wait_until(
        lambda: condition(model(kube, namespace, "np"), "Degraded").get("status") == "True",
        TIMEOUT,
        "Degraded=True",
    )
    degraded = condition(model(kube, namespace, "np"), "Degraded")
    assert degraded["reason"] == "InvalidSpec" and "spec.engine.image" in degraded["message"]


def test_model_that_cannot_fit_is_conditioned(kube: Kube, namespace: str) -> None:
    create_model(
        kube,
        namespace,
        "huge",
        {
            "model": {"preset": "tml-interaction-small"},
            "engine": {"shards": "auto", "gpusPerShard": 1, "gpuMemoryGib": 8},
        },
    )
    wait_until(
        lambda: condition(model(kube, namespace, "huge"), "Degraded").get("reason") == "InvalidSpec",
        TIMEOUT,
        "Degraded=InvalidSpec",
    )
    assert "spec.engine.gpuMemoryGib" in condition(model(kube, namespace, "huge"), "Degraded")["message"]
    assert children(kube, namespace, "huge")["StatefulSet"] == []


# --- children, readiness -------------------------------------------------------------------------------


def test_children_ranks_owner_refs_and_ready(kube: Kube, namespace: str) -> None:
    uid = create_model(
        kube, namespace, "talk", {"engine": {"shards": 2}, "replicas": 2, "autoscaling": {"enabled": True}}
    )["metadata"]["uid"]
    want = expected_children("talk", 2, hpa=True)
    wait_until(lambda: children(kube, namespace, "talk") == want, TIMEOUT, "all children")
    for av, kind in child_kinds(APIS):
        for obj in kube.list_children(av, kind, namespace, "talk"):
            refs = obj["metadata"]["ownerReferences"]
            assert [(r["kind"], r["name"], r["uid"], r["controller"]) for r in refs] == [
                ("DuplexModel", "talk", uid, True)
            ], (kind, obj["metadata"]["name"])
    sts = kube.get("apps/v1", "StatefulSet", namespace, "talk-engine-1")
    assert sts is not None
    container = sts["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env == {"DUPLEX_LEADER_ADDR": "$(TALK_ENGINE_1_LEADER_SERVICE_HOST):29500"}
    assert container["args"][:4] == ["engine", "--rank-from-hostname", "--world-size", "2"]
    leader = kube.get("v1", "Service", namespace, "talk-engine-1-leader")
    assert leader is not None and leader["spec"]["clusterIP"].startswith("198.18.")
    # the StatefulSet controller creates the ranks: pod ordinal = rank
    wait_until(
        lambda: (
            sorted(p["metadata"]["name"] for p in pods(kube, namespace, "duplex.ai/replica=1"))
            == ["talk-engine-1-0", "talk-engine-1-1"]
        ),
        TIMEOUT,
        "rank pods",
    )
    # status is written after the children are applied: wait for it before reading it
    wait_until(lambda: condition(model(kube, namespace, "talk"), "Ready") != {}, TIMEOUT, "status")
    m = model(kube, namespace, "talk")
    assert condition(m, "Ready")["status"] == "False"
    assert m["status"]["shardPlan"]["shards"] == 2 and m["status"]["endpoint"] == f"talk.{namespace}.svc:8080"
    # 2 replicas x 2 ranks + the front pod
    wait_until(lambda: len(pods(kube, namespace, f"{MODEL_LABEL}=talk")) == 5, TIMEOUT, "all pods")
    mark_all_ready(kube, namespace, "talk")
    wait_until(lambda: condition(model(kube, namespace, "talk"), "Ready").get("status") == "True", TIMEOUT, "Ready")
    m = model(kube, namespace, "talk")
    assert m["status"]["readyReplicas"] == 2
    assert condition(m, "Progressing")["status"] == "False" and condition(m, "Degraded")["status"] == "False"
    assert condition(m, "Ready")["observedGeneration"] == m["metadata"]["generation"]
    # scale subresource: what the HPA reads and writes
    scale = kube.get(DM, "DuplexModel", namespace, "talk", subresource="scale")
    assert scale is not None and scale["spec"]["replicas"] == 2 and scale["status"]["replicas"] == 2
    assert scale["status"]["selector"] == "duplex.ai/model=talk,app.kubernetes.io/component=engine"


# --- drift, scale, delete, restart ---------------------------------------------------------------------


def test_drift_is_repaired(kube: Kube, namespace: str) -> None:
    create_model(kube, namespace, "drift", {"engine": {"shards": 2}})
    wait_until(lambda: children(kube, namespace, "drift") == expected_children("drift", 1), TIMEOUT, "children")
    # deleted by hand
    kube.delete("apps/v1", "StatefulSet", namespace, "drift-engine-0")
    kube.delete("v1", "Service", namespace, "drift-engine-0-leader")
    kube.delete("v1", "ConfigMap", namespace, "drift-config")
    wait_until(lambda: children(kube, namespace, "drift") == expected_children("drift", 1), TIMEOUT, "recreated")
    # edited by hand
    kube.patch("apps/v1", "StatefulSet", namespace, "drift-engine-0", {"spec": {"replicas": 5}})
    kube.patch(
        "apps/v1",
        "Deployment",
        namespace,
        "drift-front",
        {"spec": {"template": {"spec": {"containers": [{"name": "envoy", "image": "evil:1"}]}}}},
        content_type="application/strategic-merge-patch+json",
    )

    def repaired() -> bool:
        sts = kube.get("apps/v1", "StatefulSet", namespace, "drift-engine-0")
        gw = kube.get("apps/v1", "Deployment", namespace, "drift-front")
        assert sts is not None and gw is not None
        image = gw["spec"]["template"]["spec"]["containers"][0]["image"]
        return bool(sts["spec"]["replicas"] == 2 and image == EngineSpec().image)

    wait_until(repaired, TIMEOUT, "hand edits reverted")


EVERYTHING: dict[str, Any] = {
    "engine": {"shards": 2},
    "replicas": 2,
    "autoscaling": {"enabled": True, "maxReplicas": 3},
    "gateway": {"replicas": 2},
    "agent": {"workers": 1},
    "networkPolicy": {"enabled": True},
}
"""A model with every optional child: at least one child of every kind in the table."""


def rendered_names(ref: ModelRef, spec: dict[str, Any]) -> dict[str, list[str]]:
    """What ``children`` shows once the operator has applied ``spec`` (the names do not depend on the uid)."""
    out = render_children(ref, resolve(parse_spec(spec)), APIS)
    return {kind: sorted(m["metadata"]["name"] for m in out if m["kind"] == kind) for _, kind in child_kinds(APIS)}


def uids(kube: Kube, ns: str, name: str) -> dict[str, dict[str, str]]:
    """kind -> {child name: uid} over every kind in the table."""
    return {
        kind: {o["metadata"]["name"]: o["metadata"]["uid"] for o in kube.list_children(av, kind, ns, name)}
        for av, kind in child_kinds(APIS)
    }


def test_a_child_of_every_kind_is_watched(kube: Kube, namespace: str) -> None:
    """Every kind in the table is watched: one child of each kind deleted by hand is re-created, and a hand edit
    of a NetworkPolicy reverted, within TIMEOUT — long before the resync timer (120 s) would."""
    assert kube.api_versions() == APIS
    assert {kind for _, kind in child_kinds(APIS)} == {c.kind for c in CHILDREN if c.watched}
    create_model(kube, namespace, "w", EVERYTHING)
    want = rendered_names(ModelRef(name="w", namespace=namespace, uid=""), EVERYTHING)
    assert all(want.values())
    wait_until(lambda: children(kube, namespace, "w") == want, TIMEOUT, "every child")
    before = uids(kube, namespace, "w")
    victims = {kind: names[0] for kind, names in want.items()}
    for av, kind in child_kinds(APIS):
        kube.delete(av, kind, namespace, victims[kind])

    def recreated() -> bool:
        now = uids(kube, namespace, "w")
        missing = {k: n for k, n in victims.items() if now[k].get(n) in (None, before[k][n])}
        assert not missing, f"not re-created: {missing}"
        return True

    wait_until(recreated, TIMEOUT, "every deleted child re-created")
    # an edit of a NetworkPolicy the operator owns is a change too
    front_policy = kube.get("networking.k8s.io/v1", "NetworkPolicy", namespace, "w-front")
    assert front_policy is not None
    rendered_ingress = front_policy["spec"]["ingress"]
    kube.patch("networking.k8s.io/v1", "NetworkPolicy", namespace, "w-front", {"spec": {"ingress": []}})

    def reverted() -> bool:
        policy = kube.get("networking.k8s.io/v1", "NetworkPolicy", namespace, "w-front")
        return policy is not None and policy["spec"].get("ingress") == rendered_ingress

    wait_until(reverted, TIMEOUT, "the NetworkPolicy's ingress restored")


def test_a_child_of_every_kind_is_pruned_when_no_longer_desired(kube: Kube, namespace: str) -> None:
    """One more child of every kind, owned and labelled like the rest but not desired (a name an older shape of
    the model had): the next reconcile deletes exactly those."""
    uid = create_model(kube, namespace, "pr", EVERYTHING)["metadata"]["uid"]
    ref = ModelRef(name="pr", namespace=namespace, uid=uid)
    desired = rendered_names(ref, EVERYTHING)
    wait_until(lambda: children(kube, namespace, "pr") == desired, TIMEOUT, "every child")
    rendered = render_children(ref, resolve(parse_spec(EVERYTHING)), APIS)
    made = {}
    for _, kind in child_kinds(APIS):
        stray = next(m for m in rendered if m["kind"] == kind)
        applied = kube.apply({**stray, "metadata": {**stray["metadata"], "name": f"{stray['metadata']['name']}-stray"}})
        made[kind] = applied["metadata"]["uid"]  # it existed (the operator watches every kind: it may go at once)
    assert len(made) == len(child_kinds(APIS)) and all(made.values())
    patch_model(kube, namespace, "pr", {"spec": {"gateway": {"replicas": 3}}})  # any change: a full reconcile

    def pruned() -> bool:
        now = children(kube, namespace, "pr")
        assert now == desired, {k: sorted(set(now[k]) ^ set(desired[k])) for k in now if now[k] != desired[k]}
        return True

    wait_until(pruned, TIMEOUT, "every stray pruned, the rest kept")


def test_scale_changes_roll(kube: Kube, namespace: str) -> None:
    create_model(kube, namespace, "sc", {"engine": {"shards": 2}, "replicas": 1})
    wait_until(lambda: children(kube, namespace, "sc") == expected_children("sc", 1), TIMEOUT, "children")
    kube.patch(DM, "DuplexModel", namespace, "sc", {"spec": {"replicas": 3}}, subresource="scale")  # as the HPA does
    wait_until(lambda: children(kube, namespace, "sc") == expected_children("sc", 3), TIMEOUT, "scaled up")
    front = kube.get("apps/v1", "Deployment", namespace, "sc-front")
    assert front is not None
    (picker,) = [c for c in front["spec"]["template"]["spec"]["containers"] if c["name"] == "picker"]
    selector = picker["args"][picker["args"].index("--engine-selector") + 1]
    # the picker's selector picks exactly the three leader Services (and so their EndpointSlices)
    leaders = kube.list_objects("v1", "Service", namespace, selector)
    assert sorted(m["metadata"]["name"] for m in leaders) == [f"sc-engine-{i}-leader" for i in range(3)]
    patch_model(kube, namespace, "sc", {"spec": {"replicas": 1, "engine": {"shards": 4}}})
    wait_until(lambda: children(kube, namespace, "sc") == expected_children("sc", 1), TIMEOUT, "scaled down")

    def resharded() -> bool:
        sts = kube.get("apps/v1", "StatefulSet", namespace, "sc-engine-0")
        return sts is not None and sts["spec"]["replicas"] == 4

    wait_until(resharded, TIMEOUT, "4 ranks")
    wait_until(lambda: len(pods(kube, namespace, "duplex.ai/replica=0")) == 4, TIMEOUT, "4 rank pods")
    wait_until(
        lambda: model(kube, namespace, "sc")["status"].get("shardPlan", {}).get("shards") == 4, TIMEOUT, "status shards"
    )


def test_delete_garbage_collects_everything(kube: Kube, namespace: str) -> None:
    create_model(kube, namespace, "gone", {"engine": {"shards": 2}})
    wait_until(lambda: children(kube, namespace, "gone") == expected_children("gone", 1), TIMEOUT, "children")
    wait_until(lambda: len(pods(kube, namespace, f"{MODEL_LABEL}=gone")) == 3, TIMEOUT, "pods")
    kube.delete(DM, "DuplexModel", namespace, "gone")
    wait_until(lambda: all(v == [] for v in children(kube, namespace, "gone").values()), 60, "children collected")
    wait_until(lambda: pods(kube, namespace, f"{MODEL_LABEL}=gone") == [], 60, "pods collected")


def test_operator_restart_creates_no_duplicates(kube: Kube, namespace: str, duplex_operator: OperatorProcess) -> None:
    create_model(kube, namespace, "rs", {"engine": {"shards": 2}, "replicas": 2})
    want = expected_children("rs", 2)
    wait_until(lambda: children(kube, namespace, "rs") == want, TIMEOUT, "children")
    uids = {
        (av, k, o["metadata"]["name"]): o["metadata"]["uid"]
        for av, k in [("v1", "Service"), ("apps/v1", "StatefulSet"), ("apps/v1", "Deployment")]
        for o in kube.list_children(av, k, namespace, "rs")
    }
    duplex_operator.stop()
    # while it is down, a child disappears; the restarted operator must put it back, and only it
    kube.delete("apps/v1", "Deployment", namespace, "rs-front")
    duplex_operator.start()
    wait_until(lambda: children(kube, namespace, "rs") == want, TIMEOUT, "front Deployment restored after restart")
    after = {
        (av, k, o["metadata"]["name"]): o["metadata"]["uid"]
        for av, k in [("v1", "Service"), ("apps/v1", "StatefulSet"), ("apps/v1", "Deployment")]
        for o in kube.list_children(av, k, namespace, "rs")
    }
    changed = {key for key in uids if uids[key] != after.get(key)}
    assert changed == {("apps/v1", "Deployment", "rs-front")}
    assert len(pods(kube, namespace, "duplex.ai/replica=0")) == 2


def test_twenty_models_reconcile(kube: Kube, namespace: str, record_property: Any) -> None:
    n = 20
    start = time.monotonic()
    for i in range(n):
        create_model(kube, namespace, f"m{i:02d}", {"engine": {"shards": 2}})

    def all_present() -> bool:
        sts = kube.list_objects("apps/v1", "StatefulSet", namespace, "app.kubernetes.io/managed-by=duplex-operator")
        deps = kube.list_objects("apps/v1", "Deployment", namespace, "app.kubernetes.io/managed-by=duplex-operator")
        return len(sts) == n and len(deps) == n

    wait_until(all_present, 60, f"{n} models' children", interval=0.05)
    elapsed = time.monotonic() - start
    record_property("twenty_models_reconcile_s", round(elapsed, 2))
    print(f"\n{n} DuplexModels: all children present after {elapsed:.2f} s")
    for i in range(n):
        assert children(kube, namespace, f"m{i:02d}") == expected_children(f"m{i:02d}", 1)
    assert elapsed < 30


@pytest.mark.parametrize(
    "path",
    sorted(
        p
        for p in (Path(__file__).resolve().parents[2] / "examples").glob("*.yaml")
        if yaml.safe_load(p.read_text())["kind"] == "DuplexModel"  # 07-kserve: tests/kserve
    ),
    ids=lambda p: p.name,
)
def test_examples_are_accepted_by_the_api_server(kube: Kube, namespace: str, path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    out = kube.create(doc, namespace, dry_run=True)
    assert out["spec"]["engine"]["chunkMs"] in (doc["spec"].get("engine", {}).get("chunkMs"), 200)
