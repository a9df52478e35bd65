"""The chart through the real helm binary: lint, render, schema, posture, RBAC, KServe runtime and checkov."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart_tools import CHART, REPO, helm, manifests, set_args, template
from typer.testing import CliRunner

from duplex.cli import app
from duplex.operator.children import CHILDREN, GRANTED_READS, rbac_rules

K8S_VERSION = kubernetes_validate.latest_version()  # the newest schemas the installed package ships
REGENERATE = (
    ".venv/bin/python charts/regenerate.py"
    "  (the CRD alone: duplex crd > charts/duplex/crds/duplexmodels.duplex.ai.yaml)"
)
ALL_ON = {
    "redis.enabled": "true",
    "exampleModel.enabled": "true",
    "kserve.enabled": "true",
    "networkPolicy.enabled": "true",
}
VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "all-on": ALL_ON,
    "namespaced-peering": {
        **ALL_ON,
        "operator.watchNamespaces": "{team-a,duplex-system}",
        "operator.peering.enabled": "true",
        "operator.replicas": "2",
    },
}
FOREIGN_KINDS = {"ClusterServingRuntime"}
"""Kinds of other projects' CRDs: no upstream schema to validate against; checked structurally below."""
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def rendered(variant: str) -> list[dict[str, Any]]:
    return manifests(template(VARIANTS[variant]))


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in docs if d["kind"] in POD_KINDS]


# --- lint, generated parts ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lint_strict(variant: str) -> None:
    out = helm("lint", "--strict", CHART, *set_args(VARIANTS[variant])).stdout
    assert "0 chart(s) failed" in out


def test_crds_folder_is_exactly_duplex_crd() -> None:
    result = CliRunner().invoke(app, ["crd"])
    assert result.exit_code == 0, result.output
    files = sorted((CHART / "crds").iterdir())
    assert [f.name for f in files] == ["duplexmodels.duplex.ai.yaml"], f"crds/ holds more than the CRD: {files}"
    assert files[0].read_text() == result.output, f"charts/duplex/crds/ drifted from `duplex crd`; run {REGENERATE}"


def test_example_model_spec_schema_is_the_duplexmodel_schema() -> None:
    result = CliRunner().invoke(app, ["crd", "--values-schema"])
    assert result.exit_code == 0, result.output
    want = json.loads(result.output)
    want.pop("$schema")
    chart_schema = json.loads((CHART / "values.schema.json").read_text())
    got = chart_schema["properties"]["exampleModel"]["properties"]["spec"]
    assert got == want, f"values.schema.json's exampleModel.spec drifted from the DuplexModel spec; run {REGENERATE}"


# --- the values schema catches mistakes, naming them --------------------------------------------------


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"operator.replica": "2"}, ["/operator", "'replica' not allowed"]),
        ({"redis.enabeld": "true"}, ["/redis", "'enabeld' not allowed"]),
        (
            {"exampleModel.enabled": "true", "exampleModel.spec.engine.shardz": "2"},
            ["/exampleModel/spec/engine", "'shardz'"],
        ),
        ({"exampleModel.spec.engine.chunkMs": "50"}, ["/exampleModel/spec/engine/chunkMs"]),
        ({"image.tag": "latest"}, ["/image/tag"]),
        ({"operator.resources.limits": "null"}, ["/operator/resources"]),
        ({"operator.replicas": "2"}, ["operator.replicas", "operator.peering.enabled"]),
        (
            {"exampleModel.enabled": "true", "operator.watchNamespaces": "{team-a}"},
            ["exampleModel.enabled", "operator.watchNamespaces"],
        ),
    ],
)
def test_bad_values_are_rejected_naming_the_field(values: dict[str, str], named: list[str]) -> None:
    done = helm("template", "r", CHART, *set_args(values), check=False)
    assert done.returncode != 0, f"helm accepted {values}"
    for text in named:
        assert text in done.stderr, done.stderr


# --- every rendered manifest is valid Kubernetes ---------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_manifests_validate_against_current_kubernetes(variant: str) -> None:
    docs = rendered(variant)
    kinds = {d["kind"] for d in docs}
    assert {"CustomResourceDefinition", "ServiceAccount", "ClusterRole", "Deployment"} <= kinds
    for d in docs:
        if d["kind"] in FOREIGN_KINDS:
            continue
        if d["kind"] == "DuplexModel":  # our own CRD: the chart's values schema validated its spec already
            assert d["apiVersion"] == "duplex.ai/v1alpha1" and d["spec"]["engine"]["shards"] == 1
            continue
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_object_carries_the_standard_labels(variant: str) -> None:
    for d in rendered(variant):
        if d["kind"] == "CustomResourceDefinition":
            continue  # crds/ is exactly `duplex crd`
        labels = d["metadata"]["labels"]
        for k in ("name", "instance", "version", "component", "managed-by", "part-of"):
            assert labels.get(f"app.kubernetes.io/{k}"), f"{d['kind']} {d['metadata']['name']}: no {k} label"
        assert labels["app.kubernetes.io/version"] == yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


# --- pod posture -------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_chart_pod_is_hardened(variant: str) -> None:
    docs = rendered(variant)
    pods = pod_specs(docs)
    runtime = [d for d in docs if d["kind"] == "ClusterServingRuntime"]
    containers = [(n, c) for n, p in pods for c in p["containers"]]
    containers += [(d["metadata"]["name"], c) for d in runtime for c in d["spec"]["containers"]]
    assert pods and containers
    for name, pod in pods:
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] >= 10000, name
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
    for name, c in containers:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsUser"] >= 10000, name
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert c["livenessProbe"] and c["readinessProbe"], name
        assert set(c["resources"]) == {"requests", "limits"}, name
        assert {"cpu", "memory"} <= set(c["resources"]["limits"]) & set(c["resources"]["requests"]), name
        image = c["image"]
        assert ":" in image and not image.endswith((":latest", ":")), f"{name}: image {image!r} is not pinned"


def test_operator_pod_gets_only_a_projected_bound_token_and_the_chart_version() -> None:
    (dep,) = [d for d in rendered("default") if d["kind"] == "Deployment"]
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "duplex:" + yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert c["command"] == ["duplex"]
    assert c["args"] == ["operator", "--all-namespaces", "--standalone", "--liveness=http://0.0.0.0:8080/healthz"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    token = next(v for v in pod["volumes"] if v["name"] == "api-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["path"] == "token"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/var/run/secrets/kubernetes.io/serviceaccount"]["readOnly"] is True
    assert "/tmp" in mounts  # the only writable place


def test_namespaced_operator_watches_only_its_namespaces_with_peering() -> None:
    docs = rendered("namespaced-peering")
    (dep,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator")]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=duplex-system" in args and "--all-namespaces" not in args
    assert "--peering=duplex-operator" in args and "--standalone" not in args
    assert dep["spec"]["replicas"] == 2
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["duplex-system", "team-a"]
    assert not [d for d in docs if d["kind"] == "ClusterRoleBinding" and d["roleRef"]["name"] == "r-duplex-operator"]


# --- RBAC -------------------------------------------------------------------------------------------------


def rules(docs: list[dict[str, Any]], name: str) -> set[tuple[str, str, str]]:
    (role,) = [d for d in docs if d["kind"] in {"ClusterRole", "Role"} and d["metadata"]["name"] == name]
    return {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }


def test_rbac_grants_exactly_what_the_operator_uses() -> None:
    """On children: exactly the table's verbs on exactly its kinds (duplex.operator.children), rule for rule, so
    a kind the operator renders, watches and prunes is one it may touch, and nothing more."""
    docs = rendered("default")
    (role,) = [d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "r-duplex-operator"]
    child_rules = [r for r in role["rules"] if set(r["resources"]) & {c.plural for c in CHILDREN}]
    assert child_rules == rbac_rules(), (
        "charts/duplex/templates/rbac.yaml's rules on children drifted from duplex.operator.children.CHILDREN; "
        f"they should be:\n{yaml.safe_dump(rbac_rules(), default_flow_style=None, sort_keys=False)}"
    )
    assert rules(docs, "r-duplex-operator") == (
        {(c.group, c.plural, v) for c in CHILDREN for v in c.verbs}
        | {("duplex.ai", "duplexmodels", v) for v in ("get", "list", "watch", "patch")}
        | {("duplex.ai", "duplexmodels/status", "patch"), ("", "events", "create")}
        | {(g, r, v) for g, r, verbs in GRANTED_READS for v in verbs}  # what the front's Role grants
    )
    assert rules(docs, "r-duplex-operator-cluster") == {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    }
    peering = rendered("namespaced-peering")
    assert ("kopf.dev", "kopfpeerings", "patch") in rules(peering, "r-duplex-operator")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rbac_has_no_wildcards_and_no_secrets(variant: str) -> None:
    for d in rendered(variant):
        for rule in d.get("rules") or []:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, []), f"{d['metadata']['name']}: wildcard in {field}"
            assert "secrets" not in rule["resources"] and "pods" not in rule["resources"]
            assert not {"bind", "escalate", "impersonate"} & set(rule["verbs"])


# --- the optional parts -----------------------------------------------------------------------------------


def test_kserve_runtime_runs_duplex_kserve_with_the_v2_protocol() -> None:
    assert not [d for d in rendered("default") if d["kind"] == "ClusterServingRuntime"]
    (rt,) = [d for d in rendered("all-on") if d["kind"] == "ClusterServingRuntime"]
    assert rt["apiVersion"] == "serving.kserve.io/v1alpha1" and rt["metadata"]["name"] == "duplex"
    spec = rt["spec"]
    assert [f["name"] for f in spec["supportedModelFormats"]] == ["duplex"]
    assert spec["protocolVersions"] == ["v2"]
    (c,) = spec["containers"]
    assert c["name"] == "kserve-container" and c["command"] == ["duplex"]
    assert c["args"] == [
        "kserve",
        "--model-name={{.Name}}",
        "--model-dir=/mnt/models",
        "--http-port=8080",
        "--grpc-port=8081",
    ]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert {v["name"] for v in spec["volumes"]} == {m["name"] for m in c["volumeMounts"]}


def test_example_model_and_redis_are_optional_and_wired() -> None:
    default = {d["kind"] for d in rendered("default")}
    assert "DuplexModel" not in default and "Service" not in default
    docs = rendered("all-on")
    (model,) = [d for d in docs if d["kind"] == "DuplexModel"]
    assert model["metadata"]["name"] == "tiny" and model["spec"]["model"] == {"preset": "tiny"}
    (svc,) = [d for d in docs if d["kind"] == "Service"]
    (redis,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "r-duplex-redis"]
    assert svc["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "r-duplex-redis"]
    assert policy["spec"]["podSelector"]["matchLabels"] == svc["spec"]["selector"]


# --- checkov over helm template -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_checkov_finds_nothing(variant: str, tmp_path: Path) -> None:
    (tmp_path / "chart.yaml").write_text(template(VARIANTS[variant]))
    checkov = Path(sys.executable).with_name("checkov")
    done = subprocess.run(
        [
            str(checkov if checkov.exists() else "checkov"),
            "-d",
            str(tmp_path),
            "--framework",
            "kubernetes",
            "--config-file",
            str(REPO / ".checkov.yaml"),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(done.stdout)
    report = report[0] if isinstance(report, list) else report
    summary = report["summary"]
    failed = [(f["check_id"], f["check_name"], f["resource"]) for f in report["results"]["failed_checks"]]
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 50, summary  # it did scan the workloads
    assert failed == [], failed
