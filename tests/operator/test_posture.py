"""Pod posture of everything the operator renders (docs/security.md, "Pod posture"): judged from outside by
checkov's Kubernetes policies over ``duplex render`` of every example, and field by field here.

The probes themselves run against real processes in test_rendered_processes.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from duplex import __version__
from duplex.cli import app
from duplex.operator.crd import crd_manifest
from duplex.operator.naming import MODEL_LABEL, ModelRef
from duplex.operator.render import ApiVersions, render_children
from duplex.operator.render.common import Manifest
from duplex.operator.render.posture import RUN_AS, TMP_SIZE_LIMIT
from duplex.operator.resolve import InvalidSpec, parse_spec, resolve
from duplex.operator.status import invalid_status
from duplex.serving.spec import EngineSpec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(
    p for p in (ROOT / "examples").glob("*.yaml") if yaml.safe_load(p.read_text())["kind"] == "DuplexModel"
)
"""The DuplexModel examples (07-kserve.yaml is a KServe InferenceService: tests/kserve checks it)."""
CHECKOV_CONFIG = ROOT / ".checkov.yaml"
REF = ModelRef(name="talk", namespace="prod", uid="")

MANAGED_REDIS_WITH_POLICY: dict[str, Any] = {
    "apiVersion": "duplex.ai/v1alpha1",
    "kind": "DuplexModel",
    "metadata": {"name": "jobs"},
    "spec": {"agent": {"workers": 2}, "networkPolicy": {"enabled": True}},
}
"""No example runs a managed Redis (05 uses an external one); this one does, with the policies on."""
MOSHI_HOST_PATH: dict[str, Any] = {
    "apiVersion": "duplex.ai/v1alpha1",
    "kind": "DuplexModel",
    "metadata": {"name": "moshi-node"},
    "spec": {
        "model": {"family": "moshi", "uri": "/models/moshiko"},
        "checkpoint": {"hostPath": "/srv/models"},
        "engine": {"device": "cpu", "chunkMs": 80},
        "networkPolicy": {"enabled": True},
    },
}
"""08 mounts its checkpoint from a PersistentVolumeClaim; this one from a node directory (read-only hostPath)."""
EXTRA_MODELS = {"managed-redis.yaml": MANAGED_REDIS_WITH_POLICY, "moshi-host-path.yaml": MOSHI_HOST_PATH}

SPECS: dict[str, dict[str, Any]] = {
    "default": {},
    "sharded-gpu": {"engine": {"shards": 2, "gpusPerShard": 1, "device": "cuda"}},
    "tls-auth": {"gateway": {"authSecret": "keys", "tlsSecret": "tls"}},
    "realtime-mtls": {"gateway": {"httpPort": 8088, "authSecret": "keys", "tlsSecret": "tls", "clientCaSecret": "ca"}},
    "managed-redis": {"agent": {"workers": 1}},
    "external-redis": {"agent": {"workers": 1, "redis": {"managed": False, "url": "redis://r:6379/0"}}},
    "external-redis-secret": {"agent": {"workers": 1, "redis": {"managed": False, "urlSecret": "redis-url"}}},
    "metrics-off": {
        "engine": {"metricsPort": 0},
        "gateway": {"metricsPort": 0},
        "agent": {"workers": 1, "metricsPort": 0},
    },
    "policies": {"agent": {"workers": 1}, "networkPolicy": {"enabled": True}},
    "front-autoscaled": {"gateway": {"maxReplicas": 5}, "autoscaling": {"enabled": True}},
    "moshi-checkpoint-claim": {
        "model": {"family": "moshi", "uri": "/models/moshiko", "dtype": "bfloat16"},
        "checkpoint": {"claimName": "weights"},
        "engine": {"device": "cuda", "chunkMs": 80, "gpusPerShard": 1, "maxSessions": 8},
    },
    "moshi-checkpoint-host-path": MOSHI_HOST_PATH["spec"],
}


def render(raw: dict[str, Any]) -> list[Manifest]:
    return render_children(REF, resolve(parse_spec(raw)), ApiVersions())


def pod_templates(manifests: list[Manifest]) -> list[dict[str, Any]]:
    return [m["spec"]["template"] for m in manifests if m["kind"] in ("StatefulSet", "Deployment")]


def render_examples(out_dir: Path) -> list[str]:
    """``duplex render`` of every example that renders (the others are examples of rejected specs), plus the
    ``EXTRA_MODELS``; returns the names written."""
    written = []
    extras: list[Path] = []
    for name, doc in EXTRA_MODELS.items():
        extras.append(out_dir.parent / name)
        extras[-1].write_text(yaml.safe_dump(doc))
    for example in [*EXAMPLES, *extras]:
        result = CliRunner().invoke(app, ["render", "-f", str(example)])
        if result.exit_code != 0:
            assert "spec." in result.stderr, f"{example.name}: rejected without naming a field: {result.output}"
            continue
        (out_dir / example.name).write_text(result.stdout)
        written.append(example.name)
    return written


def checkov(directory: Path) -> dict[str, Any]:
    """checkov's Kubernetes policies over ``directory``, with the repository's one exclusion list."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "checkov.main",
            "--directory",
            str(directory),
            "--config-file",
            str(CHECKOV_CONFIG),
            "--skip-download",  # no network: the policies ship with the package
            "--quiet",
            "--compact",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=directory,  # checkov also reads a .checkov.yaml in its working directory: only the one asked for
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]  # 1 = some check failed
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    kubernetes = [r for r in reports if r["check_type"] == "kubernetes"]
    assert len(kubernetes) == 1, result.stdout[:2000]
    return dict(kubernetes[0])


def failures(report: dict[str, Any]) -> list[str]:
    return [f"{f['check_id']} {f['resource']} ({f['file_path']})" for f in report["results"]["failed_checks"]]


def test_checkov_passes_every_rendered_example(tmp_path: Path) -> None:
    out = tmp_path / "rendered"
    out.mkdir()
    written = render_examples(out)
    assert {
        "01-tiny-cpu.yaml",
        "02-autoshard-gpu.yaml",
        "04-autoscaling-auth.yaml",
        "05-external-redis.yaml",
        "08-moshi-gpu.yaml",
        *EXTRA_MODELS,
    } <= set(written)
    for name in written:  # every example opts in to the NetworkPolicies (checkov's CKV2_K8S_6 is enforced)
        assert any(d and d["kind"] == "NetworkPolicy" for d in yaml.safe_load_all((out / name).read_text())), name

    report = checkov(out)
    assert failures(report) == []
    assert report["summary"]["passed"] > 100  # the policies really ran over the pods

    # 05's Redis URL Secret reaches its pods as a mounted file: CKV_K8S_35 (Secrets as environment variables) is
    # enforced, not skipped (below: it does flag the environment-variable route).
    assert "CKV_K8S_35" not in yaml.safe_load(CHECKOV_CONFIG.read_text())["skip-check"]

    # Opting out of the policies is what CKV2_K8S_6 flags, on every pod and for nothing else; and a Secret given
    # as an environment variable (the route the URL Secret took before) is what CKV_K8S_35 flags.
    opted_out = tmp_path / "without-policies"
    opted_out.mkdir()
    doc = yaml.safe_load((ROOT / "examples" / "05-external-redis.yaml").read_text())
    doc["spec"]["networkPolicy"]["enabled"] = False
    (tmp_path / "off.yaml").write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(app, ["render", "-f", str(tmp_path / "off.yaml")])
    assert result.exit_code == 0, result.output
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    pods = pod_templates(docs)
    agent = next(t for t in pods if t["spec"]["containers"][0]["name"] == "agent")
    agent["spec"]["containers"][0]["env"].append(
        {"name": "DUPLEX_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "jobs-redis", "key": "url"}}}
    )
    (opted_out / "off.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    report = checkov(opted_out)
    assert sorted(f["check_id"] for f in report["results"]["failed_checks"]) == sorted(
        ["CKV2_K8S_6"] * len(pods) + ["CKV_K8S_35"]
    )


@pytest.mark.parametrize("name", SPECS)
def test_every_pod_runs_with_the_posture(name: str) -> None:
    templates = pod_templates(render(SPECS[name]))
    assert templates
    for template in templates:
        pod = template["spec"]
        assert pod["automountServiceAccountToken"] is False  # the front's picker alone mounts a projected token
        assert pod["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert RUN_AS >= 10000
        writable = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == RUN_AS
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            assert "livenessProbe" in c and "readinessProbe" in c, c["name"]
            for probe in (c["livenessProbe"], c["readinessProbe"]):
                assert {"exec", "httpGet", "tcpSocket"} & set(probe), "a probe Kubernetes 1.20 kubelets run"
                assert "grpc" not in probe
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (c["name"], kind)
            assert ":" in c["image"] and not c["image"].endswith(":latest")
            # Secrets as mounted files, never as environment variables (checkov CKV_K8S_35)
            assert not [e for e in c.get("env", []) if "valueFrom" in e or "envFrom" in c], c["name"]
            for mount in c.get("volumeMounts", []):
                # writable only where the process writes: emptyDirs; everything else is mounted read-only
                assert mount["name"] in writable or mount.get("readOnly") is True, (c["name"], mount)
            if c["name"] in ("engine", "envoy", "picker", "realtime", "agent"):
                # Python processes whose HOME is /tmp: tempfile, torch's and HOME-relative caches write there
                assert {"mountPath": "/tmp", "name": "tmp"} in c["volumeMounts"], c["name"]
                assert {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}} in pod["volumes"], c["name"]
            else:  # Redis without RDB/AOF writes no file
                assert not [m for m in c.get("volumeMounts", []) if m["name"] == "tmp"], c["name"]
            if c["name"] == "engine":
                assert "startupProbe" in c


def test_probes_follow_the_rendered_ports() -> None:
    out = render({"engine": {"port": 7100, "metricsPort": 9200}, "gateway": {"port": 8100}, "agent": {"workers": 1}})
    by_name = {c["name"]: c for t in pod_templates(out) for c in t["spec"]["containers"]}
    engine = by_name["engine"]["readinessProbe"]["exec"]["command"]
    assert engine[3:] == ["engine", "ready", "--port", "7100", "--metrics-port", "9200"]
    # Envoy: ready while the picker's health, asked through Envoy's own listener, answers SERVING
    assert by_name["envoy"]["readinessProbe"]["exec"]["command"][3:] == ["grpc-health", "127.0.0.1:8100"]
    assert by_name["envoy"]["livenessProbe"]["tcpSocket"]["port"] == "grpc"
    # the picker listens on the pod's loopback only: exec probes (a tcpSocket probe dials the pod's IP)
    assert by_name["picker"]["readinessProbe"]["exec"]["command"][3:] == ["grpc-health", "127.0.0.1:9095"]
    assert by_name["picker"]["livenessProbe"]["exec"]["command"][3:] == ["tcp", "127.0.0.1:9095"]
    assert by_name["agent"]["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    # a slow start (package import on a loaded node) is not a hang: liveness waits for the startup probe
    for name, check in (
        ("envoy", {"tcpSocket": {"port": "grpc"}}),
        ("picker", {"exec": by_name["picker"]["livenessProbe"]["exec"]}),
        ("agent", {"httpGet": by_name["agent"]["livenessProbe"]["httpGet"]}),
    ):
        startup = by_name[name]["startupProbe"]
        assert check.items() <= startup.items(), name
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, name
        live = by_name[name]["livenessProbe"]
        assert live["periodSeconds"] * live["failureThreshold"] < 120, name  # liveness alone would kill it sooner
    assert {"name": "metrics", "containerPort": 9092, "protocol": "TCP"} in by_name["agent"]["ports"]
    assert by_name["redis"]["livenessProbe"]["exec"]["command"] == ["redis-cli", "-p", "6379", "ping"]
    tls = render({"gateway": {"tlsSecret": "tls"}})
    envoy = next(c for t in pod_templates(tls) for c in t["spec"]["containers"] if c["name"] == "envoy")
    assert envoy["readinessProbe"]["tcpSocket"]["port"] == "grpc"  # TLS: the plaintext health check cannot


def test_default_image_is_the_package_version() -> None:
    assert EngineSpec().image == f"duplex:{__version__}"
    images = {c["image"] for t in pod_templates(render({})) for c in t["spec"]["containers"]}
    assert images == {f"duplex:{__version__}"}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"engine": {"image": "duplex:latest"}}, "spec.engine.image"),
        ({"engine": {"image": "registry.local:5000/team/duplex"}}, "spec.engine.image"),
        ({"engine": {"image": ""}}, "spec.engine.image"),
        ({"agent": {"workers": 1, "redis": {"image": "redis"}}}, "spec.agent.redis.image"),
    ],
)
def test_an_unpinned_image_is_degraded_naming_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as e:
        resolve(parse_spec(raw))
    assert [p.field for p in e.value.problems] == [field]
    status = invalid_status(REF, e.value.problems, 1, None)
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and field in degraded["message"]


@pytest.mark.parametrize(
    "image", ["duplex:0.1.0", "registry.local:5000/team/duplex:2026.11", "duplex@sha256:" + "a" * 64]
)
def test_pinned_images_are_served(image: str) -> None:
    resolve(parse_spec({"engine": {"image": image}}))
    # an external Redis's image is not ours to pull: no check
    resolve(parse_spec({"agent": {"workers": 1, "redis": {"managed": False, "url": "redis://r/0", "image": "redis"}}}))


def test_render_cli_rejects_latest_naming_the_field(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {"apiVersion": "duplex.ai/v1alpha1", "kind": "DuplexModel", "metadata": {"name": "m"}, "spec": {}}
            | {"spec": {"engine": {"image": "duplex:latest"}}}
        )
    )
    result = CliRunner().invoke(app, ["render", "-f", str(manifest)])
    assert result.exit_code == 2 and "spec.engine.image" in result.stderr


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_network_policies_admit_only_the_models_own_pods() -> None:
    out = render(SPECS["policies"])
    other = render_children(ModelRef(name="other", namespace="prod", uid=""), resolve(parse_spec({})), ApiVersions())
    policies = {m["metadata"]["name"]: m["spec"] for m in out if m["kind"] == "NetworkPolicy"}
    assert set(policies) == {"talk-front", "talk-engine", "talk-agent", "talk-redis"}
    pods = {t["metadata"]["labels"]["app.kubernetes.io/component"]: t["metadata"]["labels"] for t in pod_templates(out)}
    other_pods = [t["metadata"]["labels"] for t in pod_templates(other)]
    for name, policy in policies.items():
        component = name.removeprefix("talk-")
        assert policy["policyTypes"] == ["Ingress"]
        # each policy selects exactly its own component's pods, and no pod of another model
        assert [c for c, labels in pods.items() if selects(policy["podSelector"]["matchLabels"], labels)] == [component]
        assert not [labels for labels in other_pods if selects(policy["podSelector"]["matchLabels"], labels)]
        for rule in policy["ingress"]:
            if "from" not in rule:  # open to anyone: only Envoy's port and metrics ports
                assert [p["port"] for p in rule["ports"]] in ([8080], [9090], [9091], [9092]), (name, rule)
                continue
            for peer in rule["from"]:  # only this model's pods
                assert not any(selects(peer["podSelector"]["matchLabels"], labels) for labels in other_pods)
    front_open = [r for r in policies["talk-front"]["ingress"] if "from" not in r]
    assert {"ports": [{"protocol": "TCP", "port": 8080}]} in front_open
    # engines: only from the front pods (Envoy) and the engine pods (the ranks of a shard group)
    (engine_peers,) = [r["from"] for r in policies["talk-engine"]["ingress"] if "from" in r]
    admitted = {
        c for c, labels in pods.items() for peer in engine_peers if selects(peer["podSelector"]["matchLabels"], labels)
    }
    assert admitted == {"front", "engine"}
    for component in ("agent", "redis"):
        (peers,) = [r["from"] for r in policies[f"talk-{component}"]["ingress"] if "from" in r]
        assert peers == [{"podSelector": {"matchLabels": {MODEL_LABEL: "talk"}}}]
    assert policies["talk-redis"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 6379}]
    assert not [m for m in render({}) if m["kind"] == "NetworkPolicy"]  # off by default


def test_network_policy_is_a_crd_field() -> None:
    schema = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    policy = schema["properties"]["networkPolicy"]
    assert policy["properties"]["enabled"]["type"] == "boolean"
    assert policy["properties"]["enabled"]["default"] is False


def test_network_policy_opens_the_realtime_http_port_when_served() -> None:
    spec = {**SPECS["policies"], "gateway": {"httpPort": 8088}}
    (front,) = [
        m["spec"] for m in render(spec) if m["kind"] == "NetworkPolicy" and m["metadata"]["name"] == "talk-front"
    ]
    assert {"ports": [{"protocol": "TCP", "port": 8088}]} in front["ingress"]


def test_mutual_tls_mounts_the_client_ca_secret_into_envoy() -> None:
    out = render({"gateway": {"tlsSecret": "tls", "clientCaSecret": "clients"}})
    (cm,) = [m for m in out if m["kind"] == "ConfigMap"]
    gateway = json.loads(cm["data"]["gateway.json"])["gateway"]
    (deploy,) = [
        m
        for m in out
        if m["kind"] == "Deployment" and m["metadata"]["labels"]["app.kubernetes.io/component"] == "front"
    ]
    pod = deploy["spec"]["template"]["spec"]
    (vol,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "clients"]
    containers = {c["name"]: c for c in pod["containers"]}
    (mount,) = [m for m in containers["envoy"]["volumeMounts"] if m["name"] == vol["name"]]
    assert gateway["client_ca_file"] == f"{mount['mountPath']}/ca.crt"
    assert not [m for m in containers["picker"]["volumeMounts"] if m["name"] in ("tls", "client-ca")]


@pytest.mark.parametrize(
    ("gateway", "field"),
    [
        ({"clientCaSecret": "clients"}, "spec.gateway.clientCaSecret"),
        ({"clientCaFile": "/x/ca.crt"}, "spec.gateway.clientCaFile"),
        ({"apiKeysFile": "/x/keys"}, "spec.gateway.apiKeysFile"),
    ],
)
def test_gateway_file_fields_are_rejected_naming_the_field(gateway: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as e:
        resolve(parse_spec({"gateway": gateway}))
    assert field in str(e.value)
