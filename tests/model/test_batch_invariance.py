"""Batch invariance: a session's outputs are bit-identical alone and among up to 63 others.

The property (``DuplexModel.step(batch_invariant=True)``): one conversation is stepped alone in a one-slot
state, then again inside a 64-slot state where 1..63 other sessions with other audio join and leave at
random chunks (swap-remove compaction moves the session between slots), rows are randomly inactive (a
late chunk: computed, not committed — the conversation itself is late at times too) and the block is
randomly split into two cohorts stepped separately. Every output — control decision and probabilities,
text token, audio code and the codec's PCM — must be ``torch.equal`` to the solo run.

It is a real property, not an accident of the default kernels: with ``batch_invariant=False`` the same
scenarios (measured on the 2-core CPU machines, torch 2.13, both seeds) differ in the control
probabilities (by up to 6e-7), because a solo step's 5-row GEMMs take a different kernel than the
80+-row GEMMs of a batch and a MoE expert's row count is set by the other sessions; see
``duplex.model.invariant``. The greedy decisions (codes, text, control, PCM) still agreed over these
12-chunk runs — rounding that small flips an argmax only now and then, over a long conversation — which
is why the probabilities are compared bit for bit too.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

from duplex.model import invariant
from duplex.model.codec import Codec, CodecState
from duplex.model.config import ModelConfig
from duplex.model.model import DuplexModel, StepOutput
from duplex.model.moe import Routing

Speechy = Callable[..., torch.Tensor]
CHUNK_FRAMES = 5  # 200 ms
CAPACITY = 64
FIELDS = ("audio_codes", "text_tokens", "control", "control_probs")


@dataclass
class Trace:
    """One conversation's committed outputs, chunk by chunk."""

    parts: dict[str, list[torch.Tensor]] = field(default_factory=lambda: {f: [] for f in (*FIELDS, "pcm")})

    def add(self, out: StepOutput, row: int, pcm: torch.Tensor) -> None:
        for f in FIELDS:
            self.parts[f].append(getattr(out, f)[row])
        self.parts["pcm"].append(pcm[row])

    def cat(self) -> dict[str, torch.Tensor]:
        return {f: torch.cat(v) for f, v in self.parts.items()}


def decode_committed(
    codec: Codec, cs: CodecState, rows: slice, codes: torch.Tensor, active: torch.Tensor
) -> torch.Tensor:
    """Decode a block's codes through a view of the codec state; inactive rows keep their state."""
    view = CodecState(cs.phase[rows], cs.amp[rows], cs.f0[rows], cs.noise_pos[rows])
    saved = [t.clone() for t in (view.phase, view.amp, view.f0, view.noise_pos)]
    pcm = codec.decode(codes, view)
    for t, old in zip((view.phase, view.amp, view.f0, view.noise_pos), saved, strict=True):
        t[~active] = old[~active]
    return pcm


def solo(model: DuplexModel, codec: Codec, audio: torch.Tensor, batch_invariant: bool) -> dict[str, torch.Tensor]:
    S = model.cfg.frame_samples * CHUNK_FRAMES
    state, cs, trace = model.new_state(1), codec.new_state(1), Trace()
    for c in range(audio.shape[1] // S):
        out = model.step(state, audio[:, c * S : (c + 1) * S], batch_invariant=batch_invariant)
        trace.add(out, 0, codec.decode(out.audio_codes, cs))
    return trace.cat()


def crowded(
    model: DuplexModel, codec: Codec, audio: torch.Tensor, seed: int, batch_invariant: bool
) -> dict[str, torch.Tensor]:
    """The conversation ``audio`` (1, T) among random others; returns its committed outputs."""
    cfg, rng = model.cfg, random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    S = cfg.frame_samples * CHUNK_FRAMES
    chunks = audio.shape[1] // S
    state, cs, trace = model.new_state(CAPACITY), codec.new_state(CAPACITY), Trace()
    slots: list[str] = []  # slot i holds session slots[i]; packed at the front like the engine's
    left: dict[str, int] = {}  # session → chunks it still has to send (the conversation: chunks to do)
    done, n_others = 0, 0

    def join(name: str, chunks_left: int) -> None:
        state.reset(len(slots))
        cs.reset(len(slots))
        slots.append(name)
        left[name] = chunks_left

    def leave(name: str) -> None:
        i, last = slots.index(name), len(slots) - 1
        state.move(last, i)
        cs.move(last, i)
        slots[i] = slots[last]
        slots.pop()
        del left[name]

    for _ in range(rng.randint(0, 40)):  # a crowd already talking when the conversation starts
        n_others += 1
        join(f"o{n_others}", rng.randint(1, 30))
    join_at = rng.randint(0, 3)
    tick = 0
    while done < chunks:
        if tick == join_at:
            join("me", chunks)
        for _ in range(rng.choice((0, 0, 1, 3, 8))):  # others join ...
            if len(slots) < CAPACITY:
                n_others += 1
                join(f"o{n_others}", rng.randint(1, 30))
        tick += 1
        if not slots:
            continue
        batch = torch.randn(len(slots), S, generator=gen) * 0.3 * (torch.rand(len(slots), 1, generator=gen) > 0.3)
        if "me" in slots:
            batch[slots.index("me")] = audio[0, done * S : (done + 1) * S]
        active = torch.rand(len(slots), generator=gen) > 0.2  # late chunks: stepped, not committed
        split = rng.randint(1, len(slots))  # two cohorts of different sizes
        for rows in (slice(0, split), slice(split, len(slots))):
            if rows.start == rows.stop:
                continue
            act = active[rows]
            out = model.step(state, batch[rows], rows=rows, active=act, batch_invariant=batch_invariant)
            pcm = decode_committed(codec, cs, rows, out.audio_codes, act)
            if "me" in slots[rows] and bool(act[slots[rows].index("me")]):
                trace.add(out, slots[rows].index("me"), pcm)
                done += 1
        committed = {name for name, on in zip(slots, active.tolist(), strict=True) if on}
        for name in list(left):  # ... and others leave when their conversation is over
            if name != "me" and name in committed:
                left[name] -= 1
                if left[name] == 0:
                    leave(name)
    return trace.cat()


@pytest.fixture(scope="module")
def conversation(tiny: ModelConfig, speechy: Speechy) -> torch.Tensor:
    return speechy(1, 12 * CHUNK_FRAMES, tiny, seed=11)


@pytest.mark.parametrize("seed", [1, 2])
def test_outputs_are_bit_identical_alone_and_in_a_crowd(
    tiny_model: DuplexModel, tiny: ModelConfig, conversation: torch.Tensor, seed: int
) -> None:
    codec = Codec(tiny)
    alone = solo(tiny_model, codec, conversation, batch_invariant=True)
    among = crowded(tiny_model, codec, conversation, seed, batch_invariant=True)
    assert alone["audio_codes"].shape == (12 * CHUNK_FRAMES,)
    for name, ref in alone.items():
        assert torch.equal(among[name], ref), f"{name} differs alone vs among others (seed {seed})"


def test_batch_invariant_mode_computes_the_same_function(
    tiny_model: DuplexModel, tiny: ModelConfig, speechy: Speechy
) -> None:
    """The invariant kernels compute the same function: a 64-session step agrees with the fast path."""
    audio = speechy(CAPACITY, CHUNK_FRAMES, tiny, seed=5)
    fast = tiny_model.step(tiny_model.new_state(CAPACITY), audio)
    inv = tiny_model.step(tiny_model.new_state(CAPACITY), audio, batch_invariant=True)
    torch.testing.assert_close(inv.control_probs, fast.control_probs, rtol=1e-4, atol=1e-6)
    assert not invariant.enabled()  # the switch does not outlive the step


def test_expert_rows_are_independent_of_the_load_on_their_expert(tiny_model: DuplexModel, tiny: ModelConfig) -> None:
    """The MoE part alone: one token, routed with 0..200 other tokens onto the same two experts."""
    experts = tiny_model.layers[0].moe.experts
    assert experts is not None
    g = torch.Generator().manual_seed(0)
    token = torch.randn(1, tiny.d_model, generator=g)

    def run(others: int) -> torch.Tensor:
        x = torch.cat([torch.randn(others, tiny.d_model, generator=g), token])
        chosen = torch.tensor([[2, 5]]).repeat(others + 1, 1)
        routing = Routing(chosen, torch.full((others + 1, 2), 0.5), torch.zeros(()))
        with invariant.batch_invariant():
            return experts(x, routing)[-1]

    ref = run(0)
    for others in (1, 4, 11, 31, 32, 200):
        assert torch.equal(run(others), ref), f"{others} other tokens on the same experts"
