"""A Realtime session's lifecycle (docs/realtime.md "Session lifecycle"): open → starting → live → closed.
:class:`Lifecycle` holds the phase and when each was entered, on an injected clock; it refuses a transition the
table does not have, so a bug shows as an error naming both phases, not as a session in two states (as the
engine's own ``serving/engine/lifecycle.py``). ``session.RealtimeSession`` makes the transitions."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class Phase(enum.Enum):
    OPEN = "open"
    """``session.created`` sent; ``session.update`` may still change the instructions, tools and voice; no
    conversation yet."""
    STARTING = "starting"
    """The first event that needs the conversation (audio or an item) came: the SessionStart is with the
    engine; audio is buffered until its SessionReady."""
    LIVE = "live"
    """SessionReady arrived: audio is resampled, cut into chunks and handed over as it fills."""
    CLOSED = "closed"
    """The WebSocket is over (either side ended it, or the engine refused or ended the conversation)."""


NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.OPEN: frozenset({Phase.STARTING, Phase.CLOSED}),
    Phase.STARTING: frozenset({Phase.LIVE, Phase.CLOSED}),
    Phase.LIVE: frozenset({Phase.CLOSED}),
    Phase.CLOSED: frozenset({Phase.CLOSED}),  # closing a closed session again changes nothing
}
"""The phases each phase may move to."""


class LifecycleError(RuntimeError):
    """A transition the lifecycle does not have (a bug in the endpoint)."""


class Lifecycle:
    """The phase of one Realtime session and the history of its transitions."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock``: monotonic seconds (tests inject one they advance)."""
        self.clock = clock
        self.phase = Phase.OPEN
        self.history: list[tuple[float, Phase]] = [(clock(), Phase.OPEN)]
        """Each phase entered and the clock reading when it was."""

    def _enter(self, phase: Phase) -> None:
        if phase not in NEXT[self.phase]:
            raise LifecycleError(f"realtime session: no transition from {self.phase.value} to {phase.value}")
        if phase is not self.phase:
            self.phase = phase
            self.history.append((self.clock(), phase))

    @property
    def since(self) -> float:
        """Clock reading when the current phase was entered."""
        return self.history[-1][0]

    def start(self) -> None:
        """OPEN → STARTING: the SessionStart goes to the engine."""
        self._enter(Phase.STARTING)

    def live(self) -> None:
        """STARTING → LIVE: the engine's SessionReady arrived."""
        self._enter(Phase.LIVE)

    def close(self) -> None:
        """Any phase → CLOSED."""
        self._enter(Phase.CLOSED)
