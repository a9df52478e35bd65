"""The client's session lifecycle (connecting → ready → streaming → draining → closed, resuming after a
drop), one test per
transition, driven event by event on an injected clock, without a network."""

from __future__ import annotations

import grpc
import pytest

from duplex.serving import client
from duplex.serving.client import Attempt, ClientSession, Conversation, Phase, ProtocolError, _Script
from duplex.serving.resume_token import HOLDER_LOST_METADATA
from duplex.v1 import duplex_pb2 as pb

CHUNK_US = 200_000
GRACE_MS = 3000


class FakeClock:
    """Client microseconds that move when the test says, or to each time the client waits for."""

    def __init__(self, t_us: int = 1_000_000) -> None:
        self.t_us = t_us
        self.waits: list[int] = []

    def now_us(self) -> int:
        return self.t_us

    async def sleep_until(self, t_us: int) -> None:
        self.waits.append(t_us)
        self.t_us = max(self.t_us, t_us)

    def advance(self, us: int) -> None:
        self.t_us += us


def session(clock: FakeClock, steer: bool = True, resume: bool = True) -> ClientSession:
    first = client.start_event(chunk_ms=CHUNK_US // 1000)
    first.start.client_time_us = clock.now_us()
    return ClientSession(Conversation(chunk_us=CHUNK_US), first, clock, steer, resume)


def ready(send_in_us: int = 0, held_us: int = 0, token: str = "tok") -> pb.ServerEvent:
    return pb.ServerEvent(
        ready=pb.SessionReady(
            chunk_ms=CHUNK_US // 1000,
            send_in_us=send_in_us,
            start_held_us=held_us,
            resume_token=token,
            resume_grace_ms=GRACE_MS if token else 0,
        )
    )


def audio(seq: int) -> pb.ServerEvent:
    return pb.ServerEvent(audio=pb.ModelAudio(seq=seq))


def streaming(clock: FakeClock, **kw: bool) -> ClientSession:
    s = session(clock, **kw)
    s.on_server_event(ready(), Attempt())
    s.on_sent(0)
    return s


def test_connecting_to_ready_learns_the_terms_and_follows_the_hint() -> None:
    clock = FakeClock()
    s = session(clock)
    assert s.phase is Phase.CONNECTING and s.start_event() is s.first
    clock.advance(10_000)  # 10 ms round trip, 2 ms of it held by the engine: 4 ms each way
    attempt = Attempt()
    s.on_server_event(ready(send_in_us=50_000, held_us=2_000), attempt)
    assert s.phase is Phase.READY and s.history[-1] == (clock.t_us, Phase.READY)
    assert attempt.ready.is_set() and attempt.resend_from == 0
    assert (s.token, s.grace_us) == ("tok", GRACE_MS * 1000)
    assert s.send_0_us == clock.t_us - 4_000 + 50_000
    assert s.conv.received[0].t_us == clock.t_us


def test_a_free_running_client_sends_at_once() -> None:
    clock = FakeClock()
    s = session(clock, steer=False)
    s.on_server_event(ready(send_in_us=50_000), Attempt())
    assert s.send_0_us == clock.t_us and s.aim is None


def test_ready_to_streaming_at_the_first_chunk() -> None:
    clock = FakeClock()
    s = session(clock)
    s.on_server_event(ready(), Attempt())
    clock.advance(7)
    assert s.on_sent(0) == clock.t_us
    assert s.phase is Phase.STREAMING and s.conv.sent_us == {0: clock.t_us}
    clock.advance(7)
    s.on_sent(1)
    assert [p for _, p in s.history].count(Phase.STREAMING) == 1


def test_streaming_to_resuming_when_the_stream_drops() -> None:
    clock = FakeClock()
    s = streaming(clock)
    s.on_server_event(audio(0), Attempt())
    acked: list[int] = []
    s.acknowledge = acked.append
    s.on_server_event(audio(1), Attempt())
    assert acked == [1] and s.seen == 2
    clock.advance(5)
    assert s.on_failed(grpc.StatusCode.UNAVAILABLE, "gone", ())
    assert s.phase is Phase.RESUMING and s.history[-1] == (clock.t_us, Phase.RESUMING)
    (drop,) = s.conv.resumptions
    assert (drop.dropped_us, drop.code) == (clock.t_us, grpc.StatusCode.UNAVAILABLE)
    assert s.resume_deadline_us == clock.t_us + GRACE_MS * 1000
    nxt = s.start_event().start
    assert (nxt.resume_token, nxt.resume_events_seen) == ("tok", 2)


def test_resuming_to_streaming_on_a_resumed_ready() -> None:
    clock = FakeClock()
    s = streaming(clock)
    s.produced = lambda: 9  # the schedule had produced 9 events
    s.on_failed(grpc.StatusCode.CANCELLED, "", ())
    clock.advance(300_000)
    attempt = Attempt()
    r = ready()
    r.ready.resumed, r.ready.resume_events_received = True, 6
    s.on_server_event(r, attempt)
    assert s.phase is Phase.STREAMING and attempt.resend_from == 6
    (drop,) = s.conv.resumptions
    assert (drop.resumed_us, drop.resent) == (clock.t_us, 3)


def test_resuming_retries_a_refusal_for_now_within_the_grace() -> None:
    clock = FakeClock()
    s = streaming(clock)
    s.on_failed(grpc.StatusCode.UNAVAILABLE, "", ())
    clock.advance(GRACE_MS * 1000 - 1)
    assert s.on_failed(grpc.StatusCode.ABORTED, "not yet", ())
    assert s.phase is Phase.RESUMING and len(s.conv.resumptions) == 1  # the same drop
    clock.advance(1)
    assert not s.on_failed(grpc.StatusCode.UNAVAILABLE, "", ())  # the grace is over
    assert s.phase is Phase.CLOSED and s.conv.code == grpc.StatusCode.UNAVAILABLE


def test_resuming_to_closed_when_refused_or_the_holder_is_gone() -> None:
    clock = FakeClock()
    s = streaming(clock)
    s.on_failed(grpc.StatusCode.UNAVAILABLE, "", ())
    assert not s.on_failed(grpc.StatusCode.NOT_FOUND, "expired", ())
    assert s.phase is Phase.CLOSED and s.conv.details == "expired"
    s = streaming(clock)
    s.on_failed(grpc.StatusCode.UNAVAILABLE, "", ())
    assert not s.on_failed(grpc.StatusCode.UNAVAILABLE, "", (HOLDER_LOST_METADATA,))
    assert s.phase is Phase.CLOSED


def test_resuming_to_closed_when_the_grace_runs_out_unanswered() -> None:
    clock = FakeClock()
    s = streaming(clock)
    s.on_failed(grpc.StatusCode.CANCELLED, "", ())
    clock.advance(GRACE_MS * 1000)
    conv = s.on_resume_expired()
    assert s.phase is Phase.CLOSED and s.history[-1] == (clock.t_us, Phase.CLOSED)
    assert conv.code == grpc.StatusCode.CANCELLED and f"({GRACE_MS} ms)" in conv.details


def test_connecting_to_closed_on_a_failure_before_ready() -> None:
    s = session(FakeClock())
    assert not s.on_failed(grpc.StatusCode.UNAVAILABLE, "no engine", ())
    assert s.phase is Phase.CLOSED and not s.conv.resumptions


@pytest.mark.parametrize("resume", [False, True])
def test_streaming_to_closed_when_it_cannot_resume(resume: bool) -> None:
    clock = FakeClock()
    s = session(clock, resume=resume)
    s.on_server_event(ready(token="" if resume else "tok"), Attempt())  # no token, or resume off
    assert not s.on_failed(grpc.StatusCode.UNAVAILABLE, "", ())
    assert s.phase is Phase.CLOSED and not s.conv.resumptions


def test_streaming_to_closed_when_the_stream_ends() -> None:
    s = streaming(FakeClock())
    s.on_server_event(audio(0), Attempt())
    s.on_input_end()
    conv = s.on_finished()
    assert s.phase is Phase.CLOSED and conv.code == grpc.StatusCode.OK
    s = streaming(FakeClock())
    s.unsendable = "events 0..3 are no longer kept"
    assert s.on_finished().code == grpc.StatusCode.DATA_LOSS


def test_out_of_order_readies_are_refused() -> None:
    s = streaming(FakeClock())
    with pytest.raises(ProtocolError, match="second SessionReady while streaming"):
        s.on_server_event(ready(), Attempt())
    r = ready()
    r.ready.resumed = True
    with pytest.raises(ProtocolError, match="resumed SessionReady while streaming"):
        s.on_server_event(r, Attempt())
    conv = s.on_protocol_error("a second SessionReady while streaming")
    assert s.phase is Phase.CLOSED
    assert (conv.code, conv.details) == (grpc.StatusCode.INTERNAL, "server: a second SessionReady while streaming")


async def test_the_script_paces_chunks_on_the_clock_and_starts_streaming() -> None:
    clock = FakeClock()
    s = session(clock)
    s.on_server_event(ready(send_in_us=40_000), Attempt())
    send_0 = s.send_0_us
    assert send_0 is not None
    script = _Script([b"\0\0"] * 3, True, 0.0, [(1, client.start_event())], None, 0.0)
    events = [ev async for ev in script.events(s)]
    assert [ev.WhichOneof("event") for ev in events] == ["audio", "start", "audio", "audio", "end"]
    assert s.conv.start_us == send_0 - CHUNK_US
    assert s.conv.sent_us == {k: send_0 + k * CHUNK_US for k in range(3)}
    assert [ev.audio.client_time_us for ev in events if ev.HasField("audio")] == list(s.conv.sent_us.values())
    assert [p for _, p in s.history] == [Phase.CONNECTING, Phase.READY, Phase.STREAMING, Phase.DRAINING]
    assert s.history[2][0] == send_0 and s.history[3][0] == send_0 + 2 * CHUNK_US


def test_streaming_to_draining_and_a_drop_while_draining_resumes_into_draining() -> None:
    clock = FakeClock()
    s = streaming(clock)
    clock.advance(CHUNK_US)
    assert s.on_input_end().HasField("end")
    assert s.phase is Phase.DRAINING and s.history[-1] == (clock.t_us, Phase.DRAINING)
    assert s.on_failed(grpc.StatusCode.UNAVAILABLE, "", ())
    assert s.phase is Phase.RESUMING
    r = ready()
    r.ready.resumed = True
    s.on_server_event(r, Attempt())
    assert s.phase is Phase.DRAINING
    s.on_server_event(audio(0), Attempt())
    assert s.on_finished().code == grpc.StatusCode.OK and s.phase is Phase.CLOSED


def test_an_ok_end_with_chunks_unanswered_is_data_loss_naming_them() -> None:
    # a resumed stream the engine ended OK at once: the chunks sent before the drop answered, the rest not
    clock = FakeClock()
    s = streaming(clock)
    for seq in range(1, 6):
        s.on_sent(seq)
    for seq in range(3):
        s.on_server_event(audio(seq), Attempt())
    assert s.on_failed(grpc.StatusCode.UNAVAILABLE, "", ())
    r = ready()
    r.ready.resumed = True
    s.on_server_event(r, Attempt())
    s.on_sent(6)
    conv = s.on_finished()
    assert s.phase is Phase.CLOSED and conv.code == grpc.StatusCode.DATA_LOSS
    assert conv.details == (
        "server ended the stream OK with 4 of 7 chunks sent unanswered (seq 3-6) "
        "and before the client's EndOfStream (streaming)"
    )
    # the same end after EndOfStream, one chunk in the middle unanswered
    s = streaming(FakeClock())
    for seq in (1, 2):
        s.on_sent(seq)
    s.on_input_end()
    for seq in (0, 2):
        s.on_server_event(audio(seq), Attempt())
    conv = s.on_finished()
    assert (conv.code, conv.details) == (
        grpc.StatusCode.DATA_LOSS,
        "server ended the stream OK with 1 of 3 chunks sent unanswered (seq 1)",
    )
