"""``helm install`` into the real test control plane (etcd + kube-apiserver 1.20 + kube-controller-manager),
then the operator, started with exactly the chart Deployment's command and only the chart ServiceAccount's
credentials (a TokenRequest token, not admin), reconciles examples/01-tiny-cpu.yaml: the chart's RBAC is
sufficient. Taking one verb away makes the operator fail with 403, which is what this test would catch.
``helm uninstall`` removes what it installed (the CRD stays: Helm never deletes ``crds/``).

No kubelet runs: the controllers create pods and the test marks them ready by patching their status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_tools import CHART, REPO, helm, run, tool
from duplex_controlplane import ControlPlane, wait_until
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from duplex.operator.kube import Kube, load_api_client
from duplex.serving.ports import free_port

RELEASE = "duplex"  # the full name is then "duplex": the operator Deployment is duplex-operator
NAMESPACE = "duplex-system"
MODELS = "models"
TIMEOUT = 60.0
CHILDREN: list[tuple[str, str, str]] = [
    ("v1", "ConfigMap", "tiny-config"),
    ("v1", "Service", "tiny"),
    ("v1", "Service", "tiny-engine-0"),
    ("v1", "Service", "tiny-engine-0-leader"),
    ("apps/v1", "StatefulSet", "tiny-engine-0"),
    ("apps/v1", "Deployment", "tiny-front"),
    ("policy/v1beta1", "PodDisruptionBudget", "tiny-engine"),
]
INSTALLED: list[tuple[str, str, str, str | None]] = [
    ("v1", "ServiceAccount", RELEASE, NAMESPACE),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", f"{RELEASE}-operator", None),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", f"{RELEASE}-operator-cluster", None),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", f"{RELEASE}-operator", None),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", f"{RELEASE}-operator-cluster", None),
    ("apps/v1", "Deployment", f"{RELEASE}-operator", NAMESPACE),
    ("networking.k8s.io/v1", "NetworkPolicy", f"{RELEASE}-operator", NAMESPACE),
]


def get(kube: Kube, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = kube.dynamic.get(
            kube.resource(api_version, kind), name=name, namespace=namespace
        ).to_dict()
        return found
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def service_account_kubeconfig(cp: ControlPlane, admin: Kube, path: Path) -> Path:
    """A kubeconfig holding a token of the chart's ServiceAccount (TokenRequest API, as the kubelet gets one
    for the projected volume the chart mounts)."""
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    granted = client.CoreV1Api(admin.api).create_namespaced_service_account_token(RELEASE, NAMESPACE, request)
    assert granted.status is not None, "TokenRequest answered without a token"
    token = granted.status.token
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": cp.server, "certificate-authority": str(cp.certs.ca)}}],
        "users": [{"name": "duplex-operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "test", "user": "duplex-operator"}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


class ChartOperator:
    """The chart Deployment's container command, run here as a process (no kubelet runs pods)."""

    def __init__(self, container: dict[str, Any], kubeconfig: Path, log: Path) -> None:
        assert container["command"] == ["duplex"]
        self.port = free_port()
        args = [
            f"--liveness=http://127.0.0.1:{self.port}/healthz" if a.startswith("--liveness=") else a
            for a in container["args"]
        ]
        env = {e["name"]: e["value"] for e in container.get("env", []) if e["name"] != "HOME"}
        self.log_path = log
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from duplex.cli import main; main()", *args],
            env={**os.environ, **env, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"},
            stdout=open(log, "wb"),
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_live(self) -> None:
        def live() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited {self.proc.returncode}:\n{self.log()[-4000:]}")
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return bool(r.status == 200)

        wait_until(live, TIMEOUT, "operator liveness endpoint")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture()
def installed(bare_cluster: ControlPlane) -> Iterator[str]:
    """The chart installed with default values; yields helm's output (with NOTES.txt). Uninstalled after."""
    out = helm(
        "install", RELEASE, CHART, "-n", NAMESPACE, "--create-namespace", "--kubeconfig", bare_cluster.kubeconfig
    ).stdout
    yield out
    helm("uninstall", RELEASE, "-n", NAMESPACE, "--kubeconfig", bare_cluster.kubeconfig, "--ignore-not-found")


def mark_pods_ready(admin: Kube, namespace: str) -> None:
    """What a kubelet would report for running, ready pods."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    conditions = [
        {"type": t, "status": "True", "lastTransitionTime": now}
        for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
    ]
    for pod in admin.list_objects("v1", "Pod", namespace, "duplex.ai/model=tiny"):
        status = {"phase": "Running", "startTime": now, "conditions": conditions}
        admin.patch("v1", "Pod", namespace, pod["metadata"]["name"], {"status": status}, subresource="status")


def condition(model: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    conds = ((model or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == type_), {})


def test_helm_install_rbac_suffices_for_the_operator_and_uninstall_cleans_up(
    bare_cluster: ControlPlane, installed: str, tmp_path: Path
) -> None:
    admin = Kube(load_api_client(str(bare_cluster.kubeconfig)))
    kubeconfig = str(bare_cluster.kubeconfig)

    # --- what helm installed --------------------------------------------------------------------------
    assert "duplex talk --target" in installed and "get dm" in installed  # NOTES.txt: what to do next
    crd = get(admin, "apiextensions.k8s.io/v1", "CustomResourceDefinition", "duplexmodels.duplex.ai")
    assert crd is not None and crd["spec"]["names"]["shortNames"] == ["dm"]
    for api_version, kind, name, ns in INSTALLED:
        obj = get(admin, api_version, kind, name, ns)
        assert obj is not None, f"{kind} {name} not installed"
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    deployment = get(admin, "apps/v1", "Deployment", f"{RELEASE}-operator", NAMESPACE)
    assert deployment is not None
    container = deployment["spec"]["template"]["spec"]["containers"][0]

    # --- the chart's identity, not admin ----------------------------------------------------------------
    sa_config = service_account_kubeconfig(bare_cluster, admin, tmp_path / "operator.kubeconfig")
    kubectl = tool("kubectl")
    whoami: list[str | Path] = ["--kubeconfig", sa_config, "auth", "can-i"]
    assert run([kubectl, *whoami, "patch", "duplexmodels.duplex.ai/status", "-A"], check=False).stdout.strip() == "yes"
    assert run([kubectl, *whoami, "list", "secrets", "-A"], check=False).stdout.strip() == "no"
    assert run([kubectl, *whoami, "create", "pods", "-n", MODELS], check=False).stdout.strip() == "no"

    operator = ChartOperator(container, sa_config, tmp_path / "operator.log")
    try:
        operator.wait_live()
        admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": MODELS}})
        example = yaml.safe_load((REPO / "examples" / "01-tiny-cpu.yaml").read_text())
        admin.create(example, MODELS)

        def reconciled() -> bool:
            m = admin.get_model(MODELS, "tiny")
            status = (m or {}).get("status") or {}
            return (
                all(get(admin, av, kind, name, MODELS) is not None for av, kind, name in CHILDREN)
                and m is not None
                and status.get("observedGeneration") == m["metadata"]["generation"]
                and condition(m, "Ready").get("status") == "False"
            )

        wait_until(reconciled, TIMEOUT, "children and status of DuplexModel tiny (operator log below on failure)")
        # Pods the controllers created turn ready: the operator sees it through its watches and says so.
        wait_until(lambda: len(admin.list_objects("v1", "Pod", MODELS, "duplex.ai/model=tiny")) >= 2, TIMEOUT, "pods")
        mark_pods_ready(admin, MODELS)
        wait_until(
            lambda: condition(admin.get_model(MODELS, "tiny"), "Ready").get("status") == "True",
            TIMEOUT,
            "Ready=True on DuplexModel tiny",
        )
        assert (admin.get_model(MODELS, "tiny") or {})["status"]["readyReplicas"] == 1
        log = operator.log()
        assert " 403" not in log and "Forbidden" not in log, log[-4000:]

        # --- a missing verb is what this test catches ---------------------------------------------------
        role = get(admin, "rbac.authorization.k8s.io/v1", "ClusterRole", f"{RELEASE}-operator")
        assert role is not None
        rules = [r for r in role["rules"] if r["resources"] != ["duplexmodels/status"]]
        assert len(rules) == len(role["rules"]) - 1
        admin.patch("rbac.authorization.k8s.io/v1", "ClusterRole", None, role["metadata"]["name"], {"rules": rules})
        admin.create({**example, "metadata": {"name": "tiny2"}}, MODELS)
        # the API server's answer names the identity and the missing permission
        forbidden = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
        wait_until(
            lambda: (
                "Forbidden" in operator.log()
                and forbidden in operator.log()
                and "duplexmodels/status" in operator.log()
            ),
            TIMEOUT,
            "the operator's 403 (Forbidden) without the status verb",
        )
        assert "observedGeneration" not in ((admin.get_model(MODELS, "tiny2") or {}).get("status") or {})
    finally:
        operator.stop()

    # --- uninstall ------------------------------------------------------------------------------------
    helm("uninstall", RELEASE, "-n", NAMESPACE, "--kubeconfig", kubeconfig)
    wait_until(
        lambda: all(get(admin, av, kind, name, ns) is None for av, kind, name, ns in INSTALLED),
        TIMEOUT,
        "helm uninstall removing the operator, its ServiceAccount, RBAC and NetworkPolicy",
    )
    assert helm("list", "-n", NAMESPACE, "-q", "--kubeconfig", kubeconfig).stdout.strip() == ""
    # Helm never deletes crds/ (docs/helm.md): the models, and so the users' data, survive an uninstall.
    assert get(admin, "apiextensions.k8s.io/v1", "CustomResourceDefinition", "duplexmodels.duplex.ai") is not None
