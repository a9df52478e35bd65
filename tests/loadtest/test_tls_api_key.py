"""``duplex loadtest --ca-cert --api-key`` against a real front door that serves TLS and checks keys (the
engine and the session picker in this process, the real Envoy binary in front of them, over loopback; the load
in a subprocess): the right key measures turns, a wrong key or a plaintext client fails the command at once
with a message naming what the front door refused."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from serving.conftest import start_stack, stop_stack
from tlscerts import make_certs

from duplex.loadtest.local import DUPLEX
from duplex.serving.spec import EngineSpec

KEY = "loadtest-key-1"


@dataclass
class Front:
    address: str
    ca: Path
    cache: Path
    """$DUPLEX_CACHE of the runs: the default corpus is built once for the module."""


@pytest.fixture(scope="module")
def tls_front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    tmp = tmp_path_factory.mktemp("tls")
    certs = make_certs(tmp)
    spec = EngineSpec(host="127.0.0.1", metrics_port=0, max_sessions=8)
    stack = start_stack(spec, None, keys=[KEY], tls_cert_file=str(certs.cert), tls_key_file=str(certs.key))
    try:
        yield Front(stack.front_addr, certs.ca, tmp / "cache")
    finally:
        stop_stack(stack)


def loadtest(front: Front, tmp: Path, key: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *DUPLEX,
            "loadtest",
            "--target",
            front.address,
            "--users",
            "2",
            "--spawn-rate",
            "2",
            "--run-time",
            "12s",
            "--seed",
            "1",
            "--slo-p50",
            "4.0",
            "--max-client-lag",
            "1.0",
            "--json",
            str(tmp / "stats.json"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "DUPLEX_API_KEY": key, "DUPLEX_CACHE": str(front.cache)},
    )


@pytest.mark.slow
def test_the_right_key_over_tls_measures_turns(tls_front: Front, tmp_path: Path) -> None:
    r = loadtest(tls_front, tmp_path, KEY, "--ca-cert", str(tls_front.ca))
    assert r.returncode == 0, r.stdout + r.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["turns"] > 0 and stats["errors"] == 0


@pytest.mark.slow
def test_a_wrong_key_fails_naming_the_key(tls_front: Front, tmp_path: Path) -> None:
    r = loadtest(tls_front, tmp_path, "not-the-key", "--ca-cert", str(tls_front.ca))
    assert r.returncode == 2, r.stdout + r.stderr
    message = " ".join(r.stderr.split())  # rich wraps long lines
    assert "refused the API key" in message and "UNAUTHENTICATED" in message
    assert "--api-key" in message
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "stats.json").exists()  # no run, so no figures that look like a zero


@pytest.mark.slow
def test_plaintext_against_tls_fails_naming_tls(tls_front: Front, tmp_path: Path) -> None:
    r = loadtest(tls_front, tmp_path, KEY)  # no --ca-cert
    assert r.returncode == 2, r.stdout + r.stderr
    message = " ".join(r.stderr.split())
    assert "UNAVAILABLE" in message and "--ca-cert" in message
    assert "Traceback" not in r.stderr
