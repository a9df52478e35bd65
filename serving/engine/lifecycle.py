"""An engine session's lifecycle (docs/serving.md "Session lifecycles"): handshake → attached → parked →
closed. :class:`Lifecycle` holds the phase and when each was entered, on the engine's injected clock; it
refuses a transition the table does not have, so a bug shows as an error naming both phases, not as a
session in two states. ``converse.EngineStream`` makes the transitions."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from ..phases import LifecycleError, PhaseMachine

__all__ = ["NEXT", "Lifecycle", "LifecycleError", "Phase"]


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


class Lifecycle(PhaseMachine[Phase]):
    """The phase of one session and the history of its transitions."""

    what = "session lifecycle"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock``: monotonic seconds (tests inject one they advance)."""
        super().__init__(Phase.HANDSHAKE, NEXT, clock)

    def attach(self) -> None:
        """HANDSHAKE → ATTACHED (a new session's SessionReady goes out) or PARKED → ATTACHED (a resume)."""
        self._enter(Phase.ATTACHED)

    def park(self) -> None:
        """ATTACHED → PARKED: the stream dropped and the session is kept for a resume."""
        self._enter(Phase.PARKED)

    def close(self) -> None:
        """Any phase → CLOSED: refused, finished, failed, or past its resume grace."""
        self._enter(Phase.CLOSED)
