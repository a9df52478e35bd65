"""Where a new session goes: the replica with the most free slots, counting the engines' own load reports
plus the picker's placements those reports do not include yet (a burst of joins between two reports must not
all land on the replica that looked emptiest), never an unhealthy or draining one.

Each placement gets a number (``PICKER_ID.NUMBER``, rising) that travels to the engine as a header; the
engine's ``Replica.GetLoad`` says the highest number of this picker that reached it, so a report replaces
exactly the placements it already counts. Pure bookkeeping on an injected clock."""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .routing import Replica

FORGET_S = 10.0
"""A placement that has not reached its replica (as reported) this long after it was made is dropped: its
client gave up, or the replica stopped answering."""


@dataclass(frozen=True)
class Placement:
    address: str
    key_id: str
    number: int
    at: float


class Placements:
    """The picker's own placements that the engines' last reports do not include yet."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, picker_id: str = "") -> None:
        self.clock = clock
        self.id = picker_id or secrets.token_hex(6)
        """This picker's id in the placement header (a restarted picker numbers from 1 again under a new id)."""
        self.number = 0
        self.recent: list[Placement] = []

    def add(self, address: str, key_id: str) -> str:
        """Count a session placed on ``address``; the header value that tells its engine."""
        self.number += 1
        self.recent.append(Placement(address, key_id, self.number, self.clock()))
        return f"{self.id}.{self.number}"

    def reported(self, address: str, seen: int) -> None:
        """A load report of ``address`` that counts this picker's placements up to number ``seen``."""
        self.recent = [p for p in self.recent if p.address != address or p.number > seen]

    def _live(self) -> list[Placement]:
        oldest = self.clock() - FORGET_S
        self.recent = [p for p in self.recent if p.at > oldest]
        return self.recent

    def pending(self) -> Counter[str]:
        """Placements per replica address not yet in its report."""
        return Counter(p.address for p in self._live())

    def pending_by_key(self, on: set[str]) -> Counter[str]:
        """Placements per key id not yet in a report, counting only those on the replicas ``on``."""
        return Counter(p.key_id for p in self._live() if p.address in on)


def free_slots(replica: Replica, pending: int) -> int:
    """Slots left on ``replica``: capacity − reported sessions − placements since the report."""
    return replica.capacity - replica.used - pending


def ranked(replicas: Iterable[Replica], pending: Counter[str]) -> list[Replica]:
    """The healthy replicas with a free slot, most free slots first (in listed order on a tie)."""
    room = [(free_slots(r, pending[r.address]), i, r) for i, r in enumerate(replicas) if r.healthy]
    return [r for free, _, r in sorted(room, key=lambda t: (-t[0], t[1])) if free > 0]


def choose(replicas: Iterable[Replica], pending: Counter[str]) -> Replica | None:
    """The healthy replica with the most free slots (the first listed on a tie); None when none has one."""
    best = ranked(replicas, pending)
    return best[0] if best else None


def sessions_by_key(replicas: Iterable[Replica], placements: Placements) -> dict[str, int]:
    """Live sessions per API key id over every healthy replica: their reports plus the picker's placements
    they do not include yet. A placement on a replica that went down is not counted: its session never
    started there, or Envoy started it on the next replica listed, whose report counts it."""
    live: Counter[str] = Counter()
    healthy = {r.address for r in replicas if r.healthy}
    for r in replicas:
        if r.healthy:
            live.update(r.by_key)
    live.update(placements.pending_by_key(healthy))
    return dict(live)
