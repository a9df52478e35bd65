"""The gateway terminating TLS: a conversation over a verified secure channel through a real engine, plaintext
and unverified clients refused at the handshake, and the start-up validation of ``tls_cert_file`` /
``tls_key_file``. The certificates are a throwaway CA and a server certificate for 127.0.0.1 / localhost."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tlscerts import Certs, make_certs

from duplex.model.spec import ModelSource
from duplex.serving import client
from duplex.serving.engine.server import EngineServer
from duplex.serving.gateway.auth import KeyRing
from duplex.serving.gateway.server import GatewayServer, load_tls
from duplex.serving.spec import EngineSpec, GatewaySpec

from .conftest import API_KEY, AUTH, LoopThread, tone, wait_serving

CHUNK = 3200  # 200 ms at 16 kHz


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls"))


@dataclass
class TlsStack:
    engine: EngineServer
    gateway: GatewayServer
    engine_addr: str
    gateway_addr: str
    thread: LoopThread


@pytest.fixture(scope="module")
def tls_stack(tiny_model: Any, certs: Certs) -> Iterator[TlsStack]:
    lt = LoopThread()

    async def up() -> TlsStack:
        espec = EngineSpec(host="127.0.0.1", metrics_port=0, max_sessions=4, cohorts=1)
        engine = EngineServer(espec, ModelSource(), model=copy.deepcopy(tiny_model), bind_port=0)
        eport = await engine.start()
        gspec = GatewaySpec(
            host="127.0.0.1",
            metrics_port=0,
            engines=[f"127.0.0.1:{eport}"],
            health_interval_s=0.2,
            drain_grace_s=5.0,
            tls_cert_file=str(certs.cert),
            tls_key_file=str(certs.key),
        )
        gateway = GatewayServer(gspec, keys=KeyRing({API_KEY}), bind_port=0)
        gport = await gateway.start()
        return TlsStack(engine, gateway, f"127.0.0.1:{eport}", f"127.0.0.1:{gport}", lt)

    s: TlsStack = lt.run(up())
    try:
        wait_serving(s.engine_addr)  # the engine itself is plaintext (cluster-internal)
        wait_serving(s.gateway_addr, ca=certs.ca)
        yield s
    finally:

        async def down() -> None:
            await s.gateway.stop(0.5)
            await s.engine.stop(0.5)

        lt.run(down())
        lt.close()


async def test_conversation_over_tls(tls_stack: TlsStack, certs: Certs) -> None:
    chunks = client.split_chunks(tone(1.0), CHUNK)
    async with client.channel(tls_stack.gateway_addr, str(certs.ca)) as ch:
        conv = await asyncio.wait_for(client.converse(ch, chunks, metadata=AUTH, realtime=False), 60)
    assert conv.code == grpc.StatusCode.OK, conv.details
    assert conv.ready is not None and conv.ready.chunk_samples == CHUNK
    assert conv.audio_seqs() == list(range(len(chunks))) and len(chunks) == 5


async def test_auth_still_applies_over_tls(tls_stack: TlsStack, certs: Certs) -> None:
    chunks = client.split_chunks(tone(0.4), CHUNK)
    async with client.channel(tls_stack.gateway_addr, str(certs.ca)) as ch:
        conv = await asyncio.wait_for(client.converse(ch, chunks, realtime=False), 30)
    assert conv.code == grpc.StatusCode.UNAUTHENTICATED


async def test_plaintext_client_is_refused(tls_stack: TlsStack) -> None:
    chunks = client.split_chunks(tone(0.4), CHUNK)
    async with client.channel(tls_stack.gateway_addr) as ch:
        conv = await asyncio.wait_for(client.converse(ch, chunks, metadata=AUTH, realtime=False), 30)
        assert conv.code != grpc.StatusCode.OK
        assert conv.code == grpc.StatusCode.UNAVAILABLE, (conv.code, conv.details)
        assert not conv.received
        with pytest.raises(grpc.aio.AioRpcError) as health:  # health shares the port, so it is TLS too
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5.0)
        assert health.value.code() != grpc.StatusCode.OK


async def test_client_without_the_ca_is_refused(tls_stack: TlsStack) -> None:
    """The certificate is really verified: the default roots do not trust the test CA."""
    creds = grpc.ssl_channel_credentials()
    async with grpc.aio.secure_channel(tls_stack.gateway_addr, creds) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5.0)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def spec_with(**tls: str) -> GatewaySpec:
    return GatewaySpec(host="127.0.0.1", metrics_port=0, engines=["127.0.0.1:1"], open_access=True, **tls)


def test_no_tls_fields_means_plaintext() -> None:
    assert load_tls(spec_with()) is None


def test_both_files_load(certs: Certs) -> None:
    assert isinstance(
        load_tls(spec_with(tls_cert_file=str(certs.cert), tls_key_file=str(certs.key))), grpc.ServerCredentials
    )


@pytest.mark.parametrize("field", ["tls_cert_file", "tls_key_file"])
def test_only_one_file_set_names_both_fields(certs: Certs, field: str) -> None:
    with pytest.raises(ValueError, match="tls_cert_file") as e:
        load_tls(spec_with(**{field: str(certs.cert if field == "tls_cert_file" else certs.key)}))
    assert "tls_key_file" in str(e.value) and f"{field} is set" in str(e.value)


def test_unreadable_file_names_field_and_path(certs: Certs, tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    with pytest.raises(ValueError, match="tls_key_file") as e:
        load_tls(spec_with(tls_cert_file=str(certs.cert), tls_key_file=str(missing)))
    assert str(missing) in str(e.value) and "tls_cert_file" not in str(e.value)


@pytest.mark.parametrize("field", ["tls_cert_file", "tls_key_file"])
def test_non_pem_content_names_field(certs: Certs, tmp_path: Path, field: str) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x30\x82\x01\x0a not a PEM file")  # e.g. DER
    files = {"tls_cert_file": str(certs.cert), "tls_key_file": str(certs.key), field: str(junk)}
    with pytest.raises(ValueError, match=f"{field} .* is not PEM"):
        load_tls(spec_with(**files))


async def test_gateway_start_validates_tls(tmp_path: Path, certs: Certs) -> None:
    """``start()`` raises the ValueError that ``duplex gateway`` reports as ``duplex gateway: <message>``."""
    gw = GatewayServer(
        spec_with(tls_cert_file=str(certs.cert), tls_key_file=str(tmp_path / "missing.key")), bind_port=0
    )
    try:
        with pytest.raises(ValueError, match="tls_key_file"):
            await gw.start()
    finally:
        await gw.stop(0)
