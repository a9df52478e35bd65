"""PersonaPlex's session prompt — a voice and a ``<system>`` persona — and its two-stream depformer layout, on
upstream ``moshi`` primitives.

The prompt sequence (NVIDIA's ``LMGen.step_system_prompts``), one model step per 80 ms frame, each stream fully
forced (nothing sampled):

1. the voice: the ``E`` stored input embeddings of ``voices/NAME.pt`` replayed one per step, then its token
   ring buffer (``cache``) installed as the delayed tokens still to come;
2. ``PROMPT_SILENCE_FRAMES`` frames of silence: text padding, the model's stream silence codes, the user's
   stream the codes of a 440 Hz sine ("nobody speaks yet");
3. the persona: ``"<system> TEXT <system>"`` tokenised by the checkpoint's SentencePiece model, one token per
   frame on the text stream, the audio streams as in 2;
4. the silence of 2 again.

The frame after the prompt takes the sine as user input too, samples its text and the model stream's first
codebook, keeps the delayed codebooks of the last silence frame (NVIDIA's first conversation step reads the
prompt's last frame before the user's first); the user's first frame follows it. Without a voice the sequence
starts at 2, as NVIDIA's does.

The prefill runs on a one-row staging block of upstream streaming state (``MoshiServed.prefill_start``), as a
resumable job of pieces (``prefill_pieces``): the forced steps as whole chunks of the LM's transformer
(``PREFILL_CHUNK`` positions a forward), then the finish — the ring of delayed tokens and the frame after as one
``LMGen.step``; the staging row is then copied into the session's slot, so the other rows of its block are
never touched. The engine runs one piece between two steps (``MoshiServed.prefill_piece``). PersonaPlex's
depformer predicts both streams (``dep_q == n_q``): ``UserStreams`` puts the user's codes into the token ring
and keeps them over the depformer's user half, as NVIDIA's generator does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ..config import ModelError
from .checkpoint import MoshiCheckpoint, VoicePrompt, load_voice_prompt

PROMPT_SILENCE_FRAMES = 6
"""Silence frames after the voice and after the persona: NVIDIA's ``int(0.5 s * 12.5 Hz)``."""
PREFILL_CHUNK = 64
"""Prompt positions one transformer forward of the prefill takes."""
SYSTEM_TAG = "<system>"
PUBLISHED_SILENCE_CODES = (948, 243, 1178, 546, 1736, 1030, 1978, 2008)
"""NVIDIA's codes of a silent frame for the published Mimi (2048 bins, 8 codebooks a stream)."""
PUBLISHED_SINE_CODES = (430, 1268, 381, 1611, 1095, 1495, 56, 472)
"""NVIDIA's codes of its 440 Hz sine frame for the published Mimi."""
SINE_HZ = 440.0
SINE_AMPLITUDE = 0.5


def wrap_persona(text: str) -> str:
    """The persona as the model was trained to read it: ``<system> TEXT <system>`` (kept if already tagged)."""
    cleaned = text.strip()
    if cleaned.startswith(SYSTEM_TAG) and cleaned.endswith(SYSTEM_TAG) and len(cleaned) > len(SYSTEM_TAG):
        return cleaned
    return f"{SYSTEM_TAG} {cleaned} {SYSTEM_TAG}"


@dataclass(frozen=True)
class SessionPrompt:
    """One session's prompt, checked against the checkpoint, as the tokens and embeddings the prefill feeds."""

    voice: str
    """Voice name (``voices/NAME.pt``), "" = none."""
    persona: str
    """Persona text as given ("" = none)."""
    embeddings: Tensor | None
    """(E, dim): the voice's input embeddings, one per step."""
    tokens: Tensor
    """(K, P + 1 + max_delay) long: every stream's token at each prompt position (delays applied; -2 = none)."""
    steps: int
    """``P``: forced transformer steps (voice, silence, persona, silence); the frame after is one more step."""
    silence: Tensor
    """(per_stream,) long: the model stream's codes of a silent frame."""
    sine: Tensor
    """(per_stream,) long: the user stream's codes of the sine frame."""

    @property
    def model_steps(self) -> int:
        """Model steps the prefill runs: the forced ones and the frame after."""
        return self.steps + 1


class PromptBuilder:
    """Builds ``SessionPrompt``s for one PersonaPlex checkpoint (voices read once, on first use)."""

    def __init__(self, ckpt: MoshiCheckpoint, lm: Any, mimi: Any) -> None:
        self.ckpt, self.lm = ckpt, lm
        self.delays = [int(d) for d in lm.delays]
        self.per_stream = int(lm.n_q) // 2
        self.silence, self.sine = _reference_codes(lm, mimi, self.per_stream)
        self._voices: dict[str, VoicePrompt] = {}

    @property
    def context(self) -> int:
        return int(self.lm.transformer.layers[0].self_attn.context or 0)

    def voice_names(self) -> list[str]:
        return sorted(self.ckpt.voices)

    def build(self, voice: str, persona: str) -> SessionPrompt:
        """The prompt of ``voice`` (a name in the checkpoint's ``voices/``, "" = none) and ``persona`` ("" =
        none); ``ModelError`` naming what is wrong."""
        if self.ckpt.family != "personaplex":
            raise ModelError(
                f"{self.ckpt.name}: the {self.ckpt.family} family takes no voice or persona (PersonaPlex does)"
            )
        vp = self._voice(voice) if voice else None
        text = [int(t) for t in self.ckpt.text_tokenizer.encode(wrap_persona(persona))] if persona.strip() else []
        lm = self.lm
        K, n, S = 1 + int(lm.n_q), self.per_stream, PROMPT_SILENCE_FRAMES
        E = 0 if vp is None else int(vp.embeddings.shape[0])
        # frames: the voice's 0..E, silence, persona, silence; the last one's index is P
        voice_frames = 0 if vp is None else E + 1
        P = voice_frames + 2 * S + len(text) - 1
        context = self.context
        if context and P + 2 > context:
            raise ModelError(
                f"persona: {len(text)} tokens with voice {voice or '(none)'} ({E} steps) make a {P + 1}-frame "
                f"prompt; the model's context is {context} frames (at most "
                f"{max(0, context - 2 - voice_frames - 2 * S + 1)} persona tokens with this voice)"
            )
        pad = int(lm.text_padding_token_id)
        frame_text = [pad] * S + text + [pad] * S
        width = P + 2 + max(self.delays)
        tokens = torch.full((K, width), int(lm.ungenerated_token_id), dtype=torch.long)
        initial = lm._get_initial_token().view(-1).cpu()
        for k, d in enumerate(self.delays):
            for p in range(width):
                f = p - d
                if p <= d:
                    tokens[k, p] = initial[k]
                elif f > P:
                    continue  # a frame after the prompt: written by the steps that follow
                elif f < voice_frames:
                    if p >= E:  # the voice's tokens still to come, from its ring buffer
                        assert vp is not None
                        tokens[k, p] = vp.cache[0, k, p % vp.cache.shape[2]]
                elif k == 0:
                    tokens[k, p] = frame_text[f - voice_frames]
                else:
                    q = (k - 1) % n
                    tokens[k, p] = self.silence[q] if k <= n else self.sine[q]
        emb = None if vp is None else vp.embeddings.view(E, -1)
        return SessionPrompt(
            voice=voice,
            persona=persona,
            embeddings=emb,
            tokens=tokens,
            steps=P,
            silence=torch.tensor(self.silence, dtype=torch.long),
            sine=torch.tensor(self.sine, dtype=torch.long),
        )

    def _voice(self, name: str) -> VoicePrompt:
        found = self._voices.get(name)
        if found is not None:
            return found
        path = self.ckpt.voices.get(name)
        if path is None:
            known = ", ".join(self.voice_names()) or "none"
            raise ModelError(f"voice {name!r}: not a voice of {self.ckpt.name} (voices: {known})")
        vp = load_voice_prompt(path, dim=int(self.lm.dim), num_codebooks=int(self.lm.num_codebooks))
        self._voices[name] = vp
        return vp


@torch.no_grad()
def _reference_codes(lm: Any, mimi: Any, per_stream: int) -> tuple[list[int], list[int]]:
    """The codes of a silent frame and of the 440 Hz sine frame: NVIDIA's for the published Mimi, else the
    steady-state frame this checkpoint's Mimi encodes from each."""
    if int(lm.card) == 2048 and per_stream == len(PUBLISHED_SILENCE_CODES):
        return list(PUBLISHED_SILENCE_CODES), list(PUBLISHED_SINE_CODES)
    rate = int(mimi.sample_rate)
    t = torch.arange(rate, dtype=torch.float32) / rate
    sine = SINE_AMPLITUDE * torch.sin(2 * torch.pi * SINE_HZ * t)
    audio = torch.stack([torch.zeros(rate), sine])[:, None].to(next(mimi.parameters()).device)
    codes = mimi.encode(audio)[:, :per_stream, -1].cpu()
    return [int(c) for c in codes[0]], [int(c) for c in codes[1]]


class UserStreams:
    """The user's codes for a depformer that predicts both streams (PersonaPlex, ``dep_q == n_q``), where upstream
    ``LMGen`` takes no user input: ``provide`` writes them into the token ring at each codebook's delay before
    the step, as upstream does for a one-stream depformer's input, and the audio hook (``__call__``) keeps them
    where ``LMGen`` would write the depformer's own user-half codes, as NVIDIA's generator forces them. ``force``
    also replaces chosen model-stream codebooks (the prefill's frame after the prompt)."""

    def __init__(self, gen: Any) -> None:
        self.gen = gen
        lm = gen.lm_model
        self.both = int(lm.dep_q) == int(lm.n_q)
        self.per_stream = int(lm.n_q) // 2 if self.both else 0
        self.delays = [int(d) for d in lm.delays]
        self.force: tuple[Tensor, Tensor] | None = None
        """(mask (dep_q,) bool, codes (dep_q,) long): model codes to force this step."""

    def provide(self, user: Tensor) -> None:
        """The user's codes of the frame about to be stepped, (n, per_stream): into the ring at the current
        position plus each codebook's delay, for the rows the execution mask runs."""
        if not self.both:
            return
        state = self.gen._streaming_state
        cache, offsets, active = state.cache, state.offsets, state.exec_mask
        rows = torch.arange(cache.shape[0], device=cache.device)
        n = self.per_stream
        for q in range(n):
            k = 1 + n + q  # the stream's index in the ring (text first)
            pos = (offsets + self.delays[k]) % cache.shape[2]
            cache[rows, k, pos] = torch.where(active, user[:, q].to(cache.device), cache[rows, k, pos])

    def __call__(self, audio_tokens: Tensor) -> None:
        """``audio_tokens`` (n, dep_q), replaced in place before ``LMGen`` writes them at the next position."""
        if self.force is not None:
            mask, codes = self.force
            audio_tokens.copy_(torch.where(mask, codes, audio_tokens))
        if not self.both:
            return
        state = self.gen._streaming_state
        cache = state.cache
        rows = torch.arange(cache.shape[0], device=cache.device)[:, None]
        n = self.per_stream
        ks = torch.arange(1 + n, 1 + 2 * n, device=cache.device)[None, :]
        pos = ((state.offsets + 1) % cache.shape[2])[:, None]
        audio_tokens[:, n:] = cache[rows, ks, pos]  # what ``provide`` wrote there (or writes next frame)


@dataclass(frozen=True)
class PrefillPiece:
    """One resumable piece of a prefill: a transformer chunk of the forced steps (``voice``: the stored input
    embeddings ``start .. stop``; ``tokens``: the tokens' embeddings at positions ``start .. stop``), or the
    ``finish``: the ring of delayed tokens and the frame after."""

    kind: Literal["voice", "tokens", "finish"]
    start: int = 0
    stop: int = 0


def prefill_pieces(prompt: SessionPrompt) -> tuple[PrefillPiece, ...]:
    """The pieces of ``prompt``'s prefill, in order: ``PREFILL_CHUNK`` positions a forward, the voice's
    embeddings first, then the tokens; the ``finish`` last."""
    E = 0 if prompt.embeddings is None else int(prompt.embeddings.shape[0])
    P = prompt.steps
    voice = [PrefillPiece("voice", a, min(E, a + PREFILL_CHUNK)) for a in range(0, E, PREFILL_CHUNK)]
    tokens = [PrefillPiece("tokens", a, min(P, a + PREFILL_CHUNK)) for a in range(E, P, PREFILL_CHUNK)]
    return (*voice, *tokens, PrefillPiece("finish"))


@torch.no_grad()
def run_piece(lm: Any, gen: Any, streams: UserStreams, prompt: SessionPrompt, piece: PrefillPiece) -> None:
    """Feed one piece of ``prompt`` to the one-row streaming state installed in ``lm`` and ``gen``
    (``MoshiServed`` swaps it in around each piece, so other blocks may step between two pieces)."""
    state = gen._streaming_state
    if state is None or int(state.cache.shape[0]) != 1 or int(state.offsets[0]) != 0:
        raise RuntimeError("a prefill piece runs on a one-row streaming state whose prompt is not finished")
    device = state.cache.device
    if piece.kind == "voice":  # the voice: its stored input embeddings
        assert prompt.embeddings is not None
        dtype = next(lm.parameters()).dtype
        lm.transformer(prompt.embeddings[piece.start : piece.stop].to(device, dtype)[None])
        return
    tokens = prompt.tokens.to(device)
    if piece.kind == "tokens":  # silence, persona, silence: the tokens' embeddings
        lm.forward_text(tokens[None, :, piece.start : piece.stop])
        return
    P = prompt.steps
    # the delayed tokens still to come, into upstream's ring (positions P - 1 .. P + max_delay)
    ct = int(state.cache.shape[2])
    last = P + max(streams.delays)
    for p in range(max(0, last + 1 - ct), last + 1):
        state.cache[0, :, p % ct] = tokens[:, p]
    state.offsets[0] = P
    state.offset_cpu = P
    # the frame after: the user's stream is still the sine, the model's delayed codebooks the last silence
    dep_q, n = int(lm.dep_q), prompt.sine.shape[0]
    mask = torch.zeros(dep_q, dtype=torch.bool, device=device)
    codes = torch.zeros(dep_q, dtype=torch.long, device=device)
    for q in range(n):
        if streams.delays[1 + q] > 0:
            mask[q], codes[q] = True, prompt.silence[q]
    sine = prompt.sine.to(device)
    streams.provide(sine[None])
    streams.force = (mask, codes)
    try:
        gen.step(sine.view(1, n, 1))
    finally:
        streams.force = None
