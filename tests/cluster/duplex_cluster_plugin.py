"""pytest fixtures around :mod:`duplex_controlplane`: a session-wide control plane with the DuplexModel CRD,
and the operator (``duplex operator``) as a real subprocess against it.

Import the fixtures into a conftest (``from duplex_cluster_plugin import *``) after putting this folder
on ``sys.path``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from duplex_controlplane import ControlPlane, ProcessExited, control_plane, wait_until

from duplex.operator.crd import crd_manifest
from duplex.operator.kube import Kube, load_api_client
from duplex.serving.ports import free_port


class OperatorProcess:
    """``duplex operator --standalone --all-namespaces`` against the test cluster; restartable."""

    def __init__(self, cp: ControlPlane, log_dir: Path) -> None:
        self.cp = cp
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        port = free_port()
        env = dict(os.environ, KUBECONFIG=str(self.cp.kubeconfig), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from duplex.cli import main; main()",
                "operator",
                "--standalone",
                "--all-namespaces",
                "--liveness",
                f"http://127.0.0.1:{port}/healthz",
            ],
            env=env,
            stdout=open(self.log_path, "wb"),
            stderr=subprocess.STDOUT,
        )

        def live() -> bool:  # kopf answers its liveness probe once the startup handlers have run
            self._alive()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                return bool(r.status == 200)

        wait_until(live, 60, "operator liveness endpoint")

    def _alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise ProcessExited(f"operator exited {self.proc.returncode}:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver 1.20 + kube-controller-manager with the DuplexModel CRD installed."""
    with control_plane([crd_manifest()]) as cp:
        yield cp


@pytest.fixture(scope="session")
def kube(kube_cluster: ControlPlane) -> Kube:
    return Kube(load_api_client(str(kube_cluster.kubeconfig)))


@pytest.fixture(scope="session")
def duplex_operator(kube_cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    op = OperatorProcess(kube_cluster, tmp_path_factory.mktemp("operator"))
    op.start()
    yield op
    op.stop()


@pytest.fixture()
def namespace(kube: Kube) -> str:
    """A fresh namespace per test (left behind: the control plane is thrown away after the session)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


__all__ = ["OperatorProcess", "duplex_operator", "kube", "kube_cluster", "namespace"]
