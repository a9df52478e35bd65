"""Pure render tests: spec -> manifests, validated against current Kubernetes schemas (kubernetes-validate)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from duplex import __version__
from duplex.cli import app
from duplex.model.config import get_preset
from duplex.model.spec import ModelSource
from duplex.operator.children import CHILDREN, STATUS_KINDS, child_kinds, rbac_rules
from duplex.operator.crd import crd_manifest
from duplex.operator.naming import ModelRef, agent_stream_prefix, service_env_prefix
from duplex.operator.probe import main as probe_main
from duplex.operator.render import ApiVersions, render_children
from duplex.operator.render.common import Manifest
from duplex.operator.resolve import InvalidSpec, parse_spec, resolve
from duplex.operator.schema import openapi_schema, values_json_schema
from duplex.operator.spec import DuplexModelSpec
from duplex.operator.status import compute_status, observe, shard_plan_status
from duplex.serving.ranks import rank_from_hostname
from duplex.serving.spec import AgentSpec, EngineSpec, GatewaySpec

K8S_VERSION = kubernetes_validate.latest_version()  # the newest schemas the installed package ships
REF = ModelRef(name="talk", namespace="prod", uid="0f0e-uid")
CURRENT = ApiVersions()
K120 = ApiVersions.from_served({"policy/v1beta1", "autoscaling/v1", "autoscaling/v2beta1", "autoscaling/v2beta2"})

SPECS: dict[str, dict[str, Any]] = {
    "minimal": {},
    "sharded": {"engine": {"shards": 4}, "replicas": 3},
    "autoscaled-auth-tls": {
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6},
        "replicas": 2,
        "gateway": {"replicas": 2, "authSecret": "keys", "tlsSecret": "tls", "serviceType": "LoadBalancer"},
    },
    "external-redis-secret": {"agent": {"workers": 3, "redis": {"managed": False, "urlSecret": "redis-url"}}},
    "managed-redis": {"agent": {"workers": 1}},
    "front-autoscaled": {"gateway": {"replicas": 2, "maxReplicas": 8, "targetCpuPercent": 60}},
    "gpu-autoshard": {
        "model": {"preset": "tml-interaction-small", "dtype": "bfloat16"},
        "engine": {"shards": "auto", "gpusPerShard": 1, "gpuMemoryGib": 80, "maxSessions": 32},
    },
    "gpu-16-shards": {
        "model": {"preset": "tml-interaction-small", "dtype": "bfloat16"},
        "engine": {"device": "cuda", "shards": 16, "gpusPerShard": 1, "gpuMemoryGib": 141},
    },
}
TENSORRT_LLM = {**SPECS["gpu-16-shards"], "engine": {**SPECS["gpu-16-shards"]["engine"], "backend": "tensorrt-llm"}}


def render(raw: dict[str, Any], apis: ApiVersions = CURRENT) -> list[Manifest]:
    return render_children(REF, resolve(parse_spec(raw)), apis)


def by_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container["env"]}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_rendered_manifest_is_valid_for_current_kubernetes(name: str) -> None:
    for m in render(SPECS[name]):
        kubernetes_validate.validate(m, K8S_VERSION, strict=True)


def test_crd_is_valid_for_current_kubernetes() -> None:
    kubernetes_validate.validate(crd_manifest(), K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_child_is_owned_and_labelled(name: str) -> None:
    for m in render(SPECS[name]):
        meta = m["metadata"]
        assert meta["namespace"] == "prod"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "duplex.ai/v1alpha1",
                "kind": "DuplexModel",
                "name": "talk",
                "uid": "0f0e-uid",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["duplex.ai/model"] == "talk"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "duplex-operator"


def test_one_statefulset_per_replica_with_rank_and_leader_wiring() -> None:
    out = render(SPECS["sharded"])
    sts = by_kind(out, "StatefulSet")
    assert [s["metadata"]["name"] for s in sts] == ["talk-engine-0", "talk-engine-1", "talk-engine-2"]
    for i, s in enumerate(sts):
        spec = s["spec"]
        assert spec["replicas"] == 4  # pods = ranks 0..3
        assert spec["serviceName"] == f"talk-engine-{i}"
        assert spec["podManagementPolicy"] == "Parallel"
        c = spec["template"]["spec"]["containers"][0]
        assert c["command"] == ["duplex"]
        assert c["args"][:5] == ["engine", "--rank-from-hostname", "--world-size", "4", "--leader"]
        assert c["args"][5] == "$(DUPLEX_LEADER_ADDR)"
        assert env_of(c) == {"DUPLEX_LEADER_ADDR": f"$(TALK_ENGINE_{i}_LEADER_SERVICE_HOST):29500"}
        assert "nvidia.com/gpu" not in c["resources"]["limits"]
    services = {s["metadata"]["name"]: s for s in by_kind(out, "Service")}
    assert services["talk-engine-1"]["spec"]["clusterIP"] == "None"
    leader = services["talk-engine-1-leader"]["spec"]
    assert leader["selector"] == {"statefulset.kubernetes.io/pod-name": "talk-engine-1-0"}
    assert leader["publishNotReadyAddresses"] is True
    # Services come before the workloads that read their *_SERVICE_HOST variables.
    order = [m["kind"] for m in out]
    assert max(i for i, k in enumerate(order) if k == "Service") < order.index("StatefulSet")


def test_config_map_is_what_the_serving_specs_parse() -> None:
    cm = by_kind(render(SPECS["sharded"]), "ConfigMap")[0]["data"]
    engine_json = json.loads(cm["engine.json"])
    assert EngineSpec.model_validate(engine_json["engine"]).shards == 4
    ModelSource.model_validate(engine_json["model"])
    assert GatewaySpec.model_validate(json.loads(cm["gateway.json"])["gateway"]).open_access is True
    assert "agent.json" not in cm  # no agent workers by default
    agent_cm = by_kind(render(SPECS["managed-redis"]), "ConfigMap")[0]["data"]
    assert AgentSpec.model_validate(json.loads(agent_cm["agent.json"])["agent"]).workers == 1


def test_engine_liveness_probe_checks_rank_zero_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 is alive while its gRPC port accepts; a rank > 0 with metrics off serves nothing and passes
    while it runs. (Readiness = gRPC health SERVING, against a real engine: test_rendered_processes.py.)"""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        spec = {"engine": {"port": port, "metricsPort": 0}}
        c = by_kind(render(spec), "StatefulSet")[0]["spec"]["template"]["spec"]["containers"][0]
        command = c["livenessProbe"]["exec"]["command"]
        assert command[:3] == ["python3", "-m", "duplex.operator.probe"]
        assert c["startupProbe"]["exec"]["command"] == command

        def probe(hostname: str) -> int:
            monkeypatch.setenv("HOSTNAME", hostname)  # the pod name, as the container runtime sets it
            return probe_main(command[3:])

        assert probe("talk-engine-0-1") == 0  # rank 1: alive while running
        assert probe("talk-engine-0-0") == 1  # rank 0, nothing listening yet: not alive
        listener.listen()
        assert probe("talk-engine-0-0") == 0  # rank 0 listening: alive
        assert probe("not-a-statefulset-pod") == 1  # no ordinal: fails, names why (no traceback)


def test_rank_comes_from_the_pod_ordinal() -> None:
    assert rank_from_hostname("talk-engine-12-3") == 3
    assert rank_from_hostname("m-engine-0-0") == 0
    assert service_env_prefix("talk-engine-0-leader") == "TALK_ENGINE_0_LEADER"
    for bad in ("talk-engine", "talk-engine-3x", "7"):
        with pytest.raises(ValueError, match="ordinal"):
            rank_from_hostname(bad)


def test_gpu_rendering() -> None:
    out = render(SPECS["gpu-16-shards"])
    sts = by_kind(out, "StatefulSet")[0]
    c = sts["spec"]["template"]["spec"]["containers"][0]
    assert sts["spec"]["replicas"] == 16 and c["image"] == f"duplex:{__version__}"
    engine_json = json.loads(by_kind(out, "ConfigMap")[0]["data"]["engine.json"])
    assert engine_json["engine"]["device"] == "cuda" and engine_json["engine"]["shards"] == 16
    assert engine_json["model"]["preset"] == "tml-interaction-small"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    pod = sts["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]


def test_tensorrt_llm_is_rejected_naming_the_backend() -> None:
    """No engine reads the backend yet: nothing is rendered that would pretend to run on it."""
    with pytest.raises(InvalidSpec) as err:
        resolve(parse_spec(TENSORRT_LLM))
    assert [p.field for p in err.value.problems] == ["spec.engine.backend"]
    assert "not available in this version" in err.value.problems[0].message


def test_shards_auto_asks_the_planner() -> None:
    resolved = resolve(parse_spec(SPECS["gpu-autoshard"]))
    cfg = get_preset("tml-interaction-small")
    assert resolved.shards_source == "planner"
    assert resolved.plan is not None and resolved.shards == resolved.plan.shards
    assert resolved.shards > 1 and cfg.n_experts % resolved.shards == 0
    sts = by_kind(render(SPECS["gpu-autoshard"]), "StatefulSet")[0]
    assert sts["spec"]["replicas"] == resolved.shards


def test_version_dependent_kinds_follow_discovery() -> None:
    spec = SPECS["autoscaled-auth-tls"]
    old = render(spec, K120)
    assert {m["apiVersion"] for m in by_kind(old, "PodDisruptionBudget")} == {"policy/v1beta1"}
    assert by_kind(old, "HorizontalPodAutoscaler")[0]["apiVersion"] == "autoscaling/v2beta2"
    new = render(spec)
    assert by_kind(new, "HorizontalPodAutoscaler")[0]["apiVersion"] == "autoscaling/v2"
    hpa = by_kind(new, "HorizontalPodAutoscaler")[0]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "duplex.ai/v1alpha1", "kind": "DuplexModel", "name": "talk"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)


def test_front_pod_auth_tls_and_the_engine_watch() -> None:
    out = render(SPECS["autoscaled-auth-tls"])
    dep = next(m for m in by_kind(out, "Deployment") if m["metadata"]["name"] == "talk-front")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    envoy, picker = pod["containers"]
    assert (envoy["name"], picker["name"]) == ("envoy", "picker")
    assert {v["name"] for v in pod["volumes"]} == {"config", "tmp", "eds", "auth", "tls", "api-token"}
    # TLS ends in Envoy; the API keys are the picker's
    assert {"name": "tls", "mountPath": "/etc/duplex/tls", "readOnly": True} in envoy["volumeMounts"]
    assert {"name": "auth", "mountPath": "/etc/duplex/auth", "readOnly": True} in picker["volumeMounts"]
    assert not {"auth"} & {m["name"] for m in envoy["volumeMounts"]}
    assert not {"tls"} & {m["name"] for m in picker["volumeMounts"]}
    # the endpoint file: written by the picker, only read by Envoy, in the emptyDir they share
    eds = {"name": "eds", "mountPath": "/var/run/duplex/eds"}
    assert {**eds, "readOnly": False} in picker["volumeMounts"] and {**eds, "readOnly": True} in envoy["volumeMounts"]
    assert picker["args"][picker["args"].index("--eds-path") + 1] == "/var/run/duplex/eds/engines.json"
    assert envoy["args"][envoy["args"].index("--eds-path") + 1] == "/var/run/duplex/eds/engines.json"
    assert envoy["args"][envoy["args"].index("--picker") + 1] == "127.0.0.1:9095"
    assert picker["args"][picker["args"].index("--bind") + 1] == "127.0.0.1"  # Envoy asks it over loopback
    assert "env" not in envoy  # Envoy gets no engine address but from the picker's file
    # its worker threads come from the spec, through gateway.json (no flag overrides them)
    assert "--concurrency" not in envoy["args"]
    threads = render({"gateway": {"envoyConcurrency": 4}})
    assert json.loads(by_kind(threads, "ConfigMap")[0]["data"]["gateway.json"])["gateway"]["envoy_concurrency"] == 4
    c = picker
    gateway_json = json.loads(by_kind(out, "ConfigMap")[0]["data"]["gateway.json"])["gateway"]
    assert gateway_json["api_keys_file"] == "/etc/duplex/auth/keys" and gateway_json["open_access"] is False
    assert (gateway_json["tls_cert_file"], gateway_json["tls_key_file"]) == (
        "/etc/duplex/tls/tls.crt",
        "/etc/duplex/tls/tls.key",
    )
    plain = json.loads(by_kind(render({}), "ConfigMap")[0]["data"]["gateway.json"])["gateway"]
    assert plain["tls_cert_file"] is None and plain["tls_key_file"] is None
    # the engines come from the Kubernetes API: the leader Services' EndpointSlices, in the model's namespace
    arg = lambda flag: c["args"][c["args"].index(flag) + 1]  # noqa: E731
    assert arg("--engine-selector") == "duplex.ai/model=talk,app.kubernetes.io/component=engine,duplex.ai/leader=true"
    assert arg("--engine-namespace") == "prod" and "--engines" not in c["args"] and "env" not in c
    leaders = [m for m in by_kind(out, "Service") if m["metadata"]["name"].endswith("-leader")]
    assert len(leaders) == 2 and all(m["metadata"]["labels"]["duplex.ai/leader"] == "true" for m in leaders)
    assert [m for m in by_kind(out, "Service") if "duplex.ai/leader" in m["metadata"]["labels"]] == leaders
    svc = next(m for m in by_kind(out, "Service") if m["metadata"]["name"] == "talk")
    assert svc["spec"]["type"] == "LoadBalancer"


def test_realtime_port_puts_the_websocket_on_the_engines_and_the_page_on_the_picker() -> None:
    out = render({"gateway": {"httpPort": 8088, "tlsSecret": "tls", "authSecret": "keys"}})
    dep = next(m for m in by_kind(out, "Deployment") if m["metadata"]["name"] == "talk-front")
    envoy, picker = dep["spec"]["template"]["spec"]["containers"]
    assert (envoy["name"], picker["name"]) == ("envoy", "picker")
    # Envoy serves the public HTTP port (with its TLS): WebSockets to the engines, the rest to the picker's app
    assert {"name": "http", "containerPort": 8088, "protocol": "TCP"} in envoy["ports"]
    eds = "/var/run/duplex/eds/realtime.json"
    assert envoy["args"][envoy["args"].index("--realtime") + 1] == "127.0.0.1:9097"
    assert envoy["args"][envoy["args"].index("--realtime-eds-path") + 1] == eds
    assert picker["args"][picker["args"].index("--http-port") + 1] == "9097"
    assert picker["args"][picker["args"].index("--realtime-eds-path") + 1] == eds
    # each engine serves the WebSocket on 7071 (engine.httpPort unset), reached through its leader Service
    data = by_kind(out, "ConfigMap")[0]["data"]
    assert json.loads(data["engine.json"])["engine"]["http_port"] == 7071
    assert sorted(data) == ["engine.json", "gateway.json"]
    (sts,) = by_kind(out, "StatefulSet")
    engine = sts["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "realtime", "containerPort": 7071, "protocol": "TCP"} in engine["ports"]
    leader = next(m for m in by_kind(out, "Service") if m["metadata"]["name"].endswith("-leader"))
    assert {"name": "realtime", "port": 7071, "targetPort": "realtime", "protocol": "TCP"} in leader["spec"]["ports"]
    svc = next(m for m in by_kind(out, "Service") if m["metadata"]["name"] == "talk")
    assert {"name": "http", "port": 8088, "targetPort": "http", "protocol": "TCP"} in svc["spec"]["ports"]
    assert svc["spec"]["selector"] == {"duplex.ai/model": "talk", "app.kubernetes.io/component": "front"}
    own = render({"gateway": {"httpPort": 8088}, "engine": {"httpPort": 7200}})
    assert json.loads(by_kind(own, "ConfigMap")[0]["data"]["engine.json"])["engine"]["http_port"] == 7200
    plain = render({})
    assert json.loads(by_kind(plain, "ConfigMap")[0]["data"]["engine.json"])["engine"]["http_port"] == 0
    (front,) = by_kind(plain, "Deployment")
    envoy, picker = front["spec"]["template"]["spec"]["containers"]
    assert "--realtime" not in envoy["args"] and "--http-port" not in picker["args"]
    (sts,) = by_kind(plain, "StatefulSet")
    assert "realtime" not in [p["name"] for p in sts["spec"]["template"]["spec"]["containers"][0]["ports"]]


def test_redis_managed_external_and_absent() -> None:
    managed = render(SPECS["managed-redis"])
    names = {m["metadata"]["name"] for m in by_kind(managed, "Deployment")}
    assert names == {"talk-front", "talk-agent", "talk-redis"}
    external = render(SPECS["external-redis-secret"])
    assert "talk-redis" not in {m["metadata"]["name"] for m in external}
    agent = next(m for m in by_kind(external, "Deployment") if m["metadata"]["name"] == "talk-agent")
    assert agent["spec"]["replicas"] == 3
    # the URL Secret reaches engine and agent as a read-only file, named by $DUPLEX_REDIS_URL_FILE (CKV_K8S_35)
    engine_pod = by_kind(external, "StatefulSet")[0]["spec"]["template"]["spec"]
    for pod in (agent["spec"]["template"]["spec"], engine_pod):
        (c,) = pod["containers"]
        assert [e for e in c["env"] if "REDIS" in e["name"]] == [
            {"name": "DUPLEX_REDIS_URL_FILE", "value": "/etc/duplex/redis/url"}
        ]
        assert not [e for e in c["env"] if "valueFrom" in e]
        assert {"name": "redis-url", "mountPath": "/etc/duplex/redis", "readOnly": True} in c["volumeMounts"]
        assert {
            "name": "redis-url",
            "secret": {"secretName": "redis-url", "items": [{"key": "url", "path": "url"}]},
        } in (pod["volumes"])
    assert agent["spec"]["template"]["spec"]["containers"][0]["args"][:3] == [
        "agent",
        "--redis-url-file",
        "$(DUPLEX_REDIS_URL_FILE)",
    ]
    plain = render({"agent": {"workers": 1, "redis": {"managed": False, "url": "redis://r:6379/2"}}})
    for m in [*by_kind(plain, "StatefulSet"), *by_kind(plain, "Deployment")]:
        pod = m["spec"]["template"]["spec"]
        assert not [v for v in pod["volumes"] if v["name"] == "redis-url"], m["metadata"]["name"]
        if m["metadata"]["name"] != "talk-front":
            assert env_of(pod["containers"][0])["DUPLEX_REDIS_URL"] == "redis://r:6379/2"
    managed_agent = next(m for m in by_kind(managed, "Deployment") if m["metadata"]["name"] == "talk-agent")
    assert managed_agent["spec"]["template"]["spec"]["containers"][0]["args"][:3] == [
        "agent",
        "--redis-url",
        "$(DUPLEX_REDIS_URL)",
    ]
    none = render({})  # agent workers default to 0: no agent, no Redis, no DUPLEX_REDIS_URL
    assert {m["metadata"]["name"] for m in by_kind(none, "Deployment")} == {"talk-front"}
    assert "talk-redis" not in {m["metadata"]["name"] for m in by_kind(none, "Service")}
    assert "DUPLEX_REDIS_URL" not in env_of(
        by_kind(none, "StatefulSet")[0]["spec"]["template"]["spec"]["containers"][0]
    )


def test_config_change_changes_the_pod_template_hash() -> None:
    a = by_kind(render({}), "StatefulSet")[0]["spec"]["template"]["metadata"]["annotations"]
    b = by_kind(render({"engine": {"chunkMs": 160}}), "StatefulSet")[0]["spec"]["template"]["metadata"]["annotations"]
    assert a["duplex.ai/config-hash"] != b["duplex.ai/config-hash"]


def test_render_is_deterministic() -> None:
    assert render(SPECS["sharded"]) == render(SPECS["sharded"])


@pytest.mark.parametrize(
    ("raw", "field", "text"),
    [
        ({"engine": {"shards": 3}}, "spec.engine.shards", "not divisible by 3"),
        ({"model": {"preset": "nope"}}, "spec.model.preset", "unknown preset"),
        (
            {
                "model": {"preset": "tml-interaction-small"},
                "engine": {"shards": 1, "gpusPerShard": 1, "gpuMemoryGib": 80},
            },
            "spec.engine.gpuMemoryGib",
            "does not fit",
        ),
        (
            {
                "model": {"preset": "tml-interaction-small", "dtype": "bfloat16"},
                "engine": {"shards": 2, "gpusPerShard": 1, "gpuMemoryGib": 80},
            },
            "spec.engine.shards",
            "at least",
        ),
        (
            {
                "model": {"preset": "tml-interaction-small"},
                "engine": {"shards": "auto", "gpusPerShard": 1, "gpuMemoryGib": 1},
            },
            "spec.engine.gpuMemoryGib",
            "shards: auto",
        ),
        ({"engine": {"backend": "tensorrt-llm"}}, "spec.engine.backend", "tensorrt-llm is not available"),
        ({"engine": {"chunkMs": 100}}, "spec.engine.chunkMs", "multiple"),
        (
            {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
            "spec.autoscaling.maxReplicas",
            "below",
        ),
        ({"agent": {"workers": 1, "redis": {"managed": False}}}, "spec.agent.redis", "url"),
        ({"engine": {"chunkMs": 20}}, "spec.engine.chunkMs", "greater than or equal"),
        ({"engine": {"bogus": 1}}, "spec.engine.bogus", "Extra inputs"),
    ],
)
def test_invalid_specs_name_the_field(raw: dict[str, Any], field: str, text: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        resolve(parse_spec(raw))
    assert any(p.field == field and text in p.message for p in err.value.problems), err.value.problems


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for k, v in node.get("properties", {}).items():
            out += _walk(v, f"{path}.{k}")
        if "items" in node:
            out += _walk(node["items"], f"{path}[]")
    return out


def test_crd_schema_is_structural() -> None:
    schema = openapi_schema(DuplexModelSpec)
    for path, node in _walk(schema):
        assert "$ref" not in node and "allOf" not in node and "const" not in node, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        assert "anyOf" not in node, path
    assert schema["properties"]["engine"]["properties"]["shards"]["x-kubernetes-int-or-string"] is True
    chunk = schema["properties"]["engine"]["properties"]["chunkMs"]
    assert (chunk["default"], chunk["minimum"], chunk["maximum"]) == (200, 80, 400)
    assert chunk["description"].startswith("Micro-turn")
    assert schema["properties"]["engine"]["properties"]["backend"]["enum"] == ["torch", "tensorrt-llm"]
    assert schema["properties"]["agent"]["properties"]["tools"]["default"] == ["clock", "calculator"]
    assert schema["properties"]["slo"]["properties"]["turnTakingP50S"]["default"] == 0.30


def test_crd_has_subresources_and_printer_columns() -> None:
    version = crd_manifest()["spec"]["versions"][0]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert "status" in version["subresources"]
    cols = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert cols["Ready"] == ".status.readyReplicas" and cols["Shards"] == ".status.shardPlan.shards"
    assert cols["P50"] == ".status.measuredTurnTakingP50S" and "Endpoint" in cols and "Age" in cols


def test_camel_case_round_trip_covers_every_field() -> None:
    spec = DuplexModelSpec()
    k8s = spec.to_k8s()
    assert "gpuMemoryGib" in k8s["engine"] and "turnTakingP95S" in k8s["slo"]
    assert DuplexModelSpec.from_k8s(k8s) == spec
    props = set(openapi_schema(DuplexModelSpec)["properties"]["engine"]["properties"])
    assert set(k8s["engine"]) <= props


def test_values_schema_for_helm_shares_the_generator() -> None:
    vs = values_json_schema(DuplexModelSpec)
    assert vs["additionalProperties"] is False
    assert vs["properties"]["engine"]["properties"]["chunkMs"]["maximum"] == 400
    assert vs["properties"]["engine"]["properties"]["shards"]["oneOf"][1]["enum"] == ["auto"]


# --- examples and CLI ---------------------------------------------------------------------------------

EXAMPLES = sorted(
    p
    for p in (Path(__file__).resolve().parents[2] / "examples").glob("*.yaml")
    if yaml.safe_load(p.read_text())["kind"] == "DuplexModel"
)
"""The DuplexModel examples (07-kserve.yaml is a KServe InferenceService: tests/kserve checks it)."""
REJECTED_EXAMPLES = {"03-tensorrt-llm.yaml": "spec.engine.backend", "06-invalid-shards.yaml": "spec.engine.shards"}
"""Examples that show a rejection, and the field the Degraded condition names."""


def test_examples_are_numbered_and_present() -> None:
    names = [p.name for p in EXAMPLES]
    assert names[:3] == ["01-tiny-cpu.yaml", "02-autoshard-gpu.yaml", "03-tensorrt-llm.yaml"]
    assert all(n[:2].isdigit() for n in names)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_render_to_valid_manifests(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("duplex.ai/v1alpha1", "DuplexModel")
    if path.name in REJECTED_EXAMPLES:
        with pytest.raises(InvalidSpec) as err:
            resolve(parse_spec(doc["spec"]))
        assert [p.field for p in err.value.problems] == [REJECTED_EXAMPLES[path.name]]
        return
    for m in render(doc["spec"]):
        kubernetes_validate.validate(m, K8S_VERSION, strict=True)


def test_autoshard_example_records_the_planners_choice() -> None:
    doc = yaml.safe_load((EXAMPLES[1]).read_text())
    resolved = resolve(parse_spec(doc["spec"]))
    status = shard_plan_status(resolved)
    assert status.source == "planner" and status.shards == resolved.shards
    assert status.bytes_per_shard <= 80 * 1024**3


def test_cli_prints_the_crd_and_values_schema() -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["crd"])
    assert out.exit_code == 0, out.output
    assert yaml.safe_load(out.output) == crd_manifest()
    out = runner.invoke(app, ["crd", "--values-schema"])
    assert out.exit_code == 0 and json.loads(out.output)["properties"]["replicas"]["minimum"] == 0
    out = runner.invoke(app, ["crd", "--peering"])
    assert [d["metadata"]["name"] for d in yaml.safe_load_all(out.output)] == [
        "duplexmodels.duplex.ai",
        "clusterkopfpeerings.kopf.dev",
    ]


# --- status (pure) ------------------------------------------------------------------------------------


def _workload(name: str, desired: int, ready: int, replica: int | None = None) -> dict[str, Any]:
    labels = {"duplex.ai/replica": str(replica)} if replica is not None else {}
    return {
        "metadata": {"name": name, "generation": 2, "labels": labels},
        "spec": {"replicas": desired},
        "status": {"observedGeneration": 2, "readyReplicas": ready, "updatedReplicas": desired},
    }


def _conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_status_ready_when_every_rank_and_deployment_is_ready() -> None:
    resolved = resolve(parse_spec({"engine": {"shards": 2}, "replicas": 2}))
    deps = [_workload(n, 1, 1) for n in ("talk-front", "talk-agent", "talk-redis")]
    sts = [_workload("talk-engine-0", 2, 2, 0), _workload("talk-engine-1", 2, 1, 1)]
    partial = compute_status(REF, resolved, observe(sts, deps, "talk.prod.svc:8080"), 3, None)
    assert _conditions(partial)["Ready"] == ("False", "WaitingForPods")
    assert _conditions(partial)["Degraded"] == ("True", "ReplicasUnavailable")
    assert partial["readyReplicas"] == 1 and "replica=1" in partial["conditions"][0]["message"]
    sts[1] = _workload("talk-engine-1", 2, 2, 1)
    ready = compute_status(REF, resolved, observe(sts, deps, "talk.prod.svc:8080"), 3, partial)
    assert _conditions(ready) == {
        "Ready": ("True", "AllReplicasReady"),
        "Progressing": ("False", "Complete"),
        "Degraded": ("False", "AsExpected"),
    }
    assert ready["readyReplicas"] == 2 and ready["observedGeneration"] == 3
    assert all(c["observedGeneration"] == 3 for c in ready["conditions"])
    assert "" not in [v for c in ready["conditions"] for v in c.values()]  # 1.20 rejects empty strings


def test_status_keeps_transition_time_while_unchanged() -> None:
    resolved = resolve(parse_spec({}))
    first = compute_status(REF, resolved, observe([], [], "e"), 1, None)
    first["conditions"][0]["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    again = compute_status(REF, resolved, observe([], [], "e"), 1, first)
    assert again["conditions"][0]["lastTransitionTime"] == "2020-01-01T00:00:00Z"


def test_agent_workers_are_not_degraded_and_share_a_per_model_stream_prefix() -> None:
    """The agent ships: asking for workers is a normal spec, and each model's engines and workers meet on keys
    of their own (two models on one Redis never share streams)."""
    resolved = resolve(parse_spec({"agent": {"workers": 2}}))
    assert resolved.unavailable == ()
    status = compute_status(REF, resolved, observe([], [], "e"), 1, None)
    assert _conditions(status)["Degraded"] == ("False", "AsExpected")
    data = by_kind(render({"agent": {"workers": 2}}), "ConfigMap")[0]["data"]
    prefix = f"duplex:{REF.namespace}:{REF.name}"
    assert json.loads(data["agent.json"])["agent"]["stream_prefix"] == prefix
    assert json.loads(data["engine.json"])["engine"]["agent_stream_prefix"] == prefix
    long = ModelRef(name="n" * 200, namespace="ns", uid="u")
    assert len(agent_stream_prefix(long)) <= 64 and agent_stream_prefix(long) != agent_stream_prefix(REF)
    AgentSpec(stream_prefix=agent_stream_prefix(long))  # a prefix the agent accepts


def test_api_versions_for_a_kube_version() -> None:
    assert ApiVersions.for_kube_version("1.20") == K120
    assert ApiVersions.for_kube_version("v1.22.3") == ApiVersions(pdb="policy/v1", hpa="autoscaling/v2beta2")
    assert ApiVersions.for_kube_version("1.33") == CURRENT
    for bad in ("x", "1.19"):
        with pytest.raises(ValueError, match="--kube-version"):
            ApiVersions.for_kube_version(bad)


def test_operator_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from duplex.operator.settings import load_operator_settings

    monkeypatch.setenv("DUPLEX_OPERATOR_WORKERS", "3")
    monkeypatch.setenv("DUPLEX_OPERATOR_RESYNC_SECONDS", "7.5")
    monkeypatch.setenv("DUPLEX_KUBECONFIG", "/etc/kube/config")
    settings = load_operator_settings()
    assert (settings.workers, settings.resync_seconds, settings.kubeconfig) == (3, 7.5, "/etc/kube/config")
    monkeypatch.setenv("DUPLEX_OPERATOR_WORKERS", "many")
    out = CliRunner().invoke(app, ["operator", "--all-namespaces", "--standalone"])
    assert out.exit_code == 2
    assert "DUPLEX_OPERATOR_WORKERS: Input should be a valid integer" in out.stderr


# --- the one table of child kinds (operator/children.py) ------------------------------------------------

EVERYTHING: dict[str, Any] = {
    "replicas": 2,
    "autoscaling": {"enabled": True, "maxReplicas": 4},
    "gateway": {"replicas": 2},
    "agent": {"workers": 1},
    "networkPolicy": {"enabled": True},
}
"""Every optional child on: each kind in the table is rendered at least once."""


@pytest.mark.parametrize("apis", [CURRENT, K120], ids=["current", "1.20"])
def test_every_rendered_kind_is_in_the_table_in_the_version_it_is_listed_in(apis: ApiVersions) -> None:
    """Pruning lists (apiVersion, kind) from the table and keeps what is rendered: a kind or version rendered but
    not in the table would never be pruned, watched or granted; one in the table but never rendered, pointless."""
    rendered = {(m["apiVersion"], m["kind"]) for m in render(EVERYTHING, apis)}
    assert rendered == set(child_kinds(apis))
    assert len({c.kind for c in CHILDREN}) == len(CHILDREN)


def test_the_table_feeds_the_watches() -> None:
    """``handlers.register`` adds one labelled kopf event handler per watched kind, in the table's version (the
    server's preferred one for a kind served in several)."""
    import kopf

    from duplex.operator import handlers
    from duplex.operator.settings import OperatorSettings

    registry, default = kopf.OperatorRegistry(), kopf.get_default_registry()
    kopf.set_default_registry(registry)
    try:
        handlers.register(OperatorSettings())
    finally:
        kopf.set_default_registry(default)
    watched = {
        (h.selector.group, h.selector.version, h.selector.any_name): h.labels
        for h in registry._watching.get_all_handlers()
    }
    assert all(c.watched for c in CHILDREN)  # NetworkPolicies included (docs/operator.md: every labelled child)
    assert watched == {
        (c.group, c.preferred.rpartition("/")[2] if len(c.versions) == 1 else None, c.plural): {
            "app.kubernetes.io/managed-by": "duplex-operator"
        }
        for c in CHILDREN
    }
    assert STATUS_KINDS == {"StatefulSet", "Deployment", "Service"}


def test_the_table_feeds_the_rbac_rules() -> None:
    triples = {
        (g, r, v) for rule in rbac_rules() for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }
    assert triples == {(c.group, c.plural, v) for c in CHILDREN for v in c.verbs}
    assert {c.verbs for c in CHILDREN} == {("get", "list", "watch", "create", "patch", "delete")}


def test_version_dependent_kinds_name_their_api_versions_field() -> None:
    import dataclasses

    fields = {f.name for f in dataclasses.fields(ApiVersions)}
    assert {c.version_field for c in CHILDREN if len(c.versions) > 1} == fields
    assert all(c.version_field is None for c in CHILDREN if len(c.versions) == 1)
    served = {"policy/v1", "policy/v1beta1", "autoscaling/v2beta2"}  # Kubernetes 1.21 and 1.22
    assert ApiVersions.from_served(served) == ApiVersions(pdb="policy/v1", hpa="autoscaling/v2beta2")
    assert ApiVersions.from_served(set()) == K120  # nothing listed: the versions every supported release serves


class FakeKube:
    """The listing and deleting ``Reconciler._prune`` does, over an in-memory namespace."""

    def __init__(self, objects: list[Manifest]) -> None:
        self.objects = objects
        self.deleted: list[tuple[str, str, str]] = []

    def list_children(self, api_version: str, kind: str, namespace: str, model: str) -> list[Manifest]:
        return [
            o
            for o in self.objects
            if (o["apiVersion"], o["kind"]) == (api_version, kind)
            and o["metadata"]["labels"].get("duplex.ai/model") == model
        ]

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.deleted.append((api_version, kind, name))
        self.objects = [
            o for o in self.objects if (o["apiVersion"], o["kind"], o["metadata"]["name"]) != (api_version, kind, name)
        ]


@pytest.mark.parametrize("apis", [CURRENT, K120], ids=["current", "1.20"])
def test_a_child_of_every_kind_is_pruned_when_no_longer_desired(apis: ApiVersions) -> None:
    """Everything rendered with every option on, then a minimal model: each kind loses children (a
    ConfigMap and a Service of an earlier shape are renamed strays); what the minimal model wants stays, and
    a labelled object of another owner is left alone."""
    from duplex.operator.reconcile import Reconciler
    from duplex.operator.render.common import key

    everything = render(EVERYTHING, apis)
    stray_cm = {**by_kind(everything, "ConfigMap")[0], "metadata": {**REF.metadata("talk-old-config", "config")}}
    foreign = {**stray_cm, "metadata": {**stray_cm["metadata"], "name": "hand-made", "ownerReferences": []}}
    # the front's ServiceAccount, Role and RoleBinding are in every model: strays of an earlier name
    strays = [
        {**m, "metadata": {**m["metadata"], "name": "talk-old-front"}}
        for m in everything
        if m["kind"] in {"ServiceAccount", "Role", "RoleBinding"}
    ]
    kube = FakeKube([*everything, stray_cm, foreign, *strays])
    minimal = render({}, apis)
    Reconciler(kube, apis)._prune(REF, {key(m) for m in minimal})  # type: ignore[arg-type]
    pruned_kinds = {kind for _, kind, _ in kube.deleted}
    assert pruned_kinds == {c.kind for c in CHILDREN}
    assert {key(o) for o in kube.objects} == {key(m) for m in minimal} | {key(foreign)}


def test_front_rbac_is_exactly_a_read_of_endpointslices_with_a_token_for_the_picker_only() -> None:
    out = render(SPECS["autoscaled-auth-tls"])
    (account,) = by_kind(out, "ServiceAccount")
    (role,) = by_kind(out, "Role")
    (binding,) = by_kind(out, "RoleBinding")
    assert account["metadata"]["name"] == role["metadata"]["name"] == binding["metadata"]["name"] == "talk-front"
    assert account["automountServiceAccountToken"] is False
    assert role["rules"] == [
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}
    ]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "talk-front"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "talk-front", "namespace": "prod"}]
    kinds = [m["kind"] for m in out]
    assert kinds.index("RoleBinding") < next(
        i for i, m in enumerate(out) if m["metadata"]["name"] == "talk-front" and m["kind"] == "Deployment"
    )
    dep = next(m for m in by_kind(out, "Deployment") if m["metadata"]["name"] == "talk-front")
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "talk-front" and pod["automountServiceAccountToken"] is False
    token = next(v for v in pod["volumes"] if v["name"] == "api-token")["projected"]["sources"]
    assert token[0]["serviceAccountToken"] == {"path": "token", "expirationSeconds": 3600}
    envoy, picker = pod["containers"]
    mount = {"name": "api-token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True}
    assert mount in picker["volumeMounts"] and "api-token" not in {m["name"] for m in envoy["volumeMounts"]}
    # the kubelet's SIGKILL comes after Envoy's drain grace (gateway.drainGraceS, 30 s by default) and its exit
    assert pod["terminationGracePeriodSeconds"] == 40
    longer = render({"gateway": {"drainGraceS": 120.5}})
    front = next(m for m in by_kind(longer, "Deployment") if m["metadata"]["name"] == "talk-front")
    assert front["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 131


@pytest.mark.parametrize("apis", [CURRENT, K120], ids=["current", "1.20"])
def test_front_autoscaling_renders_a_cpu_hpa_and_a_pdb_and_leaves_the_count_to_it(apis: ApiVersions) -> None:
    out = render(SPECS["front-autoscaled"], apis)
    (hpa,) = by_kind(out, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == apis.hpa and hpa["metadata"]["name"] == "talk-front"
    assert hpa["spec"] == {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "talk-front"},
        "minReplicas": 2,
        "maxReplicas": 8,
        "metrics": [
            {
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}},
            }
        ],
    }
    front = next(m for m in by_kind(out, "Deployment") if m["metadata"]["name"] == "talk-front")
    assert "replicas" not in front["spec"]  # the HPA owns the count: the operator's apply never resets it
    pod = front["spec"]["template"]["spec"]
    assert all(c["resources"]["requests"]["cpu"] for c in pod["containers"])  # utilisation is of the requests
    pdbs = {m["metadata"]["name"]: m for m in by_kind(out, "PodDisruptionBudget")}
    assert pdbs["talk-front"]["spec"] == {
        "minAvailable": 1,
        "selector": {"matchLabels": {"duplex.ai/model": "talk", "app.kubernetes.io/component": "front"}},
    }
    # from a single pod up: one front pod at a time, never blocking a node drain
    single = render({"gateway": {"maxReplicas": 3}}, apis)
    (pdb,) = [m for m in by_kind(single, "PodDisruptionBudget") if m["metadata"]["name"] == "talk-front"]
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    assert by_kind(single, "HorizontalPodAutoscaler")[0]["spec"]["minReplicas"] == 1
    # no autoscaling: a fixed count, no front HPA (and a PDB only with several pods)
    fixed = render({}, apis)
    assert not by_kind(fixed, "HorizontalPodAutoscaler")
    assert "talk-front" not in {m["metadata"]["name"] for m in by_kind(fixed, "PodDisruptionBudget")}
    assert (
        next(m for m in by_kind(fixed, "Deployment") if m["metadata"]["name"] == "talk-front")["spec"]["replicas"] == 1
    )


def test_front_max_replicas_below_replicas_is_named() -> None:
    with pytest.raises(InvalidSpec) as e:
        resolve(parse_spec({"gateway": {"replicas": 3, "maxReplicas": 2}}))
    assert [p.field for p in e.value.problems] == ["spec.gateway.maxReplicas"]
    assert "below replicas (3)" in e.value.problems[0].message


def test_front_ports_that_collide_are_named() -> None:
    with pytest.raises(InvalidSpec) as e:
        resolve(parse_spec({"gateway": {"port": 8080, "httpPort": 8080, "metricsPort": 9095}}))
    assert [p.field for p in e.value.problems] == ["spec.gateway.httpPort", "spec.gateway.metricsPort"]
    assert "already spec.gateway.port" in e.value.problems[0].message
    assert "session picker's own port" in e.value.problems[1].message
    resolve(parse_spec({"gateway": {"port": 8080, "httpPort": 8081}}))  # distinct ports: no problem


def test_engine_pods_are_given_the_drain_grace_and_a_margin_to_stop() -> None:
    for grace, expected in ((30.0, 40), (2.5, 13)):
        (sts, *_) = by_kind(render({"engine": {"drainGraceS": grace}}), "StatefulSet")
        assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == expected
