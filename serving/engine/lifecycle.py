"""An engine session's lifecycle (docs/serving.md "Session lifecycles"): handshake → attached → parked →
closed. :class:`Lifecycle` holds the phase and when each was entered, on the engine's injected clock; it
refuses a transition the table does not have, so a bug shows as an error naming both phases, not as a
session in two states. ``converse.EngineStream`` makes the transitions."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class Phase(enum.Enum):
    HANDSHAKE = "handshake"
    """A stream opened: its SessionStart is being checked and a slot sought."""
    ATTACHED = "attached"
    """A stream holds the session: slot held, events flowing both ways."""
    PARKED = "parked"
    """The stream dropped: the slot is kept for the resume grace, for a stream that presents the token."""
    CLOSED = "closed"
    """Over: slot freed, agent jobs ended, token void."""


NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.HANDSHAKE: frozenset({Phase.ATTACHED, Phase.CLOSED}),
    Phase.ATTACHED: frozenset({Phase.PARKED, Phase.CLOSED}),
    Phase.PARKED: frozenset({Phase.ATTACHED, Phase.CLOSED}),
    Phase.CLOSED: frozenset({Phase.CLOSED}),  # ending an ended session again changes nothing
}
"""The phases each phase may move to."""


class LifecycleError(RuntimeError):
    """A transition the lifecycle does not have (an engine bug)."""


class Lifecycle:
    """The phase of one session and the history of its transitions."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock``: monotonic seconds (the engine's clock; tests inject one they advance)."""
        self.clock = clock
        self.phase = Phase.HANDSHAKE
        self.history: list[tuple[float, Phase]] = [(clock(), Phase.HANDSHAKE)]
        """Each phase entered and the clock reading when it was."""

    def _enter(self, phase: Phase) -> None:
        if phase not in NEXT[self.phase]:
            raise LifecycleError(f"session lifecycle: no transition from {self.phase.value} to {phase.value}")
        if phase is not self.phase:
            self.phase = phase
            self.history.append((self.clock(), phase))

    @property
    def since(self) -> float:
        """Clock reading when the current phase was entered."""
        return self.history[-1][0]

    def attach(self) -> None:
        """HANDSHAKE → ATTACHED (a new session's SessionReady goes out) or PARKED → ATTACHED (a resume)."""
        self._enter(Phase.ATTACHED)

    def park(self) -> None:
        """ATTACHED → PARKED: the stream dropped and the session is kept for a resume."""
        self._enter(Phase.PARKED)

    def close(self) -> None:
        """Any phase → CLOSED: refused, finished, failed, or past its resume grace."""
        self._enter(Phase.CLOSED)
