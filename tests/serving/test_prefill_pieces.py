"""PersonaPlex's prompt prefill in pieces between the steps of the other sessions: the engine's scheduler (real
planner, executor and ``MoshiServed`` on the tiny random PersonaPlex checkpoint, greedy, float32, batch-invariant
CPU kernels) turned by hand on a fake clock that moves by a modelled compute time per step and per piece.

What is checked: every session's outputs equal the same session alone with its prompt prefilled in one go (the
prompted ones and the others); a step of the others waits for one piece at most; two sessions placed at once are
prefilled one after the other; a session that leaves mid-prefill drops its job and staging state, and the
sessions after it are served exactly."""

from __future__ import annotations

import asyncio
import gc
import heapq
import itertools
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from moshi_fixtures import FRAME, tiny_personaplex_checkpoint, varied_audio  # first: sets NO_TORCH_COMPILE

from duplex.model.moshi import prompt as prompt_module
from duplex.model.moshi.checkpoint import MoshiCheckpoint
from duplex.model.moshi.prompt import SessionPrompt, prefill_pieces
from duplex.model.moshi.served import MoshiServed
from duplex.serving.engine.executor import PieceResult, StepResult
from duplex.serving.engine.scheduler import Chunk, End, InboxMessage, Leave, Scheduler
from duplex.serving.engine.session import Conversation, InputChunk
from duplex.serving.metrics import EngineMetrics
from duplex.serving.spec import EngineSpec

PERSONA = "You enjoy having a good conversation. Your name is Jane."
PERIOD = 0.08
"""80 ms chunks: one frame each."""
T0 = 1000.0
STEP_S = 0.002
"""The fake clock's advance per model step (a modelled compute time)."""
PIECE_S = 0.02
"""The fake clock's advance per prefill piece: a quarter of a period, so pieces and steps interleave."""
PHASE_0, PHASE_1 = 0.075, 0.035
"""Arrival phases that place a session in cohort 0 (ticking at 0) or cohort 1 (at 40 ms)."""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> MoshiCheckpoint:
    return tiny_personaplex_checkpoint(tmp_path_factory.mktemp("pp"))


@pytest.fixture(scope="module")
def served(ckpt: MoshiCheckpoint) -> MoshiServed:
    return MoshiServed(ckpt)


@pytest.fixture(autouse=True)
def short_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """8 prompt positions a piece: the tiny checkpoint's prompts then take several pieces (the reference
    prefills in one go with the same chunks)."""
    monkeypatch.setattr(prompt_module, "PREFILL_CHUNK", 8)


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Talker:
    """A client: its chunks, its prompt, and what the steps gave it (seq, late, text tokens, PCM16)."""

    conv: Conversation
    pcm: torch.Tensor
    """(chunks, FRAME) int16."""
    prompt: SessionPrompt | None
    got: list[tuple[int, bool, list[int], torch.Tensor]] = field(default_factory=list)
    steps: list[tuple[float, float]] = field(default_factory=list)
    """(received, step start) of each of its chunks."""
    slots: set[int] = field(default_factory=set)
    """The slots it was stepped in."""


@dataclass(frozen=True)
class Ran:
    """One step or piece on the fake clock."""

    start: float
    end: float
    step: StepResult | None = None
    piece: PieceResult | None = None


class Engine:
    """The real ``Scheduler`` turned by hand: messages are delivered when the fake clock reaches them, each turn's
    step and piece advance it by ``STEP_S`` and ``PIECE_S``, an idle turn jumps to the next message or wake."""

    def __init__(self, served: MoshiServed) -> None:
        self.served = served
        self.clock = FakeClock(T0)
        self.loop = asyncio.new_event_loop()  # never run: the output stage is not under test
        spec = EngineSpec(max_sessions=4, cohorts=2, chunk_ms=80, batch_invariant=True, split_after_ms=0.0)
        self.metrics = EngineMetrics()
        self.scheduler = Scheduler(served, spec, 80, self.metrics, self.loop, self.clock)
        self.inbox: list[tuple[float, int, InboxMessage]] = []
        self.order = itertools.count()
        self.ran: list[Ran] = []
        self.talkers: dict[Conversation, Talker] = {}

    def close(self) -> None:
        self.loop.close()

    def talker(self, name: str, prompt: SessionPrompt | None, first_at: float, chunks: int, seed: int) -> Talker:
        conv = Conversation(name, FRAME, FRAME, max_send_backlog=10_000, text=self.served.text_decoder())
        conv.slot_session.prompt = prompt
        pcm = (varied_audio(1, chunks, seed=seed)[0].view(chunks, FRAME) * 32767.0).round().to(torch.int16)
        for k in range(chunks):
            at = first_at + k * PERIOD
            self.send(at, Chunk(conv, InputChunk(k, pcm[k].numpy().tobytes(), 0, at, 0)))
        self.send(first_at + (chunks - 1) * PERIOD, End(conv))
        self.talkers[conv] = t = Talker(conv, pcm, prompt)
        return t

    def send(self, at: float, message: InboxMessage) -> None:
        heapq.heappush(self.inbox, (at, next(self.order), message))

    def run(self, until: Callable[[], bool] = lambda: False) -> None:
        """Turn until ``until()`` holds after a turn, or everything is delivered and nothing is left to do."""
        for _ in range(100_000):
            messages = []
            while self.inbox and self.inbox[0][0] <= self.clock.t:
                messages.append(heapq.heappop(self.inbox)[2])
            turn = self.scheduler.turn(messages)
            assert turn is not None
            if turn.step is not None:
                self._stepped(turn.step)
            if turn.piece is not None:
                self.ran.append(Ran(self.clock.t, self.clock.t + PIECE_S, piece=turn.piece))
                self.clock.t += PIECE_S
            if until():
                return
            if turn.step is None and turn.piece is None:
                nexts = [self.inbox[0][0]] if self.inbox else []
                if turn.timeout is not None:
                    nexts.append(self.clock.t + turn.timeout)
                if not nexts:
                    return
                self.clock.t = max(self.clock.t, min(nexts))
        raise AssertionError("the engine never went idle")

    def _stepped(self, step: StepResult) -> None:
        self.ran.append(Ran(self.clock.t, self.clock.t + STEP_S, step=step))
        for i, row in enumerate(step.rows):
            t = self.talkers[row.row.conversation]
            assert row.row.chunk is not None, f"{t.conv.id}: silence substituted for chunk {row.row.seq}"
            t.got.append((row.row.seq, row.row.late, row.text, step.pcm[i].clone()))
            t.steps.append((row.row.chunk.recv_mono, self.clock.t))
            t.slots.add(t.conv.slot_session.slot)
        self.clock.t += STEP_S

    def pieces(self, slot: int | None = None) -> Iterator[Ran]:
        return (r for r in self.ran if r.piece is not None and (slot is None or r.piece.slot == slot))


def alone(served: MoshiServed, t: Talker) -> list[tuple[list[int], torch.Tensor]]:
    """``t``'s chunks on ``MoshiServed`` alone, its prompt prefilled in one go."""
    state = served.new_slots(1)
    if t.prompt is not None:
        served.prefill(state, 0, t.prompt, batch_invariant=True)
    out = []
    for row in t.pcm:
        step = served.step(state, (row.float() / 32768.0)[None], slice(0, 1), batch_invariant=True)
        out.append((step.text[0], (step.wave[0] * 32767.0).round().to(torch.int16)))
    return out


def assert_as_alone(served: MoshiServed, t: Talker) -> None:
    assert [seq for seq, _, _, _ in t.got] == list(range(len(t.pcm))), f"{t.conv.id}: every chunk, in order"
    for (seq, _, text, pcm), (want_text, want_pcm) in zip(t.got, alone(served, t), strict=True):
        assert text == want_text, f"{t.conv.id}: text differs at chunk {seq}"
        assert torch.equal(pcm, want_pcm), f"{t.conv.id}: audio differs at chunk {seq}"


def test_two_prompts_placed_at_once_are_prefilled_in_pieces_between_the_others_steps(served: MoshiServed) -> None:
    engine = Engine(served)
    a = engine.talker("a", None, T0 + PHASE_0, chunks=16, seed=1)
    b = engine.talker("b", None, T0 + PHASE_1, chunks=16, seed=2)
    p_prompt = served.session_prompt("NATF0", PERSONA)
    q_prompt = served.session_prompt("VARM2", "Talk about the weather, briefly and kindly.")
    # p and q send their first chunks at the same instant: both are placed in the same turn (p first)
    p = engine.talker("p", p_prompt, T0 + PHASE_0 + 3 * PERIOD, chunks=8, seed=3)
    q = engine.talker("q", q_prompt, T0 + PHASE_0 + 3 * PERIOD, chunks=8, seed=4)
    engine.run()
    engine.close()

    for t in (a, b, p, q):
        assert_as_alone(served, t)
    # every piece of each prompt ran, p's all before q's first: queued, not interleaved
    p_slot, q_slot = (r.piece.slot for r in engine.ran if r.piece is not None and r.piece.pieces == 1)
    p_pieces, q_pieces = list(engine.pieces(p_slot)), list(engine.pieces(q_slot))
    assert len(p_pieces) == len(prefill_pieces(p_prompt)) >= 5
    assert len(q_pieces) == len(prefill_pieces(q_prompt)) >= 5
    assert p_pieces[-1].end <= q_pieces[0].start
    assert [r.piece.done for r in p_pieces if r.piece is not None] == [False] * (len(p_pieces) - 1) + [True]
    # the others kept stepping between the pieces ...
    between = [r for r in engine.ran if r.step is not None and p_pieces[0].start < r.start < q_pieces[-1].start]
    assert {row.row.conversation.id for r in between if r.step is not None for row in r.step.rows} >= {"a", "b"}
    # ... and none of their chunks waited for more than one piece
    for t in (a, b):
        for received, started in t.steps:
            overlapping = [r for r in engine.pieces() if r.end > received and r.start < started]
            assert len(overlapping) <= 1, f"{t.conv.id}: a chunk received at {received} waited for {overlapping}"
    # a prompted session's chunks wait for its prefill: its first step comes after its last piece, and the
    # chunks that came meanwhile are caught up, reported late
    for t, pieces in ((p, p_pieces), (q, q_pieces)):
        assert t.steps[0][1] >= pieces[-1].end
        assert t.got[0][1], f"{t.conv.id}: its first chunk missed its cohort's steps"
    count = engine.metrics.registry.get_sample_value("duplex_engine_prompt_prefill_seconds_count")
    assert count == 2


def test_a_session_that_leaves_mid_prefill_drops_its_job(served: MoshiServed) -> None:
    engine = Engine(served)
    a = engine.talker("a", None, T0 + PHASE_1, chunks=16, seed=5)
    r_prompt = served.session_prompt("NATM1", PERSONA)
    s_prompt = served.session_prompt("NATF1", "You are a librarian.")
    # r then s into cohort 0's two slots; r leaves after two of its pieces, so s (the block's last member)
    # moves into r's slot with its prefill not started yet
    r = engine.talker("r", r_prompt, T0 + PHASE_0 + PERIOD, chunks=8, seed=6)
    s = engine.talker("s", s_prompt, T0 + PHASE_0 + PERIOD, chunks=8, seed=7)
    executor, planner = engine.scheduler.executor, engine.scheduler.planner
    engine.run(until=lambda: len(list(engine.pieces())) == 2)
    r_slot = r.conv.slot_session.slot
    assert s.conv.slot_session.slot == r_slot + 1 and set(executor.prefills) == {r_slot, r_slot + 1}
    job: Any = executor.prefills[r_slot].job
    staging = weakref.ref(job.block)
    del job
    engine.send(engine.clock.t, Leave(r.conv))
    t = engine.talker("t", None, T0 + PHASE_0 + 4 * PERIOD, chunks=4, seed=8)
    engine.run(until=lambda: not executor.prefills or executor.prefills[r_slot].job is not None)
    assert s.conv.slot_session.slot == r_slot and planner.prefill_queue == [s.conv.slot_session]
    gc.collect()
    assert staging() is None, "the dropped prefill's staging state is freed"
    engine.run()
    engine.close()

    assert r.got == [], "a session that left mid-prefill was never stepped"
    assert executor.prefills == {} and planner.prefill_queue == []
    assert s.slots == {r_slot} and t.slots == {r_slot + 1}, "s moved into r's slot, t took the one s left"
    for talker in (a, s, t):
        assert_as_alone(served, talker)
    piece_slots = {x.piece.slot for x in engine.pieces() if x.piece is not None}
    assert piece_slots == {r_slot}, "r's pieces and, after its move, s's ran in r's slot"
    count = engine.metrics.registry.get_sample_value("duplex_engine_prompt_prefill_seconds_count")
    assert count == 1, "only s's prefill finished"
