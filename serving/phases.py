"""A session lifecycle as a table of transitions: :class:`PhaseMachine` holds the current phase and when each
was entered, on an injected clock, and refuses a transition its table lacks, so a bug shows as an error naming
both phases, not as a session in two states. The engine's sessions (``engine/lifecycle.py``) and the Realtime
WebSocket sessions (``realtime/lifecycle.py``) are two tables over it."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

P = TypeVar("P", bound=enum.Enum)


class LifecycleError(RuntimeError):
    """A transition the lifecycle does not have (a bug in whatever drives it)."""


class PhaseMachine(Generic[P]):
    """The phase of one session and the history of its transitions."""

    what = "session lifecycle"
    """Named in a refused transition's message."""

    def __init__(self, first: P, table: Mapping[P, frozenset[P]], clock: Callable[[], float] = time.monotonic) -> None:
        """``table``: the phases each phase may move to; ``clock``: monotonic seconds (tests inject one)."""
        self.clock = clock
        self.table = table
        self.phase = first
        self.history: list[tuple[float, P]] = [(clock(), first)]
        """Each phase entered and the clock reading when it was."""

    def _enter(self, phase: P) -> None:
        if phase not in self.table[self.phase]:
            raise LifecycleError(f"{self.what}: no transition from {self.phase.value} to {phase.value}")
        if phase is not self.phase:
            self.phase = phase
            self.history.append((self.clock(), phase))

    @property
    def since(self) -> float:
        """Clock reading when the current phase was entered."""
        return self.history[-1][0]
