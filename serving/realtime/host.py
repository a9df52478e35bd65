"""What the Realtime session needs of the process that runs its conversation (the engine): a session path that
takes the client's events as ``pb.ClientEvent`` objects and yields its server events, and how a conversation
that did not end as the protocol says is reported. The engine implements it (``EngineServer``); nothing here
imports the engine."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

import grpc

from duplex.v1 import duplex_pb2 as pb


class ConversationEnded(Exception):
    """The engine refused the conversation's start or ended it with a status (the gRPC status a gRPC client
    would get, and its message naming what was wrong)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class ConversationHost(Protocol):
    """The engine, as its Realtime sessions see it."""

    model_name: str
    draining: bool
    session_sampling: bool
    """The model samples with a session's own ``SessionStart.temperature`` (the Moshi family); otherwise a
    Realtime ``session.temperature`` is accepted and ignored."""
    continues_after_input: bool
    """The model goes on after its client's input ends (Hibiki translates what it heard): a session's
    ``EndOfStream`` is followed by the model's tail, then the conversation ends OK."""

    def open_conversation(
        self, first: pb.ClientEvent, rest: AsyncIterator[pb.ClientEvent], metadata: dict[str, str]
    ) -> AsyncGenerator[pb.ServerEvent, None]:
        """The conversation ``first`` (a SessionStart) starts, fed ``rest``, with the stream headers
        ``metadata`` (key id, placement); ``ConversationEnded`` when it is refused or ends with a status."""
        ...
