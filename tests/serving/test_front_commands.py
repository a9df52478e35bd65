"""``duplex picker`` and ``duplex envoy``, the two processes of a front pod, as real processes with the real
Envoy binary in front of a real engine: the picker writes the only endpoint file Envoy reads; TLS and mutual
TLS end in Envoy (a client without a certificate of the client CA is refused at the handshake; a
certificate does not replace the API key); bad input exits 2 with a message naming what was wrong. Every
wait is on a state (a printed line, a health answer) with a deadline."""

from __future__ import annotations

import asyncio
import json
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
from duplex.serving.envoy.eds import write_endpoints
from duplex.serving.envoy.process import envoy_binary
from duplex.serving.picker.auth import key_line
from duplex.serving.ports import free_port
from duplex.serving.spec import GatewaySpec

from .conftest import tone
from .test_cli import DUPLEX, Proc

CHUNK = 3200
ENGINE = ["engine", "--port", "0", "--set", "engine.host=127.0.0.1", "--set", "engine.metrics_port=0"]
ALICE = (("authorization", "Bearer key-alice"),)


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

    def creds(self, cert: ClientCert | None) -> grpc.ChannelCredentials:
        root = self.certs.ca.read_bytes()
        if cert is None:
            return grpc.ssl_channel_credentials(root_certificates=root)
        return grpc.ssl_channel_credentials(root_certificates=root, private_key=cert.key, certificate_chain=cert.cert)


def until_serving(addr: str, creds: grpc.ChannelCredentials, deadline_s: float = 60.0) -> None:
    """The picker's health, asked through Envoy's listener, answers SERVING."""
    end = time.monotonic() + deadline_s
    with grpc.secure_channel(addr, creds) as ch:
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
