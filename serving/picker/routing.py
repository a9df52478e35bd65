"""The engine replicas as the session picker sees them: their health (polled, and watched) and their
``Replica.GetLoad`` answers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from duplex.v1 import duplex_pb2 as pb

log = logging.getLogger(__name__)


GET_LOAD = "/duplex.v1.Replica/GetLoad"


async def get_load(channel: grpc.aio.Channel, timeout_s: float) -> pb.ReplicaLoad:
    """The load report (``Replica.GetLoad``) of the engine at the other end of ``channel``: what the picker
    places sessions on."""
    call = channel.unary_unary(
        GET_LOAD, request_serializer=pb.LoadRequest.SerializeToString, response_deserializer=pb.ReplicaLoad.FromString
    )
    load: pb.ReplicaLoad = await call(pb.LoadRequest(), timeout=timeout_s)
    return load


async def active_sessions(address: str, timeout_s: float = 5.0) -> int:
    """The conversations the engine at ``address`` (HOST:PORT, its gRPC port) holds, from its load report over a
    channel of its own."""
    async with grpc.aio.insecure_channel(address) as channel:
        return int((await get_load(channel, timeout_s)).active_sessions)


@dataclass
class Replica:
    address: str
    channel: grpc.aio.Channel
    healthy: bool = False
    others: int = 0
    """Sessions on the replica, as of the last report (the picker's placements since: ``placement.py``)."""
    capacity: int = 0
    model: str = ""
    """Served model name, as of the last report."""
    chunk_ms: int = 0
    """Micro-turn length, as of the last report."""
    http_port: int = 0
    """The replica's Realtime WebSocket port (0 = not served), as of the last report."""
    by_key: dict[str, int] = field(default_factory=dict)
    """Live sessions per API key id on the replica, as of the last report."""
    placements_seen: dict[str, int] = field(default_factory=dict)
    """Per session picker, the highest placement number that reached the replica, as of the last report."""

    @property
    def used(self) -> int:
        return self.others


class Router:
    def __init__(
        self,
        addresses: list[str],
        interval_s: float,
        max_message_bytes: int,
        on_report: Callable[[Replica], None] | None = None,
        watch_health: bool = False,
    ) -> None:
        """``on_report(replica)`` is called after each load report (the session picker then drops its own
        placements the report includes). ``watch_health``: also hold a ``Health.Watch`` stream per replica,
        so a replica that starts draining (its health turns NOT_SERVING) is out at once, not at the next
        poll."""
        self.options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self.replicas = [self._replica(a) for a in addresses]
        self.interval_s = interval_s
        self.on_report, self.watch_health = on_report, watch_health
        self._task: asyncio.Task[None] | None = None
        self._watches: dict[str, list[asyncio.Task[None]]] = {}
        """Per replica address, the tasks watching its connection (and health)."""
        self._started = False
        self._background: set[asyncio.Task[None]] = set()
        self.ready = asyncio.Event()

    def _replica(self, address: str) -> Replica:
        return Replica(address, grpc.aio.insecure_channel(address, options=self.options))

    def _watch_replica(self, r: Replica) -> None:
        tasks = [asyncio.create_task(self._watch(r))]
        if self.watch_health:
            tasks.append(asyncio.create_task(self._watch_health(r)))
        self._watches[r.address] = tasks

    async def start(self) -> None:
        await self.poll_once()
        self._task = asyncio.create_task(self._loop())
        for r in self.replicas:
            self._watch_replica(r)
        self._started = True

    def set_addresses(self, addresses: list[str]) -> tuple[list[str], list[str]]:
        """Route to exactly ``addresses`` from now on: a removed replica gets no new session at once (its
        connection here only carried health and load reports, so live conversations, which do not pass through
        this router's channels, are untouched); an added one is polled right away and is healthy once it
        answers. Returns (added, removed)."""
        wanted = list(dict.fromkeys(addresses))
        have = {r.address: r for r in self.replicas}
        removed = [a for a in have if a not in wanted]
        added = [a for a in wanted if a not in have]
        self.replicas = [have.get(a) or self._replica(a) for a in wanted]
        for address in removed:
            for task in self._watches.pop(address, []):
                task.cancel()
            self._spawn(have[address].channel.close())
        if self._started:
            for r in self.replicas:
                if r.address in added:
                    self._watch_replica(r)
                    self._spawn(self._poll(r))
        if added or removed:
            log.info("engine replicas: %d (+%s, -%s)", len(self.replicas), added or "", removed or "")
        return added, removed

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for task in [self._task, *(t for tasks in self._watches.values() for t in tasks)]:
            if task is not None:
                task.cancel()
        for r in self.replicas:
            await r.channel.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.poll_once()

    async def _watch(self, r: Replica) -> None:
        """Mark a replica down the moment its connection drops (READY → anything else), without waiting for
        the next poll: a replica that died gets no new sessions in the meantime. The poll marks it healthy
        again once it answers."""
        state = r.channel.get_state(try_to_connect=False)
        while True:
            await r.channel.wait_for_state_change(state)
            new = r.channel.get_state(try_to_connect=False)
            if state == grpc.ChannelConnectivity.READY and new != grpc.ChannelConnectivity.READY:
                self.mark_down(r, f"connection {new.name}")
            state = new

    async def _watch_health(self, r: Replica) -> None:
        """Mark ``r`` down the moment its health service says it is not SERVING (a drain begins), and end
        the watch then: a draining server's stop would otherwise cancel it under its handler. A watch that
        ended is opened again after ``interval_s`` (the poll covers the gap)."""
        stub = health_pb2_grpc.HealthStub(r.channel)
        while True:
            call = stub.Watch(health_pb2.HealthCheckRequest())
            try:
                async for answer in call:
                    if answer.status != health_pb2.HealthCheckResponse.SERVING:
                        self.mark_down(r, f"health {health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)}")
                        break
            except grpc.aio.AioRpcError:
                pass
            finally:
                call.cancel()
            await asyncio.sleep(self.interval_s)

    def mark_down(self, r: Replica, why: str) -> None:
        """Stop routing to ``r`` until a poll finds it healthy again (its connection dropped or it said
        UNAVAILABLE)."""
        if r.healthy:
            log.warning("replica %s down: %s", r.address, why, extra={"replica": r.address})
        r.healthy = False

    async def poll_once(self) -> None:
        await asyncio.gather(*(self._poll(r) for r in self.replicas))
        if any(r.healthy for r in self.replicas):
            self.ready.set()

    async def _poll(self, r: Replica) -> None:
        try:
            h = await health_pb2_grpc.HealthStub(r.channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            load = await get_load(r.channel, 1.0)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError) as e:  # UsageError: removed, its channel closed
            why = e.code().name if isinstance(e, grpc.aio.AioRpcError) else "channel closed"
            if r.healthy:
                log.warning("replica %s unhealthy: %s", r.address, why, extra={"replica": r.address})
            r.healthy = False
            return
        r.healthy = h.status == health_pb2.HealthCheckResponse.SERVING and not load.draining
        r.others, r.capacity = load.active_sessions, load.capacity
        r.model, r.chunk_ms, r.http_port = load.model, load.chunk_ms, load.http_port
        r.by_key, r.placements_seen = dict(load.sessions_by_key), dict(load.placements_seen)
        if self.on_report is not None:
            self.on_report(r)

    def healthy_count(self) -> int:
        return sum(r.healthy for r in self.replicas)

    def total_capacity(self) -> tuple[int, int]:
        return (sum(r.used for r in self.replicas if r.healthy), sum(r.capacity for r in self.replicas if r.healthy))
