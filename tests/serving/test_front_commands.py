"""``duplex picker`` and ``duplex envoy``, the two processes of a front pod, as real processes with the real
Envoy binary in front of a real engine: the picker writes the only endpoint file Envoy reads; TLS and mutual
TLS end in Envoy (a client without a certificate of the client CA is refused at the handshake; a
certificate does not replace the API key); bad input exits 2 with a message naming what was wrong; a
SIGTERM'd ``duplex envoy`` drains (a live conversation streams on and ends OK, a new connection is refused).
Every wait is on a state (a printed line, a health answer) with a deadline."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tlscerts import Certs, ClientCert, ca_and_key, client_cert, make_certs

from duplex.serving import client
from duplex.serving.envoy.cli import envoy_config
from duplex.serving.envoy.config import REALTIME_CLUSTER, bootstrap
from duplex.serving.envoy.drain import Admin
from duplex.serving.envoy.eds import write_endpoints
from duplex.serving.envoy.process import envoy_binary
from duplex.serving.picker.auth import key_line
from duplex.serving.ports import free_port
from duplex.serving.spec import GatewaySpec
from duplex.v1 import duplex_pb2 as pb

from .conftest import tone
from .test_cli import DUPLEX, Proc

CHUNK = 3200
ENGINE = ["engine", "--port", "0", "--set", "engine.host=127.0.0.1", "--set", "engine.metrics_port=0"]
ALICE = (("authorization", "Bearer key-alice"),)
KUBECONFIG = ("--kubeconfig", "{d}/none")


@dataclass
class Pod:
    engine: str
    eds: Path
    certs: Certs
    client_ca: Path
    good: ClientCert
    foreign: ClientCert
    tls: str
    """Envoy's address with TLS."""
    mtls: str
    """Envoy's address with mutual TLS."""
    picker: str
    """The picker's ext_authz address."""
    keys: Path

    def creds(self, cert: ClientCert | None) -> grpc.ChannelCredentials:
        root = self.certs.ca.read_bytes()
        if cert is None:
            return grpc.ssl_channel_credentials(root_certificates=root)
        return grpc.ssl_channel_credentials(root_certificates=root, private_key=cert.key, certificate_chain=cert.cert)


def until_serving(addr: str, creds: grpc.ChannelCredentials | None, deadline_s: float = 60.0) -> None:
    """The picker's health, asked through Envoy's listener (plaintext when ``creds`` is None), answers SERVING."""
    end = time.monotonic() + deadline_s
    with grpc.secure_channel(addr, creds) if creds is not None else grpc.insecure_channel(addr) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=2.0).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < end, f"{addr}: not SERVING within {deadline_s} s"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    d = tmp_path_factory.mktemp("front")
    certs = make_certs(d)
    ca, ca_key = ca_and_key("duplex client CA")
    other, other_key = ca_and_key("some other CA")
    client_ca = d / "client-ca.crt"
    client_ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    keys = d / "keys"
    keys.write_text(key_line("key-alice", "alice") + "\n")
    (d / "eds").mkdir()
    eds = d / "eds" / "engines.json"
    procs = [Proc([*ENGINE, "--set", "engine.max_sessions=2", "--set", "engine.cohorts=1"])]
    try:
        engine = procs[0].wait_for(r"engine serving \S+ on (127\.0\.0\.1:\d+)", 180).group(1)
        picker_port = free_port()
        gw = ["--set", "gateway.host=127.0.0.1", "--set", f"gateway.api_keys_file={keys}"]
        picker = Proc(
            [
                "picker",
                "--engines",
                engine,
                "--eds-path",
                str(eds),
                "--port",
                str(picker_port),
                *gw,
                "--set",
                "gateway.metrics_port=0",
                "--set",
                "gateway.health_interval_s=0.25",
            ]
        )
        procs.append(picker)
        picker.wait_for(rf"duplex picker: serving on 127\.0\.0\.1:{picker_port}; 1 engine\(s\)", 60)
        tls_files = ["--set", f"gateway.tls_cert_file={certs.cert}", "--set", f"gateway.tls_key_file={certs.key}"]
        ports = []
        for extra in ([], ["--set", f"gateway.client_ca_file={client_ca}"]):
            port = free_port()
            envoy = Proc(
                [
                    "envoy",
                    "--eds-path",
                    str(eds),
                    "--picker",
                    f"127.0.0.1:{picker_port}",
                    "--port",
                    str(port),
                    "--concurrency",
                    "1",
                    *gw,
                    *tls_files,
                    *extra,
                ]
            )
            procs.append(envoy)
            envoy.wait_for(rf"duplex envoy: listening on 127\.0\.0\.1:{port} \((mutual )?TLS\)", 60)
            ports.append(port)
        p = Pod(
            engine,
            eds,
            certs,
            client_ca,
            client_cert(ca, ca_key),
            client_cert(other, other_key),
            f"127.0.0.1:{ports[0]}",
            f"127.0.0.1:{ports[1]}",
            f"127.0.0.1:{picker_port}",
            keys,
        )
        until_serving(p.tls, p.creds(None))
        until_serving(p.mtls, p.creds(p.good))
        yield p
    finally:
        for proc in reversed(procs):
            if proc.p.poll() is None:
                proc.p.terminate()
                try:
                    proc.p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.p.kill()
                    proc.p.wait(timeout=30)


def test_the_picker_writes_the_only_endpoints_envoy_gets(pod: Pod) -> None:
    resource = json.loads(pod.eds.read_text())["resources"][0]
    assert resource["cluster_name"] == "engines"
    (group,) = resource["endpoints"]
    addresses = [e["endpoint"]["address"]["socket_address"] for e in group["lb_endpoints"]]
    assert [f"{a['address']}:{a['port_value']}" for a in addresses] == [pod.engine]
    assert not [p.name for p in pod.eds.parent.iterdir() if p != pod.eds]  # renamed into place, nothing beside


def _talk(addr: str, creds: grpc.ChannelCredentials, metadata: tuple[tuple[str, str], ...]) -> client.Conversation:
    async def run() -> client.Conversation:
        async with grpc.aio.secure_channel(addr, creds) as ch:
            chunks = client.split_chunks(tone(0.4), CHUNK)
            return await asyncio.wait_for(client.converse(ch, chunks, metadata=metadata, realtime=False), 60)

    return asyncio.run(run())


def _refused_at_handshake(addr: str, creds: grpc.ChannelCredentials) -> None:
    with grpc.secure_channel(addr, creds) as ch, pytest.raises(grpc.RpcError) as e:
        health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5.0)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_tls_ends_in_envoy(pod: Pod) -> None:
    conv = _talk(pod.tls, pod.creds(None), ALICE)
    assert conv.code == grpc.StatusCode.OK, (conv.code, conv.details)
    assert conv.ready is not None and conv.ready.replica == pod.engine
    assert conv.of("audio")
    nokey = _talk(pod.tls, pod.creds(None), ())
    assert nokey.code == grpc.StatusCode.UNAUTHENTICATED, (nokey.code, nokey.details)
    with grpc.insecure_channel(pod.tls) as ch, pytest.raises(grpc.RpcError) as e:  # plaintext on the TLS port
        health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5.0)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_mutual_tls_ends_in_envoy_and_needs_a_certificate_of_the_client_ca(pod: Pod) -> None:
    conv = _talk(pod.mtls, pod.creds(pod.good), ALICE)
    assert conv.code == grpc.StatusCode.OK, (conv.code, conv.details)
    assert conv.ready is not None and conv.ready.replica == pod.engine
    nokey = _talk(pod.mtls, pod.creds(pod.good), ())
    assert nokey.code == grpc.StatusCode.UNAUTHENTICATED  # a certificate does not replace the API key
    for refused in (None, pod.foreign):
        _refused_at_handshake(pod.mtls, pod.creds(refused))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["picker", "--engines", "10.0.0.1:7070"], "--eds-path is required"),
        (["picker", "--eds-path", "{d}/no/e.json", "--engines", "10.0.0.1:7070"], "directory '{d}/no' does not"),
        (["picker", "--eds-path", "{d}/e.json", "--engines", "engine-0:7070"], "'engine-0:7070': expected IP:PORT"),
        (["picker", "--eds-path", "{d}/e.json"], "no engines configured"),
        (
            ["picker", "--eds-path", "{d}/e.json", "--engines", "10.0.0.1:7070", "--engine-selector", "a=b"],
            "give --engines or --engine-selector, not both",
        ),
        (["picker", "--eds-path", "{d}/e.json", "--engine-selector", "a=b"], "needs --engine-namespace outside a pod"),
        (
            ["picker", "--eds-path", "{d}/e.json", "--engine-selector", "a=b", "--engine-namespace", "n", *KUBECONFIG],
            "no Kubernetes API configuration for the engine watch",
        ),
        (
            ["picker", "--eds-path", "{d}/e.json", "--engines", "10.0.0.1:7070", "--set", "gateway.open_access=false"],
            "no API keys configured",
        ),
        (["envoy", "--eds-path", "{d}/no/e.json"], "--eds-path '{d}/no/e.json': directory '{d}/no' does not exist"),
        (["envoy", "--eds-path", "{d}/e.json", "--picker", "localhost:9095"], "--picker 'localhost:9095': expected"),
        (["envoy", "--eds-path", "{d}/e.json", "--set", "gateway.tls_cert_file={d}/x"], "tls_key_file is not"),
        (["envoy", "--eds-path", "{d}/e.json", "--set", "gateway.client_ca_file={d}/x"], "needs tls_cert_file"),
        (["envoy", "--eds-path", "{d}/e.json", "--set", "gateway.port=99999"], "gateway.port: Input should be"),
        (["envoy", "--eds-path", "{d}/e.json", "--realtime", "127.0.0.1:1"], "--realtime needs gateway.http_port"),
        (
            ["envoy", "--eds-path", "{d}/e.json", "--realtime", "127.0.0.1:1", "--set", "gateway.http_port=8088"],
            "--realtime needs --realtime-eds-path",
        ),
        (
            ["picker", "--eds-path", "{d}/e.json", "--engines", "10.0.0.1:7070", "--http-port", "0"],
            "--http-port and --realtime-eds-path go together",
        ),
        (["envoy", "--eds-path", "{d}/e.json", "--set", "gateway.envoy_concurrency=0"], "envoy_concurrency: Input"),
        (["envoy", "--eds-path", "{d}/e.json", "--eds-wait-s", "0"], "'{d}/e.json': no endpoint file after 0 s"),
    ],
)
def test_bad_input_exits_2_naming_it(tmp_path: Path, args: list[str], message: str) -> None:
    argv = [a.replace("{d}", str(tmp_path)) for a in args]
    if argv[0] == "picker" and "gateway.open_access=false" not in argv:
        argv += ["--set", "gateway.open_access=true"]
    r = subprocess.run([*DUPLEX, *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert f"duplex {argv[0]}: " in r.stderr and message.replace("{d}", str(tmp_path)) in r.stderr, r.stderr
    assert not (tmp_path / "e.json").exists()  # nothing written, nothing started


def test_tls_bootstrap_with_the_realtime_listener_validates(tmp_path: Path) -> None:
    """With ``--realtime`` both listeners end TLS and require the client CA's certificates; the real binary
    accepts the bootstrap (``--mode validate``)."""
    certs = make_certs(tmp_path)
    (tmp_path / "eds").mkdir()
    spec = GatewaySpec(
        host="127.0.0.1",
        open_access=True,
        http_port=8088,
        tls_cert_file=str(certs.cert),
        tls_key_file=str(certs.key),
        client_ca_file=str(certs.ca),
    )
    websockets = tmp_path / "eds" / "realtime.json"
    cfg = envoy_config(
        spec,
        "127.0.0.1:9095",
        tmp_path / "eds" / "engines.json",
        realtime="127.0.0.1:9097",
        realtime_eds_path=websockets,
    )
    config = bootstrap(cfg)
    listeners = {item["name"]: item for item in config["static_resources"]["listeners"]}
    assert listeners["realtime"]["address"]["socket_address"]["port_value"] == 8088
    for listener, alpn in (("duplex", ["h2"]), ("realtime", ["http/1.1"])):
        (chain,) = listeners[listener]["filter_chains"]
        tls = chain["transport_socket"]["typed_config"]
        assert tls["require_client_certificate"] is True
        assert tls["common_tls_context"]["alpn_protocols"] == alpn
        assert tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"] == str(certs.ca)
    write_endpoints(cfg.eds_path, ["127.0.0.1:7070"], 1)  # Envoy refuses to start on a missing endpoint file
    write_endpoints(websockets, ["127.0.0.1:7071"], 1, REALTIME_CLUSTER)
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(config))
    r = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def _plain_envoy(pod: Pod, port: int, grace_s: float, eds: Path | None = None, extra: tuple[str, ...] = ()) -> Proc:
    """A ``duplex envoy`` without TLS on ``port`` beside the pod's picker, draining for ``grace_s``, reading
    the pod's endpoint file (or ``eds``)."""
    gw = ["--set", "gateway.host=127.0.0.1", "--set", f"gateway.api_keys_file={pod.keys}", *extra]
    eds_path = str(eds or pod.eds)
    args = ["--eds-path", eds_path, "--picker", pod.picker, "--port", str(port), "--concurrency", "1", *gw]
    envoy = Proc(["envoy", *args, "--set", f"gateway.drain_grace_s={grace_s}"])
    envoy.wait_for(rf"duplex envoy: listening on 127\.0\.0\.1:{port};", 60)
    until_serving(f"127.0.0.1:{port}", None)
    return envoy


def test_a_sigterm_drains_envoy_live_conversations_finish_and_new_connections_are_refused(pod: Pod) -> None:
    port = free_port()
    envoy = _plain_envoy(pod, port, 120)
    try:
        chunks = client.split_chunks(tone(2.0), CHUNK)

        async def run() -> tuple[grpc.StatusCode, int]:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                converse = ch.stream_stream(
                    "/duplex.v1.Duplex/Converse",
                    request_serializer=pb.ClientEvent.SerializeToString,
                    response_deserializer=pb.ServerEvent.FromString,
                )
                call = converse(metadata=ALICE)
                events = call.__aiter__()

                async def next_of(kind: str) -> pb.ServerEvent:
                    while True:
                        event: pb.ServerEvent = await asyncio.wait_for(events.__anext__(), 60)
                        if event.WhichOneof("event") == kind:
                            return event

                await call.write(client.start_event(no_resume=True))  # no slot held after it
                await next_of("ready")
                audio = 0
                for seq in range(len(chunks)):
                    if seq == 2:  # mid-conversation: the pod is being replaced
                        envoy.p.send_signal(signal.SIGTERM)
                        await asyncio.to_thread(envoy.wait_for, r"duplex envoy: draining", 30)
                        with pytest.raises(ConnectionRefusedError):  # a new connection goes elsewhere
                            socket.create_connection(("127.0.0.1", port), timeout=5).close()
                    await call.write(client.audio_event(seq, chunks[seq]))
                    await next_of("audio")  # each chunk's output comes back while Envoy drains
                    audio += 1
                await call.write(pb.ClientEvent(end=pb.EndOfStream()))
                await call.done_writing()
                async for _ in events:
                    pass
                return await call.code(), audio

        code, audio = asyncio.run(run())
        assert code == grpc.StatusCode.OK and audio == len(chunks)
        assert envoy.p.wait(timeout=60) == 0  # the last stream ended: Envoy stopped, long before the grace
        envoy.wait_for(r"duplex envoy: drained$", 5)
    finally:
        if envoy.p.poll() is None:
            envoy.p.kill()
            envoy.p.wait(timeout=30)


def test_the_drain_grace_bounds_the_drain(pod: Pod) -> None:
    """With no grace, a SIGTERM closes the live conversation at once (UNAVAILABLE) and Envoy stops."""
    port = free_port()
    envoy = _plain_envoy(pod, port, 0)
    try:

        async def run() -> grpc.StatusCode:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                call = ch.stream_stream(
                    "/duplex.v1.Duplex/Converse",
                    request_serializer=pb.ClientEvent.SerializeToString,
                    response_deserializer=pb.ServerEvent.FromString,
                )(metadata=ALICE)
                await call.write(client.start_event(no_resume=True))  # no slot held after it
                try:
                    async for event in call:
                        if event.WhichOneof("event") == "ready":
                            envoy.p.send_signal(signal.SIGTERM)
                except grpc.aio.AioRpcError as e:
                    return e.code()
                return await call.code()

        assert asyncio.run(asyncio.wait_for(run(), 60)) == grpc.StatusCode.UNAVAILABLE
        envoy.wait_for(r"duplex envoy: drain grace over: 1 live stream\(s\) closed", 30)
        assert envoy.p.wait(timeout=30) == 0
    finally:
        if envoy.p.poll() is None:
            envoy.p.kill()
            envoy.p.wait(timeout=30)


def test_an_engine_dropped_from_the_endpoint_file_keeps_its_live_conversation(pod: Pod, tmp_path: Path) -> None:
    """What the picker does when an engine stops serving (its EndpointSlice endpoint goes): the engine leaves
    Envoy's endpoint file; a conversation already on it streams on to its end, a new one is refused."""
    (tmp_path / "eds").mkdir()
    eds = tmp_path / "eds" / "engines.json"
    write_endpoints(eds, [pod.engine], 1)
    port = free_port()
    envoy = _plain_envoy(pod, port, 30, eds, ("--bootstrap-path", str(tmp_path / "envoy.json")))
    admin = Admin((tmp_path / "admin-address.txt").read_text().strip())  # written before Envoy listens
    members = "cluster.engines.membership_total"
    assert admin.stats(f"^{members}$")[members] == 1
    chunks = client.split_chunks(tone(1.6), CHUNK)
    try:

        async def run() -> tuple[grpc.StatusCode, int, client.Conversation]:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                call = ch.stream_stream(
                    "/duplex.v1.Duplex/Converse",
                    request_serializer=pb.ClientEvent.SerializeToString,
                    response_deserializer=pb.ServerEvent.FromString,
                )(metadata=ALICE)
                events = call.__aiter__()

                async def next_of(kind: str) -> None:
                    while (await asyncio.wait_for(events.__anext__(), 60)).WhichOneof("event") != kind:
                        pass

                await call.write(client.start_event(no_resume=True))  # no slot held after it
                await next_of("ready")
                audio = 0
                for seq in range(len(chunks)):
                    if seq == 2:
                        write_endpoints(eds, [], 2)  # the engine leaves Envoy's endpoints mid-conversation
                        while admin.stats(f"^{members}$")[members]:  # until Envoy has applied the file
                            await asyncio.sleep(0.05)
                    await call.write(client.audio_event(seq, chunks[seq]))
                    await next_of("audio")
                    audio += 1
                await call.write(pb.ClientEvent(end=pb.EndOfStream()))
                await call.done_writing()
                async for _ in events:
                    pass
                code = await call.code()
                late = await asyncio.wait_for(
                    client.converse(ch, chunks[:1], metadata=ALICE, realtime=False), 60
                )  # a new session now: no endpoint for the engine the picker names
                return code, audio, late

        code, audio, late = asyncio.run(run())
        assert code == grpc.StatusCode.OK and audio == len(chunks)
        assert late.code == grpc.StatusCode.UNAVAILABLE, (late.code, late.details)
    finally:
        envoy.p.terminate()
        envoy.p.wait(timeout=60)
