"""Envoy terminating TLS in front of the session picker and a real engine: a conversation over a verified
secure channel, plaintext and unverified clients refused at the handshake, and the start-up validation of
``tls_cert_file`` / ``tls_key_file``. The certificates are a throwaway CA and a server certificate for
127.0.0.1 / localhost."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tlscerts import Certs, make_certs

from duplex.serving import client
from duplex.serving.envoy.cli import envoy_config
from duplex.serving.envoy.tls import check_tls
from duplex.serving.spec import EngineSpec, GatewaySpec

from .conftest import API_KEY, AUTH, Stack, start_stack, stop_stack, tone, wait_serving

CHUNK = 3200  # 200 ms at 16 kHz


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_stack(tiny_model: Any, certs: Certs) -> Iterator[Stack]:
    espec = EngineSpec(host="127.0.0.1", metrics_port=0, max_sessions=4, cohorts=1)
    s = start_stack(
        espec, copy.deepcopy(tiny_model), keys=[API_KEY], tls_cert_file=str(certs.cert), tls_key_file=str(certs.key)
    )
    try:
        wait_serving(s.engine_addr)  # the engine itself is plaintext (cluster-internal)
        wait_serving(s.front_addr, ca=certs.ca)  # the picker's health, through Envoy's TLS listener
        yield s
    finally:
        stop_stack(s)


async def test_conversation_over_tls(tls_stack: Stack, certs: Certs) -> None:
    chunks = client.split_chunks(tone(1.0), CHUNK)
    async with client.channel(tls_stack.front_addr, str(certs.ca)) as ch:
        conv = await asyncio.wait_for(client.converse(ch, chunks, metadata=AUTH, realtime=False), 60)
    assert conv.code == grpc.StatusCode.OK, conv.details
    assert conv.ready is not None and conv.ready.chunk_samples == CHUNK
    assert conv.audio_seqs() == list(range(len(chunks))) and len(chunks) == 5


async def test_auth_still_applies_over_tls(tls_stack: Stack, certs: Certs) -> None:
    chunks = client.split_chunks(tone(0.4), CHUNK)
    async with client.channel(tls_stack.front_addr, str(certs.ca)) as ch:
        conv = await asyncio.wait_for(client.converse(ch, chunks, realtime=False), 30)
    assert conv.code == grpc.StatusCode.UNAUTHENTICATED


async def test_plaintext_client_is_refused(tls_stack: Stack) -> None:
    chunks = client.split_chunks(tone(0.4), CHUNK)
    async with client.channel(tls_stack.front_addr) as ch:
        conv = await asyncio.wait_for(client.converse(ch, chunks, metadata=AUTH, realtime=False), 30)
        assert conv.code != grpc.StatusCode.OK
        assert conv.code == grpc.StatusCode.UNAVAILABLE, (conv.code, conv.details)
        assert not conv.received
        with pytest.raises(grpc.aio.AioRpcError) as health:  # health shares the port, so it is TLS too
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5.0)
        assert health.value.code() != grpc.StatusCode.OK


async def test_client_without_the_ca_is_refused(tls_stack: Stack) -> None:
    """The certificate is really verified: the default roots do not trust the test CA."""
    creds = grpc.ssl_channel_credentials()
    async with grpc.aio.secure_channel(tls_stack.front_addr, creds) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5.0)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def spec_with(**tls: str) -> GatewaySpec:
    return GatewaySpec(host="127.0.0.1", metrics_port=0, engines=["127.0.0.1:1"], open_access=True, **tls)


def test_no_tls_fields_means_plaintext() -> None:
    assert check_tls(spec_with()) is False


def test_both_files_load(certs: Certs) -> None:
    assert check_tls(spec_with(tls_cert_file=str(certs.cert), tls_key_file=str(certs.key))) is True


@pytest.mark.parametrize("field", ["tls_cert_file", "tls_key_file"])
def test_only_one_file_set_names_both_fields(certs: Certs, field: str) -> None:
    with pytest.raises(ValueError, match="tls_cert_file") as e:
        check_tls(spec_with(**{field: str(certs.cert if field == "tls_cert_file" else certs.key)}))
    assert "tls_key_file" in str(e.value) and f"{field} is set" in str(e.value)


def test_unreadable_file_names_field_and_path(certs: Certs, tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    with pytest.raises(ValueError, match="tls_key_file") as e:
        check_tls(spec_with(tls_cert_file=str(certs.cert), tls_key_file=str(missing)))
    assert str(missing) in str(e.value) and "tls_cert_file" not in str(e.value)


@pytest.mark.parametrize("field", ["tls_cert_file", "tls_key_file"])
def test_non_pem_content_names_field(certs: Certs, tmp_path: Path, field: str) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x30\x82\x01\x0a not a PEM file")  # e.g. DER
    files = {"tls_cert_file": str(certs.cert), "tls_key_file": str(certs.key), field: str(junk)}
    with pytest.raises(ValueError, match=f"{field} .* is not PEM"):
        check_tls(spec_with(**files))


def test_envoy_config_validates_tls(tmp_path: Path, certs: Certs) -> None:
    """What ``duplex envoy`` checks before Envoy starts (it reports ``duplex envoy: <message>``, exit 2)."""
    spec = spec_with(tls_cert_file=str(certs.cert), tls_key_file=str(tmp_path / "missing.key"))
    with pytest.raises(ValueError, match="tls_key_file"):
        envoy_config(spec, "127.0.0.1:9", tmp_path / "engines.json", port=0)
