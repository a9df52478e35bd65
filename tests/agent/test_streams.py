"""Pieces of the Redis side that need no server: reconnect backoff (injected sleep), stream names,
the answers of XREADGROUP/XAUTOCLAIM in both protocol forms, the records' wire mapping."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from duplex.serving.agent.protocol import AgentJob, AgentState, AgentUpdate, StreamNames
from duplex.serving.agent.streams import Backoff, claimed_entries, read_entries
from duplex.v1 import duplex_pb2


async def test_backoff_doubles_to_the_cap_and_resets() -> None:
    slept: list[float] = []

    async def fake_sleep(s: float) -> None:  # records the delay instead of waiting
        slept.append(s)

    b = Backoff(initial_s=0.1, max_s=0.5, sleep=fake_sleep)
    for _ in range(5):
        await b.wait(ConnectionError("down"))
    assert slept == [0.1, 0.2, 0.4, 0.5, 0.5]
    b.reset()
    await b.wait(ConnectionError("down"))
    assert slept[-1] == 0.1


def test_stream_names_share_one_hash_tag() -> None:
    n = StreamNames("my-model")
    assert n.jobs == "{my-model}:jobs" and n.dead == "{my-model}:dead"
    assert n.results("my-model-0") == "{my-model}:results:my-model-0"
    assert n.done("s/c") == "{my-model}:done:s/c" and n.cancelled("s") == "{my-model}:cancel:s"


def test_entries_in_both_protocol_forms() -> None:
    resp2 = [[b"{p}:jobs", [(b"1-0", {b"data": b"x"}), (b"2-0", None)]]]
    resp3 = {b"{p}:jobs": [[b"1-0", {b"data": b"x"}], [b"2-0", None]]}
    want = [("1-0", {b"data": b"x"}), ("2-0", {})]
    assert read_entries(resp2) == want and read_entries(resp3) == want and read_entries(None) == []
    assert claimed_entries([b"0-0", [(b"3-0", {b"data": b"y"})], []]) == [("3-0", {b"data": b"y"})]


def test_records_map_to_the_wire() -> None:
    assert [int(s) for s in AgentState] == [duplex_pb2.QUEUED, duplex_pb2.RUNNING, duplex_pb2.DONE, duplex_pb2.FAILED]
    u = AgentUpdate(session_id="s", call_id="c", tool="clock", state=AgentState.DONE, detail="noon")
    assert u.event() == duplex_pb2.AgentEvent(job_id="c", tool="clock", state=duplex_pb2.DONE, detail="noon")
    assert AgentUpdate.model_validate_json(u.model_dump_json()) == u
    with pytest.raises(ValidationError, match="session_id"):
        AgentJob(session_id="", call_id="c", tool="clock", deadline_ms=1, reply_to="r")
