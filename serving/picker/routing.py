"""The engine replicas as the session picker sees them: their health (polled, and watched) and their
``Replica.GetLoad`` answers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from duplex.v1 import duplex_pb2 as pb

log = logging.getLogger(__name__)


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
        opts = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self.replicas = [Replica(a, grpc.aio.insecure_channel(a, options=opts)) for a in addresses]
        self.interval_s = interval_s
        self.on_report, self.watch_health = on_report, watch_health
        self._task: asyncio.Task[None] | None = None
        self._watches: list[asyncio.Task[None]] = []
        self.ready = asyncio.Event()

    async def start(self) -> None:
        await self.poll_once()
        self._task = asyncio.create_task(self._loop())
        self._watches = [asyncio.create_task(self._watch(r)) for r in self.replicas]
        if self.watch_health:
            self._watches += [asyncio.create_task(self._watch_health(r)) for r in self.replicas]

    async def close(self) -> None:
        for task in [self._task, *self._watches]:
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
            get_load = r.channel.unary_unary(
                "/duplex.v1.Replica/GetLoad",
                request_serializer=pb.LoadRequest.SerializeToString,
                response_deserializer=pb.ReplicaLoad.FromString,
            )
            load: pb.ReplicaLoad = await get_load(pb.LoadRequest(), timeout=1.0)
        except grpc.aio.AioRpcError as e:
            if r.healthy:
                log.warning("replica %s unhealthy: %s", r.address, e.code().name, extra={"replica": r.address})
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
