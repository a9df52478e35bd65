"""Hibiki served batched (``HibikiServed``): classifier-free guidance with two LM rows per session, end of input,
exact to the frame (greedy, float32, CPU) — alone against upstream's own ``LMGen`` loop, and batched among sessions
that join, pause, move and leave against the same session alone (batch-invariant kernels, as in
``test_moshi_served.py``)."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi is imported: no torch.compile on CPU

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pydantic
import pytest
import torch
from moshi.conditioners.base import ConditionAttributes
from moshi_fixtures import FRAME, LMGen, tiny_checkpoint, varied_audio, write_checkpoint

from duplex.model.config import ModelError
from duplex.model.family import Floor
from duplex.model.moshi.checkpoint import MoshiCheckpoint, load_checkpoint
from duplex.model.moshi.hibiki import CONDITIONED, UNCONDITIONED, HibikiServed, TranslationFloor
from duplex.model.moshi.served import SPEAK_HANGOVER_FRAMES, FloorTracker, MoshiServed
from duplex.model.moshi.tiny import init_checkpoint
from duplex.model.runtime import load_served
from duplex.model.spec import ModelSource

CFG = 3.0


@pytest.fixture(scope="module")
def hibiki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_checkpoint("hibiki", tmp_path_factory.mktemp("hibiki") / "hibiki", seed=3)


@pytest.fixture(scope="module")
def ckpt(hibiki_dir: Path) -> MoshiCheckpoint:
    return load_checkpoint(hibiki_dir)


@dataclass
class Trace:
    """One session's committed outputs, chunk by chunk."""

    text: list[list[int]] = field(default_factory=list)
    control: list[torch.Tensor] = field(default_factory=list)
    wave: list[torch.Tensor] = field(default_factory=list)
    done: list[bool] = field(default_factory=list)

    def assert_equal(self, other: Trace, what: str) -> None:
        assert len(self.wave) == len(other.wave), what
        for c, (a, b) in enumerate(zip(self.wave, other.wave, strict=True)):
            assert self.text[c] == other.text[c], f"{what}: text differs at chunk {c}"
            assert torch.equal(self.control[c], other.control[c]), f"{what}: control differs at chunk {c}"
            assert torch.equal(a, b), f"{what}: wave differs at chunk {c} by {(a - b).abs().max().item():.3g}"
        assert self.done == other.done, what


def frames_of(audio: torch.Tensor) -> list[torch.Tensor]:
    return list(audio.split(FRAME, dim=-1))


def run_alone(served: HibikiServed, audio: torch.Tensor, tail: int, batch_invariant: bool = True) -> Trace:
    """The session alone in a one-slot ``HibikiServed``: its audio frame by frame, then its input ended and
    ``tail`` frames of silence."""
    slots = served.new_slots(1)
    trace = Trace()
    inputs = frames_of(audio) + [torch.zeros(FRAME)] * tail
    for f, x in enumerate(inputs):
        if f == len(inputs) - tail:
            slots.end_input(0)
        out = served.step(slots, x[None], slice(0, 1), batch_invariant=batch_invariant)
        assert out.done is not None
        trace.text.append(out.text[0])
        trace.control.append(out.control[0])
        trace.wave.append(out.wave[0])
        trace.done.append(bool(out.done[0]))
    return trace


def upstream_alone(ckpt: MoshiCheckpoint, audio: torch.Tensor, tail: int, cfg: float) -> tuple[list[int], torch.Tensor]:
    """Upstream's own loop as its ``run_inference`` runs Hibiki: ``very_good`` (and, guided, ``very_bad``)
    conditions, ``LMGen(cfg_coef=...)``, then at the end of the input one frame of the end-of-input code
    (every codebook ``mimi.cardinality``, nothing encoded) and Mimi's codes of silence."""
    labels = [CONDITIONED] + ([UNCONDITIONED] if cfg != 1.0 else [])
    conditions = ckpt.lm.condition_provider.prepare_and_provide(
        [ConditionAttributes(text={"description": v}, tensor={}) for v in labels]
    )
    gen = LMGen(ckpt.lm, use_sampling=False, cfg_coef=cfg, condition_tensors=conditions, support_out_of_sync=True)
    frames = audio.shape[-1] // FRAME
    text: list[int] = []
    wave: list[torch.Tensor] = []
    with torch.no_grad(), ckpt.mimi.streaming(1), gen.streaming(1):
        for f in range(frames + tail):
            if f < frames:
                codes = ckpt.mimi.encode(audio[None, None, f * FRAME : (f + 1) * FRAME])
            elif f == frames:
                codes = torch.full((1, ckpt.mimi.num_codebooks, 1), ckpt.mimi.cardinality, dtype=torch.long)
            else:
                codes = ckpt.mimi.encode(torch.zeros(1, 1, FRAME))
            tokens = gen.step(codes)
            if tokens[0, 0, 0] >= 0:
                text.append(int(tokens[0, 0, 0]))
            ready = bool((tokens[:, 1:] >= 0).all())
            wave.append(ckpt.mimi.decode(tokens[:, 1:])[0, 0] if ready else torch.zeros(FRAME))
    return text, torch.cat(wave)


# --- exactness --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [1.0, CFG])
def test_alone_equals_upstream_with_its_guidance_and_end_of_input(ckpt: MoshiCheckpoint, cfg: float) -> None:
    served = HibikiServed(ckpt, cfg_coef=cfg)
    audio, tail = varied_audio(1, 8, seed=1)[0], 5
    ours = run_alone(served, audio, tail, batch_invariant=False)
    text, wave = upstream_alone(ckpt, audio, tail, cfg)
    assert [t for c in ours.text for t in c] == text
    assert torch.equal(torch.cat(ours.wave), wave)
    assert wave[FRAME:].abs().amax() > 0  # the comparison is over real model audio


def test_guidance_changes_the_output_and_end_of_input_is_heard(ckpt: MoshiCheckpoint) -> None:
    """Both comparisons above would be vacuous if guidance or the end-of-input code changed nothing."""
    audio = varied_audio(1, 8, seed=1)[0]
    plain = run_alone(HibikiServed(ckpt), audio, 3)
    guided = run_alone(HibikiServed(ckpt, cfg_coef=CFG), audio, 3)
    assert plain.text != guided.text
    served = HibikiServed(ckpt, cfg_coef=CFG)
    slots = served.new_slots(1)
    for x in frames_of(audio):
        served.step(slots, x[None], slice(0, 1))
    silent = [served.step(slots, torch.zeros(1, FRAME), slice(0, 1)).wave[0] for _ in range(3)]
    # silence without the end-of-input code: another continuation
    assert not torch.equal(torch.cat(silent), torch.cat(guided.wave[-3:]))


@dataclass
class Script:
    """A session of the batched test: where it lives, when it joins, its audio, its tail, its pauses."""

    slot: int
    first: int
    audio: torch.Tensor
    tail: int
    paused: set[int] = field(default_factory=set)

    @property
    def length(self) -> int:
        return self.audio.shape[-1] // FRAME + self.tail


def test_guided_sessions_in_blocks_equal_alone(ckpt: MoshiCheckpoint) -> None:
    """Guided sessions in two 3-slot blocks: joining at different chunks, pausing (in their audio and in their
    tail), one moved to the other block after its input ended, one slot reused, then stepped as one realigned
    6-slot block and a one-row block (the engine's catch-up steps); each equals itself alone."""
    served = HibikiServed(ckpt, cfg_coef=CFG)
    slots = served.new_slots(6)
    blocks = (slice(0, 3), slice(3, 6))
    scripts = {
        "a": Script(0, 0, varied_audio(1, 6, seed=11)[0], tail=4, paused={3, 8}),
        "b": Script(1, 1, varied_audio(1, 5, seed=12)[0], tail=3),
        "c": Script(1, 11, varied_audio(1, 3, seed=13)[0], tail=3),  # b's slot, after b left
        "d": Script(3, 2, varied_audio(1, 4, seed=14)[0], tail=5, paused={9}),
        "e": Script(4, 0, varied_audio(1, 7, seed=15)[0], tail=2),
        "f": Script(2, 9, varied_audio(1, 6, seed=16)[0], tail=4),  # stepped twice a chunk from chunk 13
        "g": Script(4, 12, varied_audio(1, 4, seed=17)[0], tail=3),  # e's slot
    }
    move = ("b", 7, 5)  # after its input ended, b moves to slot 5 (the other block) before chunk 7
    slot_of: dict[str, int] = {}
    fed = dict.fromkeys(scripts, 0)
    traces = {name: Trace() for name in scripts}
    for chunk in range(19):
        for name, sc in scripts.items():
            if chunk == sc.first:
                slots.reset(sc.slot)
                slot_of[name] = sc.slot
            if name in slot_of and fed[name] == sc.length:
                del slot_of[name]
        if chunk == move[1]:
            slots.move(slot_of[move[0]], move[2])
            slot_of[move[0]] = move[2]
        for rows in blocks if chunk < 13 else (slice(0, 6), slice(2, 3)):  # then realigned, and a one-row step
            n = rows.stop - rows.start
            audio = 0.3 * torch.randn(n, FRAME, generator=torch.Generator().manual_seed(chunk * 10 + rows.start))
            active = torch.zeros(n, dtype=torch.bool)
            here = {s - rows.start: name for name, s in slot_of.items() if rows.start <= s < rows.stop}
            for row, name in here.items():
                sc, k = scripts[name], fed[name]
                if chunk - sc.first in sc.paused:
                    continue
                active[row] = True
                audio_frames = sc.audio.shape[-1] // FRAME
                audio[row] = sc.audio[k * FRAME : (k + 1) * FRAME] if k < audio_frames else 0.0
                if k == audio_frames:
                    slots.end_input(rows.start + row)
            out = served.step(slots, audio, rows, active=active, batch_invariant=True)
            assert out.done is not None and not bool(out.done[~active].any())
            for row, name in here.items():
                if active[row]:
                    traces[name].text.append(out.text[row])
                    traces[name].control.append(out.control[row])
                    traces[name].wave.append(out.wave[row])
                    traces[name].done.append(bool(out.done[row]))
                    fed[name] += 1
    for name, sc in scripts.items():
        assert fed[name] == sc.length, name
        traces[name].assert_equal(run_alone(served, sc.audio, sc.tail), f"session {name}")


# --- end of input -----------------------------------------------------------------------------------------------


def test_end_of_input_ends_at_eos_hangover_or_cap(ckpt: MoshiCheckpoint) -> None:
    """After its input ended a row is done at the model's text end-of-sequence, after ``tail_hangover_frames``
    frames without a word, or ``tail_max_frames`` frames in — each read on the model's own text stream (forced
    here, as an agent result would be, to make each case certain). Before the end, EOS ends nothing."""
    by_hangover = HibikiServed(ckpt, cfg_coef=CFG, tail_hangover_frames=3, tail_max_frames=50)
    by_cap = HibikiServed(ckpt, cfg_coef=CFG, tail_hangover_frames=50, tail_max_frames=6)
    pad, eos, word = int(ckpt.lm.text_padding_token_id), by_hangover.eos_id, 40
    audio = frames_of(varied_audio(1, 3, seed=5)[0])
    lag = max(ckpt.lm.delays)  # a token forced at frame f comes out at frame f + lag

    def run(served: HibikiServed, before: list[int], after: list[int]) -> list[bool]:
        slots = served.new_slots(1)
        done: list[bool] = []
        for f, token in enumerate(before + after):
            if f == len(before):
                slots.end_input(0)
            x = audio[f] if f < len(audio) else torch.zeros(FRAME)
            out = served.step(slots, x[None], slice(0, 1), text_in=torch.tensor([[[token]]]))
            assert out.done is not None
            done.append(bool(out.done[0]))
        return done

    # EOS said in the tail: done from the frame it comes out
    assert run(by_hangover, [word] * 3, [word, eos] + [word] * 4) == [False] * (3 + 1 + lag) + [True] * (5 - lag)
    # EOS out before the end of input is ignored (upstream: "EOS sampled too early")
    assert run(by_hangover, [word, eos, word, word, word], [word] * 4) == [False] * 9
    # the last word, then padding: done three frames after that word comes out
    assert run(by_hangover, [word] * 3, [word] + [pad] * 6) == [False] * (3 + 1 + lag + 2) + [True] * 2
    # words all along: done at the cap, six frames after the input ended
    assert run(by_cap, [word] * 3, [word] * 8) == [False] * (3 + 5) + [True] * 3


def test_tail_state_moves_and_resets_with_the_row(ckpt: MoshiCheckpoint) -> None:
    served = HibikiServed(ckpt, tail_max_frames=3)
    slots = served.new_slots(4)
    rows, silence = slice(0, 4), torch.zeros(4, FRAME)

    def done(active: list[bool] | None = None) -> list[bool]:
        out = served.step(slots, silence, rows, active=None if active is None else torch.tensor(active))
        assert out.done is not None
        return [bool(d) for d in out.done]

    served.step(slots, varied_audio(4, 1, seed=6), rows)
    slots.end_input(1)
    assert done() == done() == [False] * 4
    slots.end_input(1)  # ended again: its counters go on
    slots.end_input(3)
    assert done() == [False, True, False, False]
    slots.move(1, 2)  # the done row's state, counters included, into slot 2
    slots.reset(1)
    assert done([True, True, True, False]) == [False, False, True, False]  # row 3 paused: its count waits
    assert done() == [False, False, True, False]
    assert done() == [False, False, True, True]
    fresh = served.new_slots(2)
    fresh.end_input(1)  # a slot no step has taken yet: held by a one-row block until a step takes it in
    for expected in ([False, False], [False, False], [False, True]):
        out = served.step(fresh, torch.zeros(2, FRAME), slice(0, 2))
        assert out.done is not None and out.done.tolist() == expected


def test_the_speakers_voice_is_no_barge_in() -> None:
    """A translator's turn ends in LISTEN even while the speaker talks (Moshi's ends in YIELD, a barge-in)."""
    pad, word = 3, 40
    tokens = [word] + [pad] * (SPEAK_HANGOVER_FRAMES + 2)
    on, voiced = torch.ones(1, dtype=torch.bool), torch.ones(1, dtype=torch.bool)
    runs = {}
    for tracker in (FloorTracker(1, frozenset({pad})), TranslationFloor(1, frozenset({pad}))):
        runs[type(tracker)] = [int(tracker.update(torch.tensor([t]), voiced, on)[0]) for t in tokens]
    speak = [Floor.SPEAK] * (SPEAK_HANGOVER_FRAMES + 1)
    assert runs[FloorTracker] == [*speak, Floor.YIELD, Floor.LISTEN]
    assert runs[TranslationFloor] == [*speak, Floor.LISTEN, Floor.LISTEN]


# --- format and errors ------------------------------------------------------------------------------------------


def test_format_says_it_goes_on_after_its_input(ckpt: MoshiCheckpoint) -> None:
    served = HibikiServed(ckpt, cfg_coef=CFG)
    assert served.format.family == "hibiki" and served.format.continues_after_input
    assert served.guided and served.gen.cfg_coef == CFG
    assert not MoshiServed(tiny_checkpoint()).format.continues_after_input


def test_bad_configurations_are_named(ckpt: MoshiCheckpoint, tmp_path: Path, hibiki_dir: Path) -> None:
    with pytest.raises(ModelError, match="only Hibiki"):
        MoshiServed(ckpt)
    with pytest.raises(ModelError, match="a moshi checkpoint, not Hibiki"):
        HibikiServed(tiny_checkpoint(), cfg_coef=CFG)
    bare = copy.deepcopy(ckpt.lm)
    bare.condition_provider, bare.fuser = None, None
    with pytest.raises(ModelError, match=r"cfg_coef=3.0 needs the LM's 'description' conditioner.*none"):
        HibikiServed(dataclasses.replace(ckpt, lm=bare), cfg_coef=CFG)
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ModelError, match="cfg_coef"):
            HibikiServed(ckpt, cfg_coef=bad)
    with pytest.raises(ModelError, match="tail_max_frames"):
        HibikiServed(ckpt, tail_max_frames=0)
    # the typed spec: a guidance below 1 is refused by name; on a non-Hibiki checkpoint, too
    with pytest.raises(pydantic.ValidationError, match="cfg_coef"):
        ModelSource(uri=str(hibiki_dir), cfg_coef=0.5)
    moshi_dir = write_checkpoint(tmp_path / "moshi")
    with pytest.raises(ModelError, match=r"model\.cfg_coef applies to Hibiki.*moshi checkpoint"):
        load_served(ModelSource(uri=str(moshi_dir), cfg_coef=CFG))
    with pytest.raises(ModelError, match=r"model\.cfg_coef apply to the Moshi family"):
        load_served(ModelSource(family="duplex", cfg_coef=CFG))


def test_load_served_takes_cfg_from_the_spec_or_the_checkpoint(hibiki_dir: Path, tmp_path: Path) -> None:
    served = load_served(ModelSource(uri=str(hibiki_dir), cfg_coef=CFG, temperature=0.0))
    assert isinstance(served, HibikiServed) and served.cfg_coef == CFG
    copy_dir = tmp_path / "hibiki"
    copy_dir.mkdir()
    for p in hibiki_dir.iterdir():
        (copy_dir / p.name).symlink_to(p)
    config = json.loads((hibiki_dir / "config.json").read_text())
    config["lm_gen_config"]["cfg_coef"] = 2.0
    (copy_dir / "config.json").unlink()
    (copy_dir / "config.json").write_text(json.dumps(config))
    served = load_served(ModelSource(uri=str(copy_dir)))
    assert isinstance(served, HibikiServed) and served.cfg_coef == 2.0
    plain = load_served(ModelSource(uri=str(hibiki_dir)))
    assert isinstance(plain, HibikiServed) and plain.cfg_coef == 1.0 and not plain.guided
