"""A Realtime session's lifecycle (docs/realtime.md "Session lifecycle"): open → starting → live → closed.
:class:`Lifecycle` holds the phase and when each was entered, on an injected clock; it refuses a transition the
table does not have, so a bug shows as an error naming both phases, not as a session in two states (as the
engine's own ``serving/engine/lifecycle.py``). ``session.RealtimeSession`` makes the transitions."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from ..phases import LifecycleError, PhaseMachine

__all__ = ["NEXT", "Lifecycle", "LifecycleError", "Phase"]


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


class Lifecycle(PhaseMachine[Phase]):
    """The phase of one Realtime session and the history of its transitions."""

    what = "realtime session"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock``: monotonic seconds (tests inject one they advance)."""
        super().__init__(Phase.OPEN, NEXT, clock)

    def start(self) -> None:
        """OPEN → STARTING: the SessionStart goes to the engine."""
        self._enter(Phase.STARTING)

    def live(self) -> None:
        """STARTING → LIVE: the engine's SessionReady arrived."""
        self._enter(Phase.LIVE)

    def close(self) -> None:
        """Any phase → CLOSED."""
        self._enter(Phase.CLOSED)
