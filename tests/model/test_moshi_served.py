"""``MoshiServed``: the Moshi family under continuous batching, exact to the frame (greedy, float32, CPU).

The exactness tests step sessions in slot blocks among others that join, pause, leave and move, and compare
every committed output — text tokens, floor control, PCM — with ``torch.equal`` to the same input stepped
alone. Block-versus-alone comparisons run with ``batch_invariant=True``: with CPU's default kernels a row's
PCM differs from its solo run by ~1e-7 (oneDNN convolutions and small-row GEMMs pick their algorithm by batch
size); the alone run itself is checked against upstream's own ``LMGen`` + Mimi loop in the default mode."""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field
from typing import Any

import pytest
import sentencepiece as spm
import torch
from moshi_fixtures import (  # first: it sets NO_TORCH_COMPILE before moshi is imported
    FRAME,
    TEXT_END_PAD,
    TEXT_PAD,
    LMGen,
    RingKVCache,
    tiny_checkpoint,
    tone,
    varied_audio,
)

from duplex.model.config import ModelError
from duplex.model.family import Floor
from duplex.model.moshi.checkpoint import MoshiCheckpoint
from duplex.model.moshi.served import (
    SPEAK_HANGOVER_FRAMES,
    FloorTracker,
    MoshiServed,
    MoshiSlots,
    MoshiTextDecoder,
)

H = SPEAK_HANGOVER_FRAMES


@pytest.fixture(scope="module")
def ckpt() -> MoshiCheckpoint:
    return tiny_checkpoint()


@dataclass
class Trace:
    """One session's committed outputs, chunk by chunk."""

    text: list[list[int]] = field(default_factory=list)
    control: list[torch.Tensor] = field(default_factory=list)
    wave: list[torch.Tensor] = field(default_factory=list)

    def assert_equal(self, other: Trace, what: str) -> None:
        assert len(self.wave) == len(other.wave), what
        for c, (a, b) in enumerate(zip(self.wave, other.wave, strict=True)):
            assert self.text[c] == other.text[c], f"{what}: text differs at chunk {c}"
            assert torch.equal(self.control[c], other.control[c]), f"{what}: control differs at chunk {c}"
            assert torch.equal(a, b), f"{what}: wave differs at chunk {c} by {(a - b).abs().max().item():.3g}"

    def frames_with_audio(self) -> int:
        return sum(int(w.view(-1, FRAME).abs().amax(dim=1).gt(0).sum()) for w in self.wave)


def chunks(audio: torch.Tensor, frames: int) -> list[torch.Tensor]:
    return list(audio.split(frames * FRAME, dim=-1))


def run_alone(ckpt: MoshiCheckpoint, audio: torch.Tensor, chunk_frames: int, batch_invariant: bool = True) -> Trace:
    """The session stepped alone in a one-slot ``MoshiServed``."""
    served = MoshiServed(ckpt)
    slots = served.new_slots(1)
    trace = Trace()
    for x in chunks(audio, chunk_frames):
        out = served.step(slots, x[None], slice(0, 1), batch_invariant=batch_invariant)
        trace.text.append(out.text[0])
        trace.control.append(out.control[0])
        trace.wave.append(out.wave[0])
    return trace


class Cohort:
    """Drives a ``MoshiServed`` like the engine: sessions in slot blocks, each step one block and one chunk."""

    def __init__(self, served: MoshiServed, slots: int, chunk_frames: int) -> None:
        self.served = served
        self.state: MoshiSlots = served.new_slots(slots)
        self.chunk_frames = chunk_frames
        self.slot_of: dict[str, int] = {}
        self.audio: dict[str, list[torch.Tensor]] = {}
        self.fed: dict[str, int] = {}
        self.trace: dict[str, Trace] = {}

    def join(self, name: str, slot: int, audio: torch.Tensor) -> None:
        self.state.reset(slot)
        self.adopt(name, slot, audio, fed=0)

    def adopt(self, name: str, slot: int, audio: torch.Tensor, fed: int) -> None:
        """A session whose state the slot already holds, ``fed`` chunks in (no reset)."""
        self.slot_of[name] = slot
        self.audio[name] = chunks(audio, self.chunk_frames)
        self.fed[name] = fed
        self.trace[name] = Trace()

    def leave(self, name: str) -> None:
        del self.slot_of[name]

    def move(self, name: str, dst: int) -> None:
        self.state.move(self.slot_of[name], dst)
        self.slot_of[name] = dst

    def step(self, rows: slice, paused: frozenset[str] = frozenset(), seed: int = 0) -> None:
        """One chunk for the block ``rows``: sessions there not ``paused`` are active; other rows get noise
        (computed, never committed)."""
        n = rows.stop - rows.start
        g = torch.Generator().manual_seed(seed)
        audio = 0.3 * torch.randn(n, self.chunk_frames * FRAME, generator=g)
        active = torch.zeros(n, dtype=torch.bool)
        here = {s - rows.start: name for name, s in self.slot_of.items() if rows.start <= s < rows.stop}
        for row, name in here.items():
            if name not in paused:
                audio[row] = self.audio[name][self.fed[name]]
                active[row] = True
        out = self.served.step(self.state, audio, rows, active=active, batch_invariant=True)
        for row in range(n):
            if not active[row]:
                assert out.text[row] == [], "an inactive row produced text"
                assert torch.equal(out.control[row], torch.full_like(out.control[row], Floor.LISTEN))
                assert not out.wave[row].any(), "an inactive row produced audio"
        for row, name in here.items():
            if name not in paused:
                self.trace[name].text.append(out.text[row])
                self.trace[name].control.append(out.control[row])
                self.trace[name].wave.append(out.wave[row])
                self.fed[name] += 1

    def session_audio(self, name: str) -> torch.Tensor:
        return torch.cat(self.audio[name][: self.fed[name]], dim=-1)


def row_state(slots: MoshiSlots, rows: slice, row: int) -> list[torch.Tensor]:
    """Every per-row tensor of a block's upstream streaming state (and floor counters), cloned — but the exec
    mask (an input, set by each step) and, in each KV ring, the slots of the row's next write.

    Upstream's ``RingKVCache.complete`` scatters every row's new keys/values at the row's ``end_offset`` and then
    advances only active rows, so an inactive row's next-write slots take garbage; they hold positions no query
    reads (older than the context, or not yet valid) and are overwritten by the row's next active step."""
    block = slots.block(rows)
    out: list[torch.Tensor] = [block.floor.since_word[row].clone(), block.floor.since_voiced[row].clone()]
    for tree, steps_per_frame in ((block.mimi, 2), (block.gen, 1), (block.lm, 1)):  # Mimi's transformers: 25 Hz
        for st in tree.values():
            for f in dataclasses.fields(st):
                value: Any = getattr(st, f.name)
                if isinstance(value, RingKVCache):
                    end = int(value.end_offset[row])
                    keep = torch.ones(value.capacity, dtype=torch.bool)
                    keep[[(end + t) % value.capacity for t in range(steps_per_frame)]] = False
                    out += [value.cache[:, row, :, keep].clone(), value.end_offset[row].clone()]
                elif isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == block.rows:
                    out.append(value[row].clone())
    return out


# --- sanity: the tiny model listens and talks ---------------------------------------------------------------


def test_tiny_model_depends_on_its_input(ckpt: MoshiCheckpoint) -> None:
    """Every equality below would be vacuous if the model ignored its input: it must not."""
    with torch.no_grad():
        x = torch.cat([torch.zeros(1, 6 * FRAME), tone(1, 6), varied_audio(1, 6, seed=1)])
        codes = ckpt.mimi.encode(x[:, None])
    assert not torch.equal(codes[0], codes[1]) and not torch.equal(codes[1], codes[2])
    a = run_alone(ckpt, varied_audio(1, 12, seed=2)[0], 2)
    b = run_alone(ckpt, varied_audio(1, 12, seed=3)[0], 2)
    assert a.text != b.text
    assert not torch.equal(torch.cat(a.wave), torch.cat(b.wave))
    assert len({t for c in a.text for t in c}) >= 3, "the text stream is (nearly) constant"
    assert a.frames_with_audio() == 11  # the first frame fills the codebook delays: silence


# --- exactness ------------------------------------------------------------------------------------------------


def test_alone_equals_upstream_loop(ckpt: MoshiCheckpoint) -> None:
    """A one-slot ``MoshiServed`` (default kernels) equals upstream's own streaming loop, frame for frame."""
    frames, chunk = 24, 3
    audio = varied_audio(1, frames, seed=7)[0]
    ours = run_alone(ckpt, audio, chunk, batch_invariant=False)

    gen = LMGen(ckpt.lm, use_sampling=False, support_out_of_sync=True)
    text: list[int] = []
    wave: list[torch.Tensor] = []
    with torch.no_grad(), ckpt.mimi.streaming(1), gen.streaming(1):
        for f in range(frames):
            codes = ckpt.mimi.encode(audio[None, None, f * FRAME : (f + 1) * FRAME])
            tokens = gen.step(codes)
            if tokens[0, 0, 0] >= 0:
                text.append(int(tokens[0, 0, 0]))
            if (tokens[:, 1:] >= 0).all():
                wave.append(ckpt.mimi.decode(tokens[:, 1:])[0, 0])
            else:  # delays still filling: upstream decodes nothing
                wave.append(torch.zeros(FRAME))
    assert [t for c in ours.text for t in c] == text
    assert torch.equal(torch.cat(ours.wave), torch.cat(wave))
    # and batch-invariant kernels change nothing the engine sees but rounding: same tokens
    inv = run_alone(ckpt, audio, chunk, batch_invariant=True)
    assert inv.text == ours.text


def test_sessions_in_blocks_equal_alone(ckpt: MoshiCheckpoint) -> None:
    """Sessions in two 4-slot blocks stepped at alternating phases, joining (reset) at different chunks, pausing,
    leaving and reusing a slot, each equal to the session alone."""
    served = MoshiServed(ckpt)
    co = Cohort(served, slots=8, chunk_frames=2)
    lo, hi = slice(0, 4), slice(4, 8)
    sessions = {  # name: (slot, first chunk, last chunk (exclusive), paused chunks)
        "a": (1, 0, 23, {6, 7}),
        "b": (0, 1, 12, set()),
        "c": (0, 13, 23, set()),  # b's slot, after b left
        "d": (2, 4, 23, {9, 15}),
        "e": (5, 0, 11, {3}),
        "f": (6, 2, 23, set()),
    }
    for chunk in range(23):
        for i, (name, (slot, first, last, _)) in enumerate(sessions.items()):
            if chunk == first:
                co.join(name, slot, varied_audio(1, 2 * (last - first), seed=10 + i)[0])
            if chunk == last and name in co.slot_of:
                co.leave(name)
        paused = frozenset(n for n, (_, _, _, p) in sessions.items() if chunk in p)
        co.step(lo, paused, seed=100 + chunk)
        co.step(hi, paused, seed=200 + chunk)
    for name in sessions:
        assert len(co.trace[name].wave) >= 10, name
        alone = run_alone(ckpt, co.session_audio(name), 2)
        co.trace[name].assert_equal(alone, f"session {name}")


def test_moved_session_continues_exactly(ckpt: MoshiCheckpoint) -> None:
    """A session moved within its block, to another block, and to a slot no block holds yet, continues as if it
    never moved; the source row, left as it was, continues identically too (a fork)."""
    served = MoshiServed(ckpt)
    co = Cohort(served, slots=12, chunk_frames=2)
    b0, b1, b2 = slice(0, 4), slice(4, 8), slice(8, 12)
    x = varied_audio(1, 2 * 14, seed=21)[0]
    co.join("x", 1, x)
    co.join("n0", 0, varied_audio(1, 2 * 14, seed=22)[0])
    co.join("n1", 5, varied_audio(1, 2 * 14, seed=23)[0])
    for c in range(4):
        co.step(b0, seed=c)
        co.step(b1, seed=50 + c)
    co.move("x", 3)  # same block
    co.adopt("fork", 1, x, fed=4)  # row 1 is left as it was: x's state, 4 chunks in
    for c in range(4, 7):
        co.step(b0, seed=c)
        co.step(b1, seed=50 + c)
    co.move("x", 6)  # another block, of the same size, stepped after this one
    for c in range(7, 10):
        co.step(b0, seed=c)
        co.step(b1, seed=50 + c)
    co.move("x", 9)  # a block never stepped: a one-row staging block, then taken into 8..12
    for c in range(10, 14):
        co.step(b0, seed=c)
        co.step(b1, seed=50 + c)
        co.step(b2, seed=80 + c)
    assert sorted(co.state._blocks) == [(0, 4), (4, 8), (8, 12)]  # the one-row staging block is gone
    alone = run_alone(ckpt, x, 2)
    co.trace["x"].assert_equal(alone, "moved session")
    fork = Trace(alone.text[4:], alone.control[4:], alone.wave[4:])
    co.trace["fork"].assert_equal(fork, "source row after the move")
    for name in ("n0", "n1"):
        co.trace[name].assert_equal(run_alone(ckpt, co.session_audio(name), 2), f"neighbour {name}")


def test_a_block_stepped_again_after_a_sub_range_takes_its_rows_back(ckpt: MoshiCheckpoint) -> None:
    """The engine runs a catch-up step on the smallest slot range holding the late rows, then its cohort's
    regular step on the whole block again: the rows stepped in between are taken back, not their stale copies."""
    served = MoshiServed(ckpt)
    co = Cohort(served, slots=4, chunk_frames=1)
    for slot, name in enumerate("abc"):
        co.join(name, slot, varied_audio(1, 10, seed=70 + slot)[0])
    for c in range(10):
        late = {3: ("b", slice(1, 2)), 6: ("c", slice(2, 4)), 7: ("b", slice(1, 3))}.get(c)
        if late is None:
            co.step(slice(0, 4), seed=c)
            continue
        name, rows = late
        co.step(rows, paused=frozenset("abc") - {name}, seed=c)  # the late one's catch-up
        co.step(slice(0, 4), paused=frozenset({name}), seed=50 + c)  # the others' regular step
    for name in "abc":
        co.trace[name].assert_equal(run_alone(ckpt, co.session_audio(name), 1), name)


def test_reset_row_is_a_fresh_stream(ckpt: MoshiCheckpoint) -> None:
    """A row reset mid-stream (right after an active step) equals a fresh stream; its neighbours don't notice."""
    served = MoshiServed(ckpt)
    co = Cohort(served, slots=3, chunk_frames=1)
    block = slice(0, 3)
    co.join("old", 1, varied_audio(1, 9, seed=31)[0])
    co.join("left", 0, varied_audio(1, 30, seed=32)[0])
    co.join("right", 2, varied_audio(1, 30, seed=33)[0])
    for c in range(9):
        co.step(block, seed=c)
    co.leave("old")
    co.join("new", 1, varied_audio(1, 21, seed=34)[0])  # reset(1), no gap
    for c in range(9, 30):
        co.step(block, seed=c)
    for name in ("new", "left", "right"):
        co.trace[name].assert_equal(run_alone(ckpt, co.session_audio(name), 1), name)


def test_untouched_slots_and_realigned_blocks(ckpt: MoshiCheckpoint) -> None:
    """Slots no block holds are fresh streams: reset is a no-op, moving one over a used slot resets it. A step
    over a new slot range (here 0..8 after 0..4) takes its sessions in exactly and drops the old block."""
    served = MoshiServed(ckpt)
    co = Cohort(served, slots=8, chunk_frames=2)
    co.state.reset(6)  # no block holds slot 6: nothing to do
    x = varied_audio(1, 24, seed=41)[0]
    co.join("x", 2, varied_audio(1, 8, seed=40)[0])
    for c in range(4):
        co.step(slice(0, 4), seed=c)
    co.state.move(7, 2)  # 7 was never stepped: slot 2 becomes a fresh stream
    co.leave("x")
    co.adopt("y", 2, x, fed=0)
    for c in range(9):
        co.step(slice(0, 4), seed=10 + c)
    for c in range(3):
        co.step(slice(0, 8), seed=20 + c)
    assert list(co.state._blocks) == [(0, 8)]
    co.trace["y"].assert_equal(run_alone(ckpt, x, 2), "slot reset by a move from an untouched slot")
    with pytest.raises(ModelError):
        co.state.move(0, 8)


def test_inactive_rows_are_left_exactly(ckpt: MoshiCheckpoint) -> None:
    """Every per-row tensor of an inactive row (Mimi encoder/decoder, LMGen, KV rings, floor) is unchanged by a
    step; an active row's do change (so the snapshot sees them)."""
    served = MoshiServed(ckpt)
    slots = served.new_slots(2)
    rows = slice(0, 2)
    audio = varied_audio(2, 8, seed=51)
    for c in range(3):
        served.step(slots, audio[:, c * 2 * FRAME : (c + 1) * 2 * FRAME], rows)
    before = [row_state(slots, rows, r) for r in range(2)]
    for active in (torch.tensor([False, True]), torch.tensor([False, False])):
        served.step(slots, audio[:, 6 * FRAME :], rows, active=active)
    after = [row_state(slots, rows, r) for r in range(2)]
    assert len(before[0]) > 60  # the convolutions, transformers (KV rings, offsets) and LMGen states
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(before[1], after[1], strict=True))


# --- format, chunking, errors -------------------------------------------------------------------------------


def test_format_and_chunks(ckpt: MoshiCheckpoint) -> None:
    served = MoshiServed(ckpt)
    fmt = served.format
    assert (fmt.family, fmt.name, fmt.sample_rate, fmt.frame_samples) == ("moshi", "tiny-moshi", 24000, 1920)
    assert (fmt.text_in_slots, fmt.text_pad, fmt.typed_text, fmt.video_size, fmt.frame_ms) == (1, -1, False, 0, 80.0)
    assert [served.frames_per_chunk(ms) for ms in (80, 160, 240, 320, 400)] == [1, 2, 3, 4, 5]
    for bad in (40, 100, 480, 0):
        with pytest.raises(ModelError, match="80, 160, 240, 320, 400"):
            served.frames_per_chunk(bad)
    assert served.text_decoder().feed(served.encode_text("hello there"))[0].strip() == "hello there"
    slots = served.new_slots(4)
    with pytest.raises(ModelError, match="audio"):
        served.step(slots, torch.zeros(4, FRAME + 1), slice(0, 4))
    with pytest.raises(ModelError, match="no video"):
        served.step(slots, torch.zeros(4, FRAME), slice(0, 4), video=torch.zeros(1, 3, 8, 8))
    with pytest.raises(ModelError, match=r"text_in \(4, 2, 1\) must be \(4, 1, 1\)"):
        served.step(slots, torch.zeros(4, FRAME), slice(0, 4), text_in=torch.zeros(4, 2, 1, dtype=torch.long))


def test_forced_text_is_what_the_model_says(ckpt: MoshiCheckpoint) -> None:
    """An agent result reaches the model as forced text: from the frame it is fed, the row's text stream carries
    exactly the forced tokens (and the rest of the batch is untouched); afterwards the model goes on from
    what it has 'said'."""
    served = MoshiServed(ckpt)
    forced = served.encode_text("hello there")
    frames, at = 16, 4
    audio = varied_audio(2, frames, seed=21)
    alone = run_alone(ckpt, audio[1], 1)
    slots = served.new_slots(2)
    said: list[list[int]] = [[], []]
    for f in range(frames):
        text_in = torch.full((2, 1, 1), -1, dtype=torch.long)
        if at <= f < at + len(forced):
            text_in[0, 0, 0] = forced[f - at]
        out = served.step(slots, audio[:, f * FRAME : (f + 1) * FRAME], slice(0, 2), text_in=text_in)
        for row in range(2):
            said[row].append(out.text[row][0] if out.text[row] else -2)
    lag = max(ckpt.lm.delays)  # upstream hands out a frame's tokens once its most delayed codebook is generated
    assert said[0][at + lag : at + lag + len(forced)] == forced
    assert said[1] == [t[0] if t else -2 for t in alone.text]  # the other row is untouched
    unforced = run_alone(ckpt, audio[0], 1)
    assert said[0][: at + lag] == [t[0] if t else -2 for t in unforced.text][: at + lag]


# --- floor control and text (pure) ----------------------------------------------------------------------------

W = 17  # a word piece


def floor_run(tokens: list[int], voiced: list[bool], active: list[bool] | None = None) -> list[int]:
    tracker = FloorTracker(1, frozenset({TEXT_PAD, TEXT_END_PAD}))
    out: list[int] = []
    for i, t in enumerate(tokens):
        act = True if active is None else active[i]
        c = tracker.update(torch.tensor([t]), torch.tensor([voiced[i]]), torch.tensor([act]))
        out.append(int(c[0]))
    return out


L, S, Y = Floor.LISTEN, Floor.SPEAK, Floor.YIELD


def test_floor_speak_hangover_then_listen() -> None:
    tokens = [-2, TEXT_PAD, TEXT_PAD, W, TEXT_PAD, TEXT_END_PAD] + [TEXT_PAD] * (H + 2)
    # the word and the H padding frames after it speak; the turn ends without the user: LISTEN
    assert floor_run(tokens, [False] * len(tokens)) == [L, L, L] + [S] * (H + 1) + [L] * 4


def test_floor_yield_when_user_barged_in() -> None:
    tokens = [W, W] + [TEXT_PAD] * (H + 3)
    voiced = [False, False, True] + [False] * (H + 2)  # the user spoke right after the last word
    assert floor_run(tokens, voiced) == [S, S] + [S] * H + [Y, L, L]
    late = [False] * (H + 3) + [True, False]  # voiced only after the turn ended: no barge-in
    assert floor_run(tokens, late) == [S, S] + [S] * H + [L, L, L]
    early = [True] + [False] * (H + 4)  # voiced long before the turn end: out of the window
    assert floor_run(tokens, early) == [S, S] + [S] * H + [L, L, L]


def test_floor_words_keep_the_turn_and_never_yield_while_listening() -> None:
    tokens = ([W] + [TEXT_PAD] * (H - 1)) * 3 + [TEXT_PAD] * (H + 3)
    # gaps shorter than the hangover keep one turn; the user talking all along makes its end a YIELD, once
    assert floor_run(tokens, [True] * len(tokens)) == [S] * (3 * H + 1) + [Y] + [L] * (H + 1)
    assert floor_run([TEXT_PAD] * 20, [True] * 20) == [L] * 20


def test_floor_inactive_frames_freeze_the_row() -> None:
    tokens = [W] + [TEXT_PAD] * (H + 4)
    active = [True, True, False, False, False] + [True] * (H)
    got = floor_run(tokens, [False] * len(tokens), active)
    # the three inactive frames read LISTEN and do not count towards the hangover
    assert got == [S, S, L, L, L] + [S] * (H - 1) + [L]


def test_floor_rows_are_independent_and_move_and_reset() -> None:
    tr = FloorTracker(3, frozenset({TEXT_PAD}))
    on = torch.ones(3, dtype=torch.bool)
    c = tr.update(torch.tensor([W, TEXT_PAD, W]), torch.tensor([False, True, True]), on)
    assert c.tolist() == [S, L, S]
    tr.copy_row(0, tr, 1)
    tr.reset(2)
    c = tr.update(torch.tensor([TEXT_PAD, TEXT_PAD, TEXT_PAD]), torch.zeros(3, dtype=torch.bool), on)
    assert c.tolist() == [S, S, L]


def test_text_decoder(ckpt: MoshiCheckpoint) -> None:
    tok = ckpt.text_tokenizer
    dec = MoshiTextDecoder(tok, frozenset({TEXT_PAD, TEXT_END_PAD}))
    ids = tok.encode("hello there how are you")
    assert len(ids) >= 5
    stream = [-2, TEXT_PAD]
    for t in ids:
        stream += [t, TEXT_PAD, TEXT_END_PAD, 1, 2]  # padding, end padding and control ids (<s>, </s>)
    text = ""
    for i in range(0, len(stream), 3):
        piece, final = dec.feed(stream[i : i + 3])
        assert final is False
        text += piece
    assert text == " hello there how are you"
    assert dec.feed([TEXT_PAD, TEXT_END_PAD, -2]) == ("", False)


def test_text_decoder_byte_pieces() -> None:
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["the cat sat on the mat", "a dog ran far"]),
        model_writer=buf,
        vocab_size=290,
        hard_vocab_limit=False,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        minloglevel=2,
    )
    tok = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    ids = tok.encode("the café")  # "é" is not in the vocabulary: two byte pieces
    assert sum(tok.is_byte(i) for i in ids) == 2
    dec = MoshiTextDecoder(tok, frozenset({3, 0}))
    out = "".join(dec.feed([i])[0] for i in ids)
    assert out == " the café"


def test_temperature_samples(ckpt: MoshiCheckpoint) -> None:
    """temperature > 0 samples (upstream use_sampling): two seeds give different text; 0 is greedy."""
    served = MoshiServed(ckpt, temperature=1.0, top_k=10)
    assert served.gen.use_sampling and served.gen.temp == 1.0 and served.gen.top_k == 10
    assert not MoshiServed(ckpt).gen.use_sampling
    audio = varied_audio(1, 8, seed=61)

    def sample(seed: int) -> list[list[int]]:
        torch.manual_seed(seed)
        slots = served.new_slots(1)
        return [served.step(slots, x, slice(0, 1)).text[0] for x in chunks(audio, 2)]

    assert sample(1) != sample(2)
    with pytest.raises(ModelError):
        MoshiServed(ckpt, temperature=-1.0)
