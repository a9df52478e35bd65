"""Front-door security: hashed API keys (accepted, refused, compared over fixed-length digests for every
stored key whatever the presented key), ``duplex keys hash``, per-key session quota and start rate limit
(injected clock) over real gRPC through Envoy, the session picker and a real engine, keys never logged, and
mutual TLS in Envoy (client certificates signed by the configured CA accepted; none, or another CA's, refused
at the handshake)."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tlscerts import Certs, ClientCert, ca_and_key, client_cert, make_certs
from typer.testing import CliRunner

from duplex.cli import app
from duplex.serving import client
from duplex.serving.envoy.tls import check_tls
from duplex.serving.picker.auth import DIGEST_BYTES, KeyRing, key_line, parse_keys_file
from duplex.serving.picker.placement import sessions_by_key
from duplex.serving.picker.quota import KeyQuotas, TokenBucket
from duplex.serving.spec import EngineSpec, GatewaySpec
from duplex.v1 import duplex_pb2 as pb

from .conftest import Stack, start_stack, stop_stack, tone
from .helpers import eventually

CHUNK = 3200
ALICE, BOB = "alice-Key-9f8e7d", "bob-Key-0a1b2c"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- hashed keys ---------------------------------------------------------------------------------------


def ring_file(tmp_path: Path, text: str) -> KeyRing:
    f = tmp_path / "keys"
    f.write_text(text)
    return KeyRing.from_file(str(f))


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_hashed_key_accepted_wrong_key_refused(tmp_path: Path) -> None:
    ring = ring_file(tmp_path, f"# keys\n{key_line(ALICE, 'alice')}\n{key_line(BOB)}\n")
    assert ALICE not in (tmp_path / "keys").read_text()
    assert ring.identify(bearer(ALICE)).key_id == "alice"
    assert ring.identify({"x-api-key": BOB}).key_id == "line-3"  # unnamed: the line is the id
    wrong = ring.identify(bearer(ALICE + "x"))
    assert wrong.key_id is None and wrong.why == "invalid API key"
    assert ring.check({}) is not None and "missing API key" in str(ring.check({}))


def test_compare_runs_over_every_stored_digest_whatever_the_key() -> None:
    """The code path does not depend on the presented key: one comparison per stored key, always of two
    ``DIGEST_BYTES``-long digests, for the right key and for wrong keys differing first, last, or in length."""
    calls: list[tuple[int, int]] = []

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return a == b

    stored = [ALICE, BOB, "third-key-000000"]
    ring = KeyRing(stored, compare=recording)
    candidates = [ALICE, BOB, "X" + ALICE[1:], ALICE[:-1] + "X", ALICE[:3], ALICE * 40, "", "\x00"]
    for key in candidates:
        calls.clear()
        ring.check({"x-api-key": key} if key else bearer("-"))
        assert calls == [(DIGEST_BYTES, DIGEST_BYTES)] * len(stored), key


def test_plaintext_line_accepted_with_deprecation_warning_without_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        ring = ring_file(tmp_path, f"{key_line(BOB, 'bob')}\n{ALICE}\n")
    assert ring.check(bearer(ALICE)) is None and ring.check(bearer(BOB)) is None
    assert "line 2 holds a plaintext API key (deprecated)" in caplog.text
    assert ALICE not in caplog.text


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("sha256:abcd", "line 1: sha256 hash must be 64 hex digits, got 4"),
        ("bad name:sha256:" + "0" * 64, "line 1: malformed hashed key"),
    ],
)
def test_malformed_hash_line_names_the_line(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_keys_file(line)


def test_unreadable_keys_file_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"api_keys_file .* cannot be read"):
        KeyRing.from_file(str(tmp_path / "missing"))


def test_cli_keys_hash_reads_stdin_and_the_line_is_accepted(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["keys", "hash", "--name", "alice"], input=ALICE + "\n")
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert line.startswith("alice:sha256:") and ALICE not in line
    assert ring_file(tmp_path, line + "\n").identify(bearer(ALICE)).key_id == "alice"
    bad = CliRunner().invoke(app, ["keys", "hash", "--name", "no spaces"], input=ALICE + "\n")
    assert bad.exit_code == 2 and "name" in bad.output


# --- quotas with an injected clock ---------------------------------------------------------------------


def test_token_bucket_refills_at_its_rate() -> None:
    b = TokenBucket(rate=2.0, burst=2)
    assert b.take(0.0) == 0.0 and b.take(0.0) == 0.0
    assert b.take(0.0) == pytest.approx(0.5)
    assert b.take(0.25) == pytest.approx(0.25)  # half a token came back, a refused take costs nothing
    assert b.take(0.5) == 0.0


def test_concurrency_quota_is_per_key_and_released() -> None:
    q = KeyQuotas(max_sessions=2, busy_retry_s=1.5)
    assert q.admit("a") is None and q.admit("a") is None
    refused = q.admit("a")
    assert refused is not None and "2/2 live sessions" in refused.message and "key_max_sessions" in refused.message
    assert refused.retry_after_ms == 1500
    assert q.admit("b") is None  # another key is not affected
    q.release("a")
    assert q.admit("a") is None


def test_start_rate_is_per_key_with_retry_hint() -> None:
    clock = FakeClock()
    q = KeyQuotas(starts_per_s=0.5, burst=1, clock=clock)
    assert q.admit("a") is None
    refused = q.admit("a")
    assert refused is not None and refused.retry_after_ms == 2000 and "key_starts_per_s" in refused.message
    assert q.admit("b") is None
    clock.now += 1.0
    again = q.admit("a")
    assert again is not None and again.retry_after_ms == 1000
    clock.now += 1.0
    assert q.admit("a") is None


# --- over real gRPC --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quota_stack(tiny_model: Any) -> Iterator[Stack]:
    espec = EngineSpec(host="127.0.0.1", metrics_port=0, max_sessions=8, cohorts=1)
    s = start_stack(espec, copy.deepcopy(tiny_model), keys={"alice": ALICE, "bob": BOB}, key_max_sessions=1)
    yield s
    stop_stack(s)


def auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def short_talk(addr: str, key: str) -> client.Conversation:
    async with client.channel(addr) as ch:
        chunks = client.split_chunks(tone(0.4), CHUNK)
        conv: client.Conversation = await asyncio.wait_for(
            client.converse(ch, chunks, metadata=auth(key), realtime=False), 60
        )
        return conv


async def held_session(ch: grpc.aio.Channel, key: str, release: asyncio.Event) -> AsyncIterator[pb.ServerEvent]:
    """A conversation that stays open (no audio yet) until ``release``; yields its server events."""

    async def reqs() -> AsyncIterator[bytes]:
        yield client.start_event().SerializeToString()
        await release.wait()
        yield pb.ClientEvent(end=pb.EndOfStream()).SerializeToString()

    call = ch.stream_stream("/duplex.v1.Duplex/Converse", response_deserializer=pb.ServerEvent.FromString)(
        reqs(), metadata=auth(key)
    )
    async for ev in call:
        yield ev


async def test_session_quota_per_key_over_grpc(quota_stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    release = asyncio.Event()
    async with client.channel(quota_stack.front_addr) as ch:
        held = held_session(ch, ALICE, release)
        first = await asyncio.wait_for(anext(held), 30)
        assert first.WhichOneof("event") == "ready"
        try:
            refused = await short_talk(quota_stack.front_addr, ALICE)
            assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.details
            assert "key 'alice' has 1/1 live sessions" in refused.details
            assert dict(refused.trailing)["retry-after-ms"] == "1000"
            other = await short_talk(quota_stack.front_addr, BOB)  # another key has its own quota
            assert other.code == grpc.StatusCode.OK, other.details
        finally:
            release.set()
            async for _ in held:
                pass
    # released when the held session ended: the engine's next load report says so
    await eventually(lambda: quota_stack.active() == 0, what="the held session ended")
    await asyncio.to_thread(quota_stack.poll_load)
    picker = quota_stack.picker.picker
    assert sessions_by_key(picker.router.replicas, picker.placements).get("alice", 0) == 0
    again = await short_talk(quota_stack.front_addr, ALICE)
    assert again.code == grpc.StatusCode.OK, again.details
    wrong = await short_talk(quota_stack.front_addr, ALICE + "-wrong")
    assert wrong.code == grpc.StatusCode.UNAUTHENTICATED
    for key in (ALICE, BOB, ALICE + "-wrong"):  # keys are never logged, accepted or refused
        assert key not in caplog.text
        assert all(key not in str(r.args) for r in caplog.records)


async def test_start_rate_per_key_over_grpc(quota_stack: Stack) -> None:
    clock = FakeClock()
    picker = quota_stack.picker.picker  # its decisions read ``quotas`` on the servers' loop, once per Check
    saved = picker.quotas
    picker.quotas = KeyQuotas(starts_per_s=0.25, burst=2, clock=clock)
    try:
        assert (await short_talk(quota_stack.front_addr, BOB)).code == grpc.StatusCode.OK
        assert (await short_talk(quota_stack.front_addr, BOB)).code == grpc.StatusCode.OK
        limited = await short_talk(quota_stack.front_addr, BOB)
        assert limited.code == grpc.StatusCode.RESOURCE_EXHAUSTED, limited.details
        assert "start rate exceeded" in limited.details and dict(limited.trailing)["retry-after-ms"] == "4000"
        assert (await short_talk(quota_stack.front_addr, ALICE)).code == grpc.StatusCode.OK  # per key
        clock.now += 4.0
        assert (await short_talk(quota_stack.front_addr, BOB)).code == grpc.StatusCode.OK
    finally:
        picker.quotas = saved


# --- mutual TLS --------------------------------------------------------------------------------------------


@dataclass
class MtlsSetup:
    server: Certs
    client_ca: Path
    good: ClientCert
    foreign: ClientCert


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory) -> MtlsSetup:
    d = tmp_path_factory.mktemp("mtls")
    server = make_certs(d)
    ca, ca_key = ca_and_key("duplex client CA")
    other, other_key = ca_and_key("some other CA")
    client_ca = d / "client-ca.crt"
    client_ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return MtlsSetup(server, client_ca, client_cert(ca, ca_key), client_cert(other, other_key))


def test_mutual_tls_accepts_only_client_certs_of_the_ca(tiny_model: Any, mtls: MtlsSetup) -> None:
    espec = EngineSpec(host="127.0.0.1", metrics_port=0, max_sessions=2, cohorts=1)
    stack = start_stack(
        espec,
        copy.deepcopy(tiny_model),
        keys=[ALICE],
        tls_cert_file=str(mtls.server.cert),
        tls_key_file=str(mtls.server.key),
        client_ca_file=str(mtls.client_ca),
    )
    root = mtls.server.ca.read_bytes()

    def creds(cert: ClientCert | None) -> grpc.ChannelCredentials:
        if cert is None:
            return grpc.ssl_channel_credentials(root_certificates=root)
        return grpc.ssl_channel_credentials(root_certificates=root, private_key=cert.key, certificate_chain=cert.cert)

    async def scenario() -> None:
        async with grpc.aio.secure_channel(stack.front_addr, creds(mtls.good)) as ch:
            await ch.channel_ready()
            conv = await asyncio.wait_for(
                client.converse(ch, client.split_chunks(tone(0.4), CHUNK), metadata=auth(ALICE), realtime=False), 60
            )
            assert conv.code == grpc.StatusCode.OK, conv.details
            nokey = await asyncio.wait_for(
                client.converse(ch, client.split_chunks(tone(0.2), CHUNK), realtime=False), 30
            )
            assert nokey.code == grpc.StatusCode.UNAUTHENTICATED  # a certificate does not replace the API key
        for refused in (None, mtls.foreign):
            async with grpc.aio.secure_channel(stack.front_addr, creds(refused)) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5.0)
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE

    try:
        asyncio.run(scenario())
    finally:
        stop_stack(stack)


def test_client_ca_without_server_tls_names_the_fields(mtls: MtlsSetup) -> None:
    spec = GatewaySpec(engines=["127.0.0.1:1"], open_access=True, client_ca_file=str(mtls.client_ca))
    with pytest.raises(ValueError, match=r"client_ca_file .* needs tls_cert_file and tls_key_file"):
        check_tls(spec)


def test_client_ca_not_pem_names_the_field(mtls: MtlsSetup, tmp_path: Path) -> None:
    junk = tmp_path / "ca"
    junk.write_bytes(b"junk")
    spec = GatewaySpec(
        engines=["127.0.0.1:1"],
        open_access=True,
        tls_cert_file=str(mtls.server.cert),
        tls_key_file=str(mtls.server.key),
        client_ca_file=str(junk),
    )
    with pytest.raises(ValueError, match=r"client_ca_file .* is not PEM"):
        check_tls(spec)
