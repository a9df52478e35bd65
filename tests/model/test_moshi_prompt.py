"""PersonaPlex's session prompt (voice + ``<system>`` persona) on ``MoshiServed``: the prompt sequence, its
prefill on a one-row staging block, and exactness under continuous batching (greedy, float32, CPU, a tiny
random checkpoint in PersonaPlex's layout: ``moshi_fixtures.tiny_personaplex_checkpoint``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from moshi_fixtures import (  # first: it sets NO_TORCH_COMPILE
    FRAME,
    PERSONAPLEX_CONTEXT,
    tiny_checkpoint,
    tiny_personaplex_checkpoint,
    varied_audio,
)

from duplex.model.config import ModelError
from duplex.model.family import Floor
from duplex.model.moshi import prompt as prompt_module
from duplex.model.moshi.checkpoint import MoshiCheckpoint, load_voice_prompt
from duplex.model.moshi.prompt import PROMPT_SILENCE_FRAMES, SessionPrompt, wrap_persona
from duplex.model.moshi.served import MoshiServed

PERSONA = "You enjoy having a good conversation. Your name is Jane."
CHUNK = 2
"""Frames per chunk."""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> MoshiCheckpoint:
    return tiny_personaplex_checkpoint(tmp_path_factory.mktemp("pp"))


@pytest.fixture(scope="module")
def served(ckpt: MoshiCheckpoint) -> MoshiServed:
    return MoshiServed(ckpt)


Trace = list[tuple[list[int], torch.Tensor, torch.Tensor]]
"""Per chunk: text tokens, floor control, wave."""


def assert_same(a: Trace, b: Trace, what: str) -> None:
    assert len(a) == len(b), what
    for c, ((ta, ca, wa), (tb, cb, wb)) in enumerate(zip(a, b, strict=True)):
        assert ta == tb, f"{what}: text differs at chunk {c}"
        assert torch.equal(ca, cb), f"{what}: control differs at chunk {c}"
        assert torch.equal(wa, wb), f"{what}: wave differs at chunk {c}"


def run_alone(served: MoshiServed, audio: torch.Tensor, prompt: SessionPrompt | None) -> Trace:
    """One session alone in a one-slot state: prefilled with ``prompt`` (if any), then its audio chunk by chunk."""
    state = served.new_slots(1)
    if prompt is not None:
        served.prefill(state, 0, prompt, batch_invariant=True)
    out: Trace = []
    for x in audio.split(CHUNK * FRAME):
        step = served.step(state, x[None], slice(0, 1), batch_invariant=True)
        out.append((step.text[0], step.control[0], step.wave[0]))
    return out


def test_persona_is_wrapped_in_system_tags() -> None:
    assert wrap_persona("  Be kind. ") == "<system> Be kind. <system>"
    assert wrap_persona("<system> Be kind. <system>") == "<system> Be kind. <system>"
    assert wrap_persona("<system>") == "<system> <system> <system>"


def test_prompt_sequence(served: MoshiServed, ckpt: MoshiCheckpoint) -> None:
    """Voice embeddings, then silence, persona, silence on the text stream; the model stream silent, the user
    stream the sine; every stream delayed by its delay; the voice's own ring buffer for its frames still due."""
    p = served.session_prompt("NATF1", PERSONA)
    vp = load_voice_prompt(ckpt.voices["NATF1"])
    text = ckpt.text_tokenizer.encode(wrap_persona(PERSONA))
    E, S, N = vp.embeddings.shape[0], PROMPT_SILENCE_FRAMES, len(text)
    assert p.steps == E + 1 + 2 * S + N - 1 and p.model_steps == p.steps + 1
    assert p.embeddings is not None and torch.equal(p.embeddings, vp.embeddings.view(E, -1))
    pad, lm = ckpt.lm.text_padding_token_id, ckpt.lm
    first = E + 1  # the first frame after the voice
    assert p.tokens[0, first : first + S].tolist() == [pad] * S
    assert p.tokens[0, first + S : first + S + N].tolist() == text
    assert p.tokens[0, first + S + N : first + 2 * S + N].tolist() == [pad] * S
    for k in range(1, lm.num_codebooks):
        d, q = lm.delays[k], (k - 1) % 8
        want = p.silence[q] if k <= 8 else p.sine[q]
        assert bool((p.tokens[k, first + d : p.steps + 1 + d] == want).all()), k
        for pos in (E, E + d):  # the voice's frames still due come from its ring buffer
            if pos - d <= E:
                assert p.tokens[k, pos] == vp.cache[0, k, pos % vp.cache.shape[2]], (k, pos)
    # without a voice the sequence starts with the silence; the first positions are upstream's initial tokens
    q = served.session_prompt("", PERSONA)
    assert q.embeddings is None and q.steps == 2 * S + N - 1
    initial = lm._get_initial_token().view(-1)
    for k, d in enumerate(lm.delays):
        assert torch.equal(q.tokens[k, : d + 1], initial[k].expand(d + 1)), k


def test_prompt_errors(served: MoshiServed) -> None:
    with pytest.raises(ModelError, match=r"voice 'NOPE': not a voice of .*voices: NATF0, NATF1"):
        served.session_prompt("NOPE", "")
    with pytest.raises(
        ModelError, match=rf"persona: \d+ tokens .* the model's context is {PERSONAPLEX_CONTEXT} frames"
    ):
        served.session_prompt("NATF0", "hello there " * PERSONAPLEX_CONTEXT)
    moshi = MoshiServed(tiny_checkpoint())
    with pytest.raises(ModelError, match="the moshi family takes no voice or persona"):
        moshi.session_prompt("NATF0", "")
    with pytest.raises(ModelError, match="the moshi family takes no voice or persona"):
        moshi.session_prompt("", PERSONA)


def test_user_audio_reaches_the_two_stream_model(served: MoshiServed) -> None:
    """PersonaPlex's depformer predicts both streams; the user's codes must replace its user half."""
    a = run_alone(served, varied_audio(1, 6, seed=2)[0], None)
    b = run_alone(served, varied_audio(1, 6, seed=3)[0], None)
    assert [t for t, _, _ in a] != [t for t, _, _ in b]
    assert not torch.equal(torch.cat([w for _, _, w in a]), torch.cat([w for _, _, w in b]))


def test_voice_and_persona_change_what_the_model_says(served: MoshiServed) -> None:
    audio = varied_audio(1, 6, seed=4)[0]
    runs = {
        "none": run_alone(served, audio, None),
        "F0": run_alone(served, audio, served.session_prompt("NATF0", PERSONA)),
        "M1": run_alone(served, audio, served.session_prompt("NATM1", PERSONA)),
        "F0 other persona": run_alone(served, audio, served.session_prompt("NATF0", "Talk about the weather.")),
        "persona only": run_alone(served, audio, served.session_prompt("", PERSONA)),
    }
    waves = {k: torch.cat([w for _, _, w in v]) for k, v in runs.items()}
    names = list(runs)
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            assert not torch.equal(waves[x], waves[y]), f"{x} and {y} gave the same audio"
    # a prompted session speaks from its first frame (its codebook delays were filled by the prompt)
    assert runs["F0"][0][2].view(-1, FRAME).abs().amax(dim=1).gt(0).all()
    assert not runs["none"][0][2][:FRAME].any()


class Block:
    """Sessions in a 6-slot state stepped like the engine steps cohorts (blocks of 4 and 2 slots)."""

    def __init__(self, served: MoshiServed) -> None:
        self.served = served
        self.state = served.new_slots(6)
        self.slot_of: dict[str, int] = {}
        self.chunks: dict[str, list[torch.Tensor]] = {}
        self.fed: dict[str, int] = {}
        self.trace: dict[str, Trace] = {}

    def join(self, name: str, slot: int, audio: torch.Tensor, prompt: SessionPrompt | None) -> None:
        self.state.reset(slot)
        if prompt is not None:
            self.served.prefill(self.state, slot, prompt, batch_invariant=True)
        self.slot_of[name], self.chunks[name], self.fed[name], self.trace[name] = (
            slot,
            audio.split(CHUNK * FRAME),
            0,
            [],
        )

    def step(self, rows: slice, paused: set[str], seed: int) -> None:
        n = rows.stop - rows.start
        audio = 0.3 * torch.randn(n, CHUNK * FRAME, generator=torch.Generator().manual_seed(seed))
        active = torch.zeros(n, dtype=torch.bool)
        here = {s - rows.start: m for m, s in self.slot_of.items() if rows.start <= s < rows.stop and m not in paused}
        for row, m in here.items():
            audio[row], active[row] = self.chunks[m][self.fed[m]], True
        out = self.served.step(self.state, audio, rows, active=active, batch_invariant=True)
        for row in range(n):
            if not active[row]:
                assert out.text[row] == [] and not out.wave[row].any()
                assert bool((out.control[row] == Floor.LISTEN).all())
        for row, m in here.items():
            self.trace[m].append((out.text[row], out.control[row], out.wave[row]))
            self.fed[m] += 1


def scenario(served: MoshiServed, prompted: SessionPrompt | None, with_p: bool) -> dict[str, Trace]:
    """Sessions joining, pausing and leaving in two blocks; ``p`` (prompted, when ``with_p``) joins at chunk 2
    into block 0 while a, b are live there, pauses, then moves on with them; c reuses b's slot."""
    b = Block(served)
    plan = {  # name: (slot, first chunk, last chunk (exclusive), paused chunks)
        "a": (0, 0, 10, {4}),
        "b": (1, 1, 5, set()),
        "c": (1, 6, 10, set()),
        "e": (4, 0, 10, {3}),
    }
    if with_p:
        plan["p"] = (2, 2, 10, {5, 6})
    for chunk in range(10):
        for i, (name, (slot, first, last, _)) in enumerate(plan.items()):
            if chunk == first:
                audio = varied_audio(1, CHUNK * (last - first), seed=20 + i)[0]
                b.join(name, slot, audio, prompted if name == "p" else None)
            if chunk == last and name in b.slot_of:
                del b.slot_of[name]
        paused = {n for n, (_, _, _, ps) in plan.items() if chunk in ps}
        b.step(slice(0, 4), paused, seed=100 + chunk)
        b.step(slice(4, 6), paused, seed=200 + chunk)
    return {name: b.trace[name] for name in plan}


def test_prompted_session_in_a_batch_equals_alone_and_leaves_the_others_unchanged(served: MoshiServed) -> None:
    prompt = served.session_prompt("VARM2", PERSONA)
    batched = scenario(served, prompt, with_p=True)
    audio_p = varied_audio(1, CHUNK * 8, seed=24)[0]  # p's seed: 20 + its index in the plan
    assert_same(batched["p"], run_alone(served, audio_p[: len(batched["p"]) * CHUNK * FRAME], prompt), "p")
    without = scenario(served, None, with_p=False)
    for name in ("a", "b", "c", "e"):
        assert_same(batched[name], without[name], f"{name} with and without the prompted session")
    assert len(batched["p"]) == 6 and len(batched["a"]) == 9


def test_prefill_replaces_a_used_slot(served: MoshiServed, tmp_path: Path) -> None:
    """A slot that held another session (and a block around it) is prefilled exactly like a fresh one."""
    prompt = served.session_prompt("NATF0", PERSONA)
    audio = varied_audio(1, 4, seed=5)[0]
    state = served.new_slots(4)
    for _ in range(2):
        served.step(state, varied_audio(4, CHUNK, seed=6), slice(0, 4), batch_invariant=True)
    served.prefill(state, 2, prompt, batch_invariant=True)
    got: Trace = []
    for x in audio.split(CHUNK * FRAME):
        batch = varied_audio(4, CHUNK, seed=7)
        batch[2] = x
        step = served.step(state, batch, slice(0, 4), batch_invariant=True)
        got.append((step.text[2], step.control[2], step.wave[2]))
    assert_same(got, run_alone(served, audio, prompt), "prefilled into a used slot")


# --- against NVIDIA's generator -----------------------------------------------------------------------------


class NvidiaLoop:
    """NVIDIA's PersonaPlex generator for one session, greedy (its ``LMGen``: a ring of tokens with a
    ``provided`` flag per entry, positions counted from a first call that runs nothing, provided tokens forced in
    the text and the depformer's chain), re-expressed on upstream ``LMModel``'s primitives: the reference the
    prefill is checked against."""

    def __init__(self, lm: Any) -> None:
        self.lm, self.delays = lm, [int(d) for d in lm.delays]
        self.n, self.ct = lm.n_q // 2, max(self.delays) + 3
        self.cache = torch.full((lm.num_codebooks, self.ct), -2, dtype=torch.long)
        self.provided = torch.zeros(lm.num_codebooks, self.ct, dtype=torch.bool)
        self.initial = lm._get_initial_token().view(-1)
        self.offset = 0

    def _prepare(
        self, user: torch.Tensor | None, model: torch.Tensor | None, text: int | None
    ) -> tuple[int, int] | None:
        o, ct = self.offset, self.ct
        for q in range(self.n):
            for k, codes in ((1 + self.n + q, user), (1 + q, model)):
                if codes is not None:
                    self.cache[k, (o + self.delays[k]) % ct] = codes[q]
                    self.provided[k, (o + self.delays[k]) % ct] = True
        if text is not None:
            self.cache[0, o % ct], self.provided[0, o % ct] = text, True
        for k, d in enumerate(self.delays):
            if o <= d:
                self.cache[k, o % ct], self.provided[k, o % ct] = self.initial[k], True
        if o == 0:
            self.cache[:, 0] = self.initial
            self.offset = 1
            return None
        return (o - 1) % ct, o % ct

    def step(self, user: torch.Tensor, model: torch.Tensor | None = None, text: int | None = None) -> Any:
        pos = self._prepare(user, model, text)
        if pos is None:
            return None
        out, logits = self.lm.forward_text(self.cache[None, :, pos[0], None])
        return self._process(out, logits, *pos)

    def step_embeddings(self, emb: torch.Tensor) -> None:
        pad = int(self.lm.text_padding_token_id)
        while (pos := self._prepare(self.initial[1 : 1 + self.n], self.initial[1 + self.n :], pad)) is None:
            pass
        out = self.lm.transformer(emb.view(1, 1, -1))
        if self.lm.out_norm:
            out = self.lm.out_norm(out)
        self._process(out, self.lm.text_linear(out)[:, None], *pos)

    def _process(self, out: torch.Tensor, logits: torch.Tensor, inp: int, tgt: int) -> torch.Tensor | None:
        sampled = int(logits.view(-1).argmax())
        prev = int(self.cache[0, tgt]) if self.provided[0, tgt] else sampled
        audio: list[int] = []
        with self.lm.depformer.streaming(1):
            for cb in range(self.lm.dep_q):
                token = int(self.lm.forward_depformer(cb, torch.tensor([[[prev]]]), out).view(-1).argmax())
                audio.append(token)
                prev = int(self.cache[1 + cb, tgt]) if self.provided[1 + cb, tgt] else token
        self.provided[:, inp] = False
        for k, token in enumerate([sampled, *audio]):
            if not self.provided[k, tgt]:
                self.cache[k, tgt] = token
        self.offset += 1
        if self.offset - 1 <= max(self.delays):
            return None
        idx = [(self.offset - 1 - max(self.delays) + d) % self.ct for d in self.delays[: 1 + self.lm.dep_q]]
        return self.cache[torch.arange(len(idx)), idx]


@pytest.mark.parametrize("chunk", [1, 64])
def test_prefill_and_stream_equal_nvidias_generator(
    served: MoshiServed, ckpt: MoshiCheckpoint, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """Voice, silence, persona, silence, then the conversation: the text tokens and audio equal NVIDIA's loop
    (whose first conversation call reads the prompt's last frame: our frame j is its call j + 1). Bit for bit
    with one prompt position per forward, as NVIDIA runs it; in chunks of 64 the same tokens."""
    monkeypatch.setattr(prompt_module, "PREFILL_CHUNK", chunk)
    frames = 6
    audio = varied_audio(1, frames, seed=9)[0]
    prompt = served.session_prompt("NATM1", PERSONA)
    state = served.new_slots(1)
    served.prefill(state, 0, prompt)
    ours = [served.step(state, x[None], slice(0, 1)) for x in audio.split(FRAME)]

    lm, mimi, ref = ckpt.lm, ckpt.mimi, NvidiaLoop(ckpt.lm)
    vp = load_voice_prompt(ckpt.voices["NATM1"])
    pad, sine, silence = int(lm.text_padding_token_id), prompt.sine, prompt.silence
    text: list[list[int]] = []
    wave: list[torch.Tensor] = []
    with torch.no_grad(), lm.streaming(1), mimi.streaming(1):
        for e in vp.embeddings:
            ref.step_embeddings(e)
        ref.cache.copy_(vp.cache[0])
        prompt_text = [pad] * PROMPT_SILENCE_FRAMES + ckpt.text_tokenizer.encode(wrap_persona(PERSONA))
        for t in prompt_text + [pad] * PROMPT_SILENCE_FRAMES:
            ref.step(sine, silence, t)
        for f in range(frames + 1):
            x = audio[f * FRAME : (f + 1) * FRAME] if f < frames else torch.zeros(FRAME)
            out = ref.step(mimi.encode(x[None, None])[0, :, 0])
            if f > 0:
                text.append([int(out[0])])
                wave.append(mimi.decode(out[None, 1 : 1 + ref.n, None])[0, 0])
    assert [o.text[0] for o in ours] == text
    got = torch.cat([o.wave[0] for o in ours])
    want = torch.cat(wave).clamp(-1, 1)
    if chunk == 1:
        assert torch.equal(got, want)
    else:  # a 64-position forward rounds differently: the same tokens, audio within float error
        assert torch.allclose(got, want, atol=1e-4)
