"""The session picker follows the engines' leader EndpointSlices through a real kube-apiserver: the endpoint
file Envoy reads and the picker's engine set track replicas that are added, stop serving and are removed; an
API server that goes away (or a 403) is retried without losing the last endpoints; the front pods' rendered
Role is exactly enough to watch; which endpoint conditions count as serving."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from duplex.operator.kube import Kube
from duplex.operator.naming import ModelRef
from duplex.operator.render.front import front_rbac
from duplex.serving.envoy.config import ENGINES_CLUSTER
from duplex.serving.envoy.eds import EndpointFiles
from duplex.serving.picker.cli import watch_engines
from duplex.serving.picker.server import PickerServer
from duplex.serving.picker.watch import load_api_client, serving_addresses
from duplex.serving.spec import GatewaySpec

PORT = 8081


async def eventually(cond: Callable[[], bool], deadline_s: float = 20.0, what: str = "condition") -> None:
    """Poll ``cond`` until true or fail after the deadline (state observation, not synchronisation by sleep)."""
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def slice_api(kube: Kube) -> str:
    served = kube.served_group_versions("EndpointSlice")
    return "discovery.k8s.io/v1" if "discovery.k8s.io/v1" in served else "discovery.k8s.io/v1beta1"


def endpoint_slice(
    kube: Kube, ref: ModelRef, name: str, ips: dict[str, bool], port: int = PORT, leader: bool = True
) -> dict[str, Any]:
    """An EndpointSlice as the controller writes it for a leader Service: the Service's labels, the pod's
    ``grpc`` port, one endpoint per IP with its ``ready`` condition."""
    labels = ref.labels("engine", **({"duplex.ai/leader": "true"} if leader else {}))
    return {
        "apiVersion": slice_api(kube),
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ref.namespace, "labels": labels},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}, {"name": "dist", "port": 29500}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip, ready in ips.items()],
    }


def eds_addresses(path: Path) -> list[str]:
    doc = json.loads(path.read_text())
    out = []
    for group in doc["resources"][0]["endpoints"]:
        for lb in group["lb_endpoints"]:
            sock = lb["endpoint"]["address"]["socket_address"]
            out.append(f"{sock['address']}:{sock['port_value']}")
    return sorted(out)


class Front:
    """A picker following ``ref``'s leader EndpointSlices, writing the endpoint file in ``path``."""

    def __init__(self, ref: ModelRef, path: Path) -> None:
        spec = GatewaySpec(host="127.0.0.1", open_access=True, metrics_port=0, engine_selector=ref.leader_selector)
        self.server = PickerServer(spec, bind_port=0, bind_host="127.0.0.1")
        self.path = path
        self.files = EndpointFiles({ENGINES_CLUSTER: path})
        self.files.publish(ENGINES_CLUSTER, [])
        self.ref = ref

    def engines(self) -> list[str]:
        return sorted(r.address for r in self.server.picker.router.replicas)

    def follows(self, addresses: list[str]) -> bool:
        return self.engines() == addresses and eds_addresses(self.path) == addresses


@contextlib.asynccontextmanager
async def following(front: Front, api: client.ApiClient) -> Any:
    await front.server.start()
    watch = watch_engines(front.server, front.files, api, front.ref.namespace, front.ref.leader_selector)
    try:
        yield watch
    finally:
        watch.stop(0)
        await front.server.stop(0)


class TcpRelay:
    """A plain TCP relay to the API server that can be cut (every connection closed, the port refused) and
    restored on the same port: the API server going away and coming back, as the picker sees it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.handlers: set[asyncio.Task[Any]] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.handlers.add(task)
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        self.writers.clear()
        await self.server.wait_closed()

    async def stop(self) -> None:
        """Cut, then wait for every connection's pipes to end (none left pending when the loop closes)."""
        await self.cut()
        await asyncio.gather(*self.handlers, return_exceptions=True)


def api_through(kubeconfig: Path, port: int) -> client.ApiClient:
    api = load_api_client(str(kubeconfig))
    host = api.configuration.host.rpartition(":")[0]
    api.configuration.host = f"{host}:{port}"
    return api


async def test_the_picker_follows_adds_unready_and_removals(
    kube: Kube, kube_cluster: Any, namespace: str, tmp_path: Path
) -> None:
    ref = ModelRef("m", namespace, "")
    other = ModelRef("other", namespace, "")
    kube.create(endpoint_slice(kube, ref, "m-engine-0-leader-abc", {"127.0.0.2": True}), namespace)
    kube.create(endpoint_slice(kube, other, "other-engine-0-leader-abc", {"127.0.0.9": True}), namespace)
    # the same model's headless Service (every rank, not only the leaders) is not the picker's
    kube.create(endpoint_slice(kube, ref, "m-engine-0-xyz", {"127.0.0.8": True}, leader=False), namespace)
    front = Front(ref, tmp_path / "engines.json")
    async with following(front, load_api_client(str(kube_cluster.kubeconfig))):
        a, b, c = (f"127.0.0.{i}:{PORT}" for i in (2, 3, 4))
        await eventually(lambda: front.follows([a]), what="the first list")

        # a second replica appears (autoscaling, a DuplexModel edit): Envoy and the placement get it
        kube.create(endpoint_slice(kube, ref, "m-engine-1-leader-abc", {"127.0.0.3": True}), namespace)
        await eventually(lambda: front.follows([a, b]), what="an added replica")
        kept = front.server.picker.router.replicas[0]

        # replica 0's leader stops serving (its pod goes unready or terminates): out of both at once
        name = "m-engine-0-leader-abc"
        body = endpoint_slice(kube, ref, name, {"127.0.0.2": False})
        kube.patch(body["apiVersion"], "EndpointSlice", namespace, name, {"endpoints": body["endpoints"]})
        await eventually(lambda: front.follows([b]), what="an unready endpoint dropped")
        assert front.server.picker.router.replicas[0] is not kept

        # a slice gains a serving endpoint, then a slice goes away entirely
        body = endpoint_slice(kube, ref, name, {"127.0.0.2": True, "127.0.0.4": True})
        kube.patch(body["apiVersion"], "EndpointSlice", namespace, name, {"endpoints": body["endpoints"]})
        await eventually(lambda: front.follows([a, b, c]), what="a slice with two serving endpoints")
        kube.delete(body["apiVersion"], "EndpointSlice", namespace, "m-engine-1-leader-abc")
        await eventually(lambda: front.follows([a, c]), what="a deleted slice")


async def test_the_api_going_away_keeps_the_last_endpoints_and_the_watch_recovers(
    kube: Kube, kube_cluster: Any, namespace: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ref = ModelRef("m", namespace, "")
    kube.create(endpoint_slice(kube, ref, "m-engine-0-leader-abc", {"127.0.0.2": True}), namespace)
    host, _, port = load_api_client(str(kube_cluster.kubeconfig)).configuration.host.rpartition(":")
    relay = TcpRelay((host.rpartition("/")[2], int(port)))
    await relay.start()
    front = Front(ref, tmp_path / "engines.json")
    a, b = f"127.0.0.2:{PORT}", f"127.0.0.3:{PORT}"
    with caplog.at_level(logging.WARNING, logger="duplex.serving.picker.watch"):
        async with following(front, api_through(kube_cluster.kubeconfig, relay.port)) as watch:
            await eventually(lambda: front.follows([a]), what="the first list")
            await relay.cut()
            # while the API is unreachable the replicas change; the picker keeps what it last knew
            kube.create(endpoint_slice(kube, ref, "m-engine-1-leader-abc", {"127.0.0.3": True}), namespace)
            await eventually(lambda: watch.failures >= 2, deadline_s=30, what="retries while the API is away")
            assert front.follows([a])
            assert front.server._server is not None  # still serving
            await relay.start()  # the API is back on the same address: list again, then watch
            await eventually(lambda: front.follows([a, b]), deadline_s=60, what="the watch recovering")
        await relay.stop()
    failed = [r.getMessage() for r in caplog.records if "engine watch" in r.getMessage()]
    assert failed and "retrying in" in failed[0] and "keeping the last 1" in failed[0], failed


async def test_the_rendered_role_is_exactly_enough_and_a_403_is_retried(
    kube: Kube, kube_cluster: Any, namespace: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The picker as the front pods' ServiceAccount (impersonated): without its RoleBinding the API answers
    403, which is logged and retried; once the rendered Role and RoleBinding exist the watch works."""
    ref = ModelRef("m", namespace, "")
    account, role, binding = front_rbac(ref)
    kube.create(endpoint_slice(kube, ref, "m-engine-0-leader-abc", {"127.0.0.2": True}), namespace)
    kube.create(account, namespace)
    kube.create(role, namespace)
    api = load_api_client(str(kube_cluster.kubeconfig))
    api.set_default_header("Impersonate-User", f"system:serviceaccount:{namespace}:{account['metadata']['name']}")
    front = Front(ref, tmp_path / "engines.json")
    with caplog.at_level(logging.WARNING, logger="duplex.serving.picker.watch"):
        async with following(front, api) as watch:
            await eventually(lambda: watch.failures >= 1, deadline_s=30, what="a refused list")
            assert front.follows([])
            kube.create(binding, namespace)
            await eventually(lambda: front.follows([f"127.0.0.2:{PORT}"]), deadline_s=60, what="the granted watch")
    assert any("HTTP 403" in r.getMessage() for r in caplog.records)
    verbs = {v for rule in role["rules"] for v in rule["verbs"]}
    assert verbs == {"get", "list", "watch"}
    assert [r["resources"] for r in role["rules"]] == [["endpointslices"]]


def test_which_endpoints_count_as_serving() -> None:
    """The conditions as Kubernetes 1.22+ report them (``serving``, ``terminating``), which the 1.20 test
    server drops on write, and what the picker does with each."""

    def slice_of(*endpoints: dict[str, Any], kind: str = "IPv4", port: str = "grpc") -> dict[str, Any]:
        return {"addressType": kind, "ports": [{"name": port, "port": 7070}], "endpoints": list(endpoints)}

    def ep(ip: str, **conditions: bool) -> dict[str, Any]:
        return {"addresses": [ip], "conditions": conditions}

    slices = [
        slice_of(
            ep("10.0.0.1", ready=True, serving=True),
            ep("10.0.0.2", ready=True, serving=False),  # a publishNotReadyAddresses Service: ready, not serving
            ep("10.0.0.3", ready=False, serving=True, terminating=True),  # terminating: no new session
            ep("10.0.0.4"),  # nothing reported: ready, as the API says
            ep("10.0.0.5", ready=False),
            ep("10.0.0.6", serving=True),
        ),
        slice_of(ep("10.0.0.1", ready=True)),  # moving between two slices: listed once
        slice_of(ep("engine.example", ready=True), kind="FQDN"),  # a name: never given to Envoy
        slice_of(ep("10.0.0.9", ready=True), port="dist"),  # no grpc port: not an engine endpoint
    ]
    assert serving_addresses(slices) == ["10.0.0.1:7070", "10.0.0.4:7070", "10.0.0.6:7070"]
