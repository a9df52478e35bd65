"""``duplex loadtest --ca-cert --api-key`` against a real gateway that serves TLS and checks keys (engine and
gateway in this process, over loopback; the load in a subprocess): the right key measures turns, a wrong key
or a plaintext client fails the command at once with a message naming what the gateway refused."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tlscerts import make_certs

from duplex.loadtest.local import DUPLEX
from duplex.model.spec import ModelSource
from duplex.serving.engine.server import EngineServer
from duplex.serving.gateway.auth import KeyRing
from duplex.serving.gateway.server import GatewayServer
from duplex.serving.spec import EngineSpec, GatewaySpec

KEY = "loadtest-key-1"


@dataclass
class Gateway:
    address: str
    ca: Path
    cache: Path
    """$DUPLEX_CACHE of the runs: the default corpus is built once for the module."""


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("tls")
    certs = make_certs(tmp)
    ca, chain, key = certs.ca, certs.cert, certs.key
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(120)  # type: ignore[arg-type]

    async def up() -> tuple[EngineServer, GatewayServer, int]:
        engine = EngineServer(
            EngineSpec(host="127.0.0.1", metrics_port=0, max_sessions=8), ModelSource.model_validate({}), bind_port=0
        )
        eport = await engine.start()
        gspec = GatewaySpec(
            host="127.0.0.1",
            metrics_port=0,
            engines=[f"127.0.0.1:{eport}"],
            tls_cert_file=str(chain),
            tls_key_file=str(key),
        )
        gateway = GatewayServer(gspec, keys=KeyRing({KEY}), bind_port=0)
        return engine, gateway, await gateway.start()

    engine, gateway, port = run(up())  # type: ignore[misc]
    try:
        yield Gateway(f"127.0.0.1:{port}", ca, tmp / "cache")
    finally:
        run(gateway.stop(0.5))
        run(engine.stop(0.5))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def loadtest(gw: Gateway, tmp: Path, key: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *DUPLEX,
            "loadtest",
            "--target",
            gw.address,
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
        env={**os.environ, "DUPLEX_API_KEY": key, "DUPLEX_CACHE": str(gw.cache)},
    )


@pytest.mark.slow
def test_the_right_key_over_tls_measures_turns(tls_gateway: Gateway, tmp_path: Path) -> None:
    r = loadtest(tls_gateway, tmp_path, KEY, "--ca-cert", str(tls_gateway.ca))
    assert r.returncode == 0, r.stdout + r.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["turns"] > 0 and stats["errors"] == 0


@pytest.mark.slow
def test_a_wrong_key_fails_naming_the_key(tls_gateway: Gateway, tmp_path: Path) -> None:
    r = loadtest(tls_gateway, tmp_path, "not-the-key", "--ca-cert", str(tls_gateway.ca))
    assert r.returncode == 2, r.stdout + r.stderr
    message = " ".join(r.stderr.split())  # rich wraps long lines
    assert "refused the API key" in message and "UNAUTHENTICATED" in message
    assert "--api-key" in message
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "stats.json").exists()  # no run, so no figures that look like a zero


@pytest.mark.slow
def test_plaintext_against_tls_fails_naming_tls(tls_gateway: Gateway, tmp_path: Path) -> None:
    r = loadtest(tls_gateway, tmp_path, KEY)  # no --ca-cert
    assert r.returncode == 2, r.stdout + r.stderr
    message = " ".join(r.stderr.split())
    assert "UNAVAILABLE" in message and "--ca-cert" in message
    assert "Traceback" not in r.stderr
