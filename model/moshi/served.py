"""The Moshi family behind the engine's ``ServedModel`` interface, on the upstream ``moshi`` package.

Per frame (80 ms, 1920 samples at 24 kHz) and row: Mimi encodes the user's audio to codes, ``LMGen.step`` gives
the model's text token and audio codes, Mimi decodes those codes to the model's audio. Rows still filling the
codebook delays (the first frame of a session) yield no tokens and decode as silence.

Continuous batching. The engine steps contiguous blocks of slots ("cohorts") at different phases; each block
gets its own upstream streaming state (Mimi's encoder and decoder, ``LMGen``, the LM's transformer), created
lazily on the first step of that slot range, and swapped into the shared upstream modules around each call, so
stepping a 16-row block costs a 16-row forward however many slots there are. Rows of a block are independent
streams: upstream's execution mask leaves an inactive row's state as it was (all but the KV-ring slots of the
row's next write, which no query reads and its next active step overwrites), ``reset_streaming(mask)`` makes
a row a fresh stream, and ``LMGen(support_out_of_sync=True)`` keeps per-row offsets, so a reset row does not
stall its neighbours. ``move`` copies one row's whole streaming state into another row, of the same block or
another one. Not thread-safe: the upstream modules are shared, one step (or move, reset) at a time.

Batch invariance. With CPU's default kernels a row's audio differs from its solo run by ~1e-7 (oneDNN
convolutions and small-row GEMMs pick their algorithm by batch size). ``step(batch_invariant=True)`` on CPU
turns oneDNN off and pads every matrix product to ``invariant.MIN_GEMM_ROWS`` rows (``kernels.py``): then a row's
text, floor control and audio are bit-identical whatever shares its block (tested). On other devices it changes
nothing.

Floor control, from the model's own output. A frame is SPEAK while the model is producing words on its text
stream: from a frame whose text token is a word piece (not padding: not ``text_padding_token_id``, not
``end_of_text_padding_id``) through ``SPEAK_HANGOVER_FRAMES`` frames of padding after the last word. The frame
after that ends the turn: it is YIELD when the user's input was voiced (``detect.voiced_frames``, the engine's
one definition of user speech) in any of the last ``SPEAK_HANGOVER_FRAMES`` + 1 frames — the user barged in and
the model stopped — and LISTEN otherwise. Every other frame is LISTEN. The counters behind it are per-row state:
they move and reset with the row.

Sampling. Each slot samples with its session's own temperature and top-k (``sampling.py``: upstream's
``sample_token`` replaced per step when a block's rows differ from the engine's settings).

Known costs (upstream): frozen (inactive) rows of a block are still computed; every block preallocates the KV
ring at full context for all of its rows."""

from __future__ import annotations

import codecs
import dataclasses
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from moshi.models.lm import LMGen
from moshi.modules.transformer import RingKVCache, StreamingMultiheadAttention
from moshi.utils.compile import no_compile
from torch import Tensor

from ..config import ModelError
from ..detect import voiced_frames
from ..family import FamilyStep, Floor, StreamFormat
from . import CHUNKS_MS
from .checkpoint import MoshiCheckpoint
from .kernels import invariant_kernels
from .prompt import PrefillPiece, PromptBuilder, SessionPrompt, UserStreams, prefill_pieces, run_piece
from .sampling import RowSampling, check_sampling, row_sampling

SPEAK_HANGOVER_FRAMES = 8
"""Frames of text padding after the last word that still count as the model's turn (8 × 80 ms = 640 ms)."""
TOP_K_TEXT = 25
"""Upstream's default text top-k when sampling."""

# Fields of upstream's streaming-state dataclasses, by what ``move`` does with them. A field in neither set makes
# ``move`` fail loudly (an upstream version with new per-row state must be looked at, not copied by guess).
_ROW_FIELDS = frozenset(
    {
        "cache",  # _LMGenState: (B, 1+n_q, max_delay+2) ring of delayed tokens
        "offsets",  # _LMGenState, _TransformerState: (B,) per-row step counters (rope / sin positions)
        "offset",  # _MHAState: (B,) per-row position
        "previous",  # _StreamingConv1dState: (B, C, kernel-stride) left context
        "first",  # _StreamingConv1dState: (B,) replicate-padding flag
        "partial",  # _StreamingConvTr1dState: (B, C, kernel-stride) overlap-add tail
        "k_cross",  # _MHAState: (B, H, T, D) cached cross-attention keys (conditioned models)
        "v_cross",
    }
)
_SHARED_FIELDS = frozenset(
    {
        "batch_size",
        "device",
        "initial",  # _LMGenState: (1, K, 1) start tokens
        "offset_cpu",  # one int per batch; only read by weights-per-step layers (checked absent) and in-sync LMGen
        "condition_sum",  # same conditioning for every row
        "condition_cross",
        "cfg_is_masked_until",
        "exit_stack",
        "reset_callback",
        "set_exec_mask_callback",
        "graphed_main",
        "graphed_depth",
        "graphed_tr_enc",
        "graphed_tr_dec",
        "graphed_encoder",
        "graphed_decoder",
    }
)


def _copy_state_row(src: Any, i: int, dst: Any, j: int) -> None:
    """Copy row ``i`` of one upstream streaming state into row ``j`` of another of the same module (in place, so
    tensors captured by upstream's CUDA graphs stay valid)."""
    dst.exec_mask[j] = src.exec_mask[i]  # set in State.__post_init__, not a dataclass field
    for f in dataclasses.fields(src):
        value = getattr(src, f.name)
        target = getattr(dst, f.name)
        if value is None:  # e.g. no KV cache (cross-attention), no conditioning
            continue
        if isinstance(value, RingKVCache):
            # cache is (2 [k, v], B, heads, capacity, dim): the batch is dim 1. Positions in the ring follow each
            # row's end_offset, so the row's whole ring and its end_offset travel together.
            if not value.respect_exec_mask:
                raise RuntimeError("a KV cache without per-row offsets cannot move rows")
            target.cache[:, j].copy_(value.cache[:, i])
            target.end_offset[j] = value.end_offset[i]
        elif f.name in _ROW_FIELDS:
            target[j].copy_(value[i])
        elif f.name not in _SHARED_FIELDS:
            raise RuntimeError(f"unknown upstream streaming state {type(src).__name__}.{f.name}: cannot move a row")


class FloorTracker:
    """Per-row floor control state (see the module docstring) for ``rows`` rows."""

    IDLE = SPEAK_HANGOVER_FRAMES + 2
    """Counter value meaning "long ago" (counters saturate there)."""

    def __init__(self, rows: int, pad_ids: frozenset[int], device: torch.device | str = "cpu") -> None:
        self.pad_ids = torch.tensor(sorted(pad_ids), dtype=torch.long, device=device)
        self.since_word = torch.full((rows,), self.IDLE, dtype=torch.long, device=device)
        """Frames since the last word token (0 = this frame)."""
        self.since_voiced = torch.full((rows,), self.IDLE, dtype=torch.long, device=device)
        """Frames since the last voiced input frame (0 = this frame)."""

    def update(self, text: Tensor, voiced: Tensor, active: Tensor) -> Tensor:
        """One frame: text tokens (n,) (negative = none yet), voiced input (n,) bool, active rows (n,) bool →
        floor control (n,) long; inactive rows keep their state and read LISTEN."""
        word = (text >= 0) & ~torch.isin(text, self.pad_ids)
        since_word = torch.where(word, 0, (self.since_word + 1).clamp(max=self.IDLE))
        since_voiced = torch.where(voiced, 0, (self.since_voiced + 1).clamp(max=self.IDLE))
        self.since_word = torch.where(active, since_word, self.since_word)
        self.since_voiced = torch.where(active, since_voiced, self.since_voiced)
        turn_end = since_word == SPEAK_HANGOVER_FRAMES + 1
        barged_in = since_voiced <= SPEAK_HANGOVER_FRAMES
        control = torch.full_like(text, Floor.LISTEN)
        control = torch.where(since_word <= SPEAK_HANGOVER_FRAMES, Floor.SPEAK, control)
        control = torch.where(turn_end & barged_in, Floor.YIELD, control)
        return torch.where(active, control, Floor.LISTEN)

    def copy_row(self, i: int, dst: FloorTracker, j: int) -> None:
        dst.since_word[j] = self.since_word[i]
        dst.since_voiced[j] = self.since_voiced[i]

    def reset(self, row: int) -> None:
        self.since_word[row] = self.IDLE
        self.since_voiced[row] = self.IDLE


@dataclasses.dataclass(eq=False)
class _Block:
    """The upstream streaming state of one contiguous slot range, as ``get_streaming_state`` returns it."""

    start: int
    rows: int
    mimi: dict[str, Any]
    """Mimi's whole tree: SEANet encoder and decoder convolutions, both transformers, the resamplers."""
    gen: dict[str, Any]
    """``LMGen``'s own state (delayed-token cache, per-row offsets); the LM is detached from it."""
    lm: dict[str, Any]
    """The LM's tree: per layer the KV ring and offsets (the depformer restarts each step, so has none)."""
    floor: FloorTracker


@dataclasses.dataclass(eq=False)
class PrefillJob:
    """One session's prompt prefill in progress (``MoshiServed.prefill_start``)."""

    prompt: SessionPrompt
    block: _Block
    """The one-row staging block the pieces feed."""
    pieces: tuple[PrefillPiece, ...]
    done: int = 0
    """Pieces run so far."""


class MoshiSlots:
    """``SlotStates`` for a ``MoshiServed``: one upstream streaming state per slot block the engine steps.

    Each slot lives at one row of one block (its "home"); a slot no block holds yet is a fresh stream. A step
    over a slot range with no block of its own creates it and brings in the slots homed elsewhere, and a move
    to a slot no block holds gives that slot a one-row block until a step takes it in."""

    def __init__(self, served: MoshiServed, slots: int) -> None:
        self.served = served
        self.slots = slots
        self._blocks: dict[tuple[int, int], _Block] = {}
        self._home: dict[int, tuple[_Block, int]] = {}
        self.sampling = [served.default_sampling] * slots
        """Per slot, how it samples (``MoshiServed.set_sampling``; the engine's settings after a reset)."""

    def block(self, rows: slice) -> _Block:
        """The block of the slot range ``rows`` (created on first use), with its slots brought in: those homed
        in another block since (a step over a sub-range, a move) are copied back."""
        start, stop, stride = rows.indices(self.slots)
        if stride != 1 or stop <= start:
            raise ModelError(f"rows={rows} must be a non-empty contiguous range of the {self.slots} slots")
        block = self._blocks.get((start, stop))
        if block is None:
            block = self._blocks[(start, stop)] = self.served._new_block(start, stop - start)
        moved = False
        for slot in range(start, stop):
            home = self._home.get(slot)
            if home is not None and home[0] is block:
                continue
            if home is not None:
                self.served._copy_row(home[0], home[1], block, slot - start)
            self._home[slot] = (block, slot - start)
            moved = True
        if moved:
            self._prune()
        return block

    def move(self, src: int, dst: int) -> None:
        self._check(src)
        self._check(dst)
        if src == dst:
            return
        sampling = self.sampling[src]
        self._move(src, dst)
        self.sampling[dst] = sampling

    def _move(self, src: int, dst: int) -> None:
        home = self._home.get(src)
        if home is None:  # src was never stepped: a fresh stream
            self.reset(dst)
            return
        target = self._home.get(dst)
        if target is None:
            staging = self.served._new_block(dst, 1)
            self._blocks[(dst, dst + 1)] = staging
            target = self._home[dst] = (staging, 0)
        self.served._copy_row(home[0], home[1], target[0], target[1])
        self._prune()

    def install(self, block: _Block, slot: int) -> None:
        """Make the one-row ``block`` (a prefilled staging block) the state of ``slot``."""
        self._check(slot)
        target = self._home.get(slot)
        if target is None:
            self._blocks[(slot, slot + 1)] = block
            self._home[slot] = (block, 0)
        else:
            self.served._copy_row(block, 0, target[0], target[1])
        self._prune()

    def reset(self, slot: int) -> None:
        self._check(slot)
        self.sampling[slot] = self.served.default_sampling
        home = self._home.get(slot)
        if home is not None:
            self.served._reset_row(home[0], home[1])

    def _check(self, slot: int) -> None:
        if not 0 <= slot < self.slots:
            raise ModelError(f"slot {slot} is outside the {self.slots} slots")

    def _prune(self) -> None:
        """Drop the blocks no slot lives in any more (superseded by a larger or realigned block)."""
        used = {id(block) for block, _ in self._home.values()}
        for key in [k for k, b in self._blocks.items() if id(b) not in used]:
            del self._blocks[key]


class MoshiTextDecoder:
    """SentencePiece pieces → text: "▁" marks a word start (a space); padding and control ids give nothing.
    Moshi's text stream has no end-of-text token, so no delta is final."""

    def __init__(self, tokenizer: Any, skip_ids: frozenset[int]) -> None:
        self.tokenizer = tokenizer
        self.skip_ids = skip_ids
        self.size = int(tokenizer.get_piece_size())
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, tokens: list[int]) -> tuple[str, bool]:
        out: list[str] = []
        for t in tokens:
            if t < 0 or t >= self.size or t in self.skip_ids:
                continue
            if self.tokenizer.is_control(t) or self.tokenizer.is_unknown(t):
                continue
            if self.tokenizer.is_byte(t):  # byte-fallback piece "<0xAB>"
                out.append(self.utf8.decode(bytes([int(self.tokenizer.id_to_piece(t)[3:5], 16)])))
                continue
            out.append(self.utf8.decode(b"", final=True))
            out.append(str(self.tokenizer.id_to_piece(t)).replace("▁", " "))
        return "".join(out), False


class MoshiServed:
    """``ServedModel`` for a Moshi-family checkpoint, on upstream ``LMGen`` and Mimi.

    ``temperature`` 0 is greedy decoding of text and audio (upstream ``use_sampling=False``); otherwise it is
    the sampling temperature of both, with ``top_k`` for audio and ``TOP_K_TEXT`` for text: the engine's
    settings, which a session may replace with its own (``sampling_for``, ``set_sampling``)."""

    def __init__(
        self,
        ckpt: MoshiCheckpoint,
        temperature: float = 0.0,
        top_k: int = 250,
        device: torch.device | str | None = None,
    ) -> None:
        if temperature < 0:
            raise ModelError(f"temperature={temperature} must be >= 0")
        self.ckpt = ckpt
        lm, mimi = ckpt.lm, ckpt.mimi
        self.device = torch.device(device) if device is not None else next(lm.parameters()).device
        self.lm = lm.to(self.device).eval()
        self.mimi = mimi.to(self.device).eval()
        self._validate()
        self.gen = LMGen(self.lm, **self._generator_options(temperature, top_k))
        self.default_sampling = RowSampling(float(temperature), int(top_k))
        """How a session samples unless it asks otherwise (``sampling_for``)."""
        self._forced: Tensor | None = None
        """Text tokens forced in the frame being stepped, per row (-1 = none)."""
        self.gen.on_text_hook = self._force_text
        self._streams = UserStreams(self.gen)
        """The audio hook: the user's codes into a two-stream depformer's output (PersonaPlex)."""
        self.gen.on_audio_hook = self._streams
        self._model_q = int(self.lm.n_q) // 2 if self._streams.both else int(self.lm.dep_q)
        """Codebooks of the model's own stream (what Mimi decodes)."""
        self.prompts = PromptBuilder(ckpt, self.lm, self.mimi) if ckpt.family == "personaplex" else None
        """Session prompts (voice, persona): PersonaPlex only."""
        self.default_voice = ""
        self.default_prompt: SessionPrompt | None = None
        """What a session without a persona of its own is prefilled with (``set_default_prompt``)."""
        self.pad_ids = frozenset({int(self.lm.text_padding_token_id), int(self.lm.end_of_text_padding_id)})
        self.mimi_dtype = next(self.mimi.parameters()).dtype
        self._format = StreamFormat(
            family=ckpt.family,
            name=ckpt.name,
            sample_rate=int(self.mimi.sample_rate),
            frame_samples=int(self.mimi.frame_size),
            text_in_slots=1,
            text_pad=-1,
            typed_text=False,
        )

    def _generator_options(self, temperature: float, top_k: int) -> dict[str, Any]:
        """``LMGen``'s arguments (a conditioned family adds its guidance and conditions)."""
        return dict(
            use_sampling=temperature > 0,
            temp=temperature,
            temp_text=temperature,
            top_k=top_k,
            top_k_text=TOP_K_TEXT,
            # per-row readiness: without it LMGen's batch-wide step counter makes a reset stall every row
            support_out_of_sync=True,
        )

    def _check_conditioning(self) -> None:
        """Conditioned checkpoints are served by their family's subclass (Hibiki: ``hibiki.HibikiServed``)."""
        if self.lm.fuser is not None or self.lm.condition_provider is not None:
            raise ModelError(
                f"{self.ckpt.name}: a conditioned {self.ckpt.family} checkpoint; of the conditioned Moshi-family "
                "models only Hibiki (model_type: hibiki) is served"
            )

    def _validate(self) -> None:
        lm, mimi = self.lm, self.mimi
        if int(mimi.sample_rate) != 24000 or int(mimi.frame_size) != 1920:
            raise ModelError(
                f"{self.ckpt.name}: Mimi at {mimi.sample_rate} Hz with {mimi.frame_size}-sample frames; "
                "the moshi family serves 80 ms frames at 24 kHz"
            )
        self._check_conditioning()
        user_q = lm.n_q - lm.dep_q
        per_stream = lm.n_q // 2 if lm.dep_q == lm.n_q else max(user_q, lm.dep_q)
        if mimi.num_codebooks < per_stream:
            raise ModelError(f"{self.ckpt.name}: Mimi has {mimi.num_codebooks} codebooks, the LM needs {per_stream}")
        if lm.dep_q == lm.n_q and max(lm.delays) > 1:
            raise ModelError(f"{self.ckpt.name}: a two-stream depformer with delays over 1 is not served")
        # rows carry their own positions everywhere except in weights-per-step layers, which index their weights
        # by the batch-wide offset_cpu; the depformer has them but restarts every step
        for module in [*lm.transformer.modules(), *mimi.modules()]:
            if isinstance(module, StreamingMultiheadAttention) and module.weights_per_step:
                raise ModelError(f"{self.ckpt.name}: weights-per-step attention outside the depformer")

    # --- ServedModel --------------------------------------------------------------------------------------

    @property
    def format(self) -> StreamFormat:
        return self._format

    def frames_per_chunk(self, chunk_ms: int) -> int:
        if chunk_ms not in CHUNKS_MS:
            allowed = ", ".join(str(c) for c in CHUNKS_MS)
            raise ModelError(f"chunk_ms={chunk_ms}: the moshi family takes chunks of {allowed} ms (80 ms frames)")
        return round(chunk_ms / self._format.frame_ms)

    def new_slots(self, slots: int) -> MoshiSlots:
        if slots < 1:
            raise ModelError(f"slots={slots} must be >= 1")
        return MoshiSlots(self, slots)

    @torch.no_grad()
    def step(
        self,
        state: MoshiSlots,
        audio: Tensor,
        rows: slice,
        active: Tensor | None = None,
        text_in: Tensor | None = None,
        video: Tensor | None = None,
        video_rows: Tensor | None = None,
        batch_invariant: bool = False,
    ) -> FamilyStep:
        """One chunk for the slot block ``rows`` (see ``ServedModel.step``); ``batch_invariant`` as in the module
        docstring (CPU only)."""
        if video is not None or video_rows is not None:
            raise ModelError("the moshi family takes no video")
        block = state.block(rows)
        n, S = block.rows, self._format.frame_samples
        if audio.dim() != 2 or audio.shape[0] != n or audio.shape[1] == 0 or audio.shape[1] % S:
            raise ModelError(f"audio {tuple(audio.shape)} must be ({n}, F*{S})")
        frames = audio.shape[1] // S
        if text_in is not None and tuple(text_in.shape) != (n, frames, 1):
            raise ModelError(f"text_in {tuple(text_in.shape)} must be ({n}, {frames}, 1)")
        if active is None:
            act = torch.ones(n, dtype=torch.bool, device=self.device)
        else:
            if tuple(active.shape) != (n,):
                raise ModelError(f"active {tuple(active.shape)} must be ({n},)")
            act = active.to(self.device, torch.bool)
        x = audio.to(self.device, torch.float32)
        control = torch.full((n, frames), Floor.LISTEN, dtype=torch.long, device=self.device)
        wave = torch.zeros(n, frames * S, dtype=torch.float32, device=self.device)
        text_tok = torch.full((n, frames), -2, dtype=torch.long, device=self.device)
        with ExitStack() as stack:
            stack.enter_context(self._swapped_in(block))
            stack.enter_context(invariant_kernels(batch_invariant, self.device))
            sampling = state.sampling[block.start : block.start + n]
            stack.enter_context(row_sampling(self.gen, sampling, self.default_sampling, TOP_K_TEXT))
            if self.device.type == "cpu":  # upstream's lazy torch.compile (rope, gating) wants a C toolchain
                stack.enter_context(no_compile())
            for f in range(frames):
                frame = x[:, f * S : (f + 1) * S]
                codes = self._encode(block, frame, act)  # (n, K, 1)
                self.gen.set_exec_mask(act)  # LMGen forwards it to the LM (its reset / exec-mask callbacks)
                self._forced = None if text_in is None else text_in[:, f, 0].to(self.device)
                self._streams.provide(codes[:, : self._model_q, 0])  # a two-stream depformer's user input
                tokens = self.gen.step(codes)  # (n, 1+dep_q, 1); -2 (ungenerated) where a row is not ready
                if tokens is None:  # only without support_out_of_sync
                    tokens = torch.full((n, 1 + self.lm.dep_q, 1), -2, dtype=torch.long, device=self.device)
                tok = tokens[:, :, 0]
                tok = tok[:, : 1 + self._model_q]  # text and the model's stream (a two-stream depformer: both)
                ready = act & (tok[:, 1:] >= 0).all(dim=1)
                if bool(ready.any()):
                    # the decoder advances only for rows that produced audio (a fresh stream's decoder first
                    # sees its first generated frame, as upstream's loop, which skips decoding until then)
                    self.mimi.set_exec_mask(ready)
                    pcm = self.mimi.decode(tok[:, 1:, None].clamp(min=0))[:, 0].float()
                    wave[:, f * S : (f + 1) * S] = torch.where(ready[:, None], pcm, 0.0)
                voiced = voiced_frames(frame, S)[:, 0]
                control[:, f] = block.floor.update(tok[:, 0], voiced, act)
                text_tok[:, f] = torch.where(act, tok[:, 0], -2)
                self._after_frame(block, tok[:, 0], act)
        text = [[t for t in row if t >= 0] for row in text_tok.tolist()]
        return FamilyStep(control=control, text=text, wave=wave.clamp(-1.0, 1.0), done=self._done(block, act))

    def _encode(self, block: _Block, frame: Tensor, active: Tensor) -> Tensor:
        """One frame of the rows' input audio (n, S) → their codes (n, K, 1) (Mimi advances the active rows)."""
        self.mimi.set_exec_mask(active)
        return self.mimi.encode(frame[:, None, :].to(self.mimi_dtype))  # type: ignore[no-any-return]

    def _after_frame(self, block: _Block, text: Tensor, active: Tensor) -> None:
        """Each frame's text tokens (n,) (negative = none yet), for a family that follows them (no-op here)."""

    def _done(self, block: _Block, active: Tensor) -> Tensor | None:
        """Rows whose output is over after their input ended (None: the family stops with its input)."""
        return None

    def session_prompt(self, voice: str, persona: str) -> SessionPrompt:
        """A session's voice (a name of the checkpoint's ``voices/``) and persona, checked and tokenised;
        ``ModelError`` naming what is wrong (an unknown voice, a family with no prompt, too long a persona)."""
        if self.prompts is None:
            raise ModelError(
                f"{self.ckpt.name}: the {self.ckpt.family} family takes no voice or persona (PersonaPlex does)"
            )
        return self.prompts.build(voice, persona)

    def set_default_prompt(self, voice: str, persona: str) -> None:
        """The model's default voice and persona (``ModelSource.voice``/``persona``), checked now."""
        self.default_prompt = self.session_prompt(voice, persona) if voice or persona else None
        self.default_voice = voice

    def prompt_for(self, voice: str, persona: str) -> SessionPrompt | None:
        """A session's prompt: its own voice and persona (its instructions) where it gives them, the model's
        defaults (``set_default_prompt``) where not; None = no prompt."""
        if not voice and not persona:
            return self.default_prompt
        default_persona = "" if self.default_prompt is None else self.default_prompt.persona
        return self.session_prompt(voice or self.default_voice, persona or default_persona)

    def prefill_start(self, state: MoshiSlots, slot: int, prompt: SessionPrompt) -> PrefillJob:
        """A resumable prefill of ``prompt`` for ``slot``: a fresh one-row staging block and the pieces to feed
        it (``prefill_piece`` runs them). Dropping the job before it is done frees its staging block; the slot
        is left as it was."""
        state._check(slot)
        return PrefillJob(prompt, self._new_block(slot, 1), prefill_pieces(prompt))

    @torch.no_grad()
    def prefill_piece(self, state: MoshiSlots, job: PrefillJob, slot: int, batch_invariant: bool = False) -> bool:
        """Run ``job``'s next piece on its staging block (no other row is touched); after the last one the staging
        row becomes the state of ``slot`` (where the session lives now). True = the prefill is done."""
        state._check(slot)
        if job.done >= len(job.pieces):
            raise RuntimeError("the prefill is already done")
        with ExitStack() as stack:
            stack.enter_context(self._swapped_in(job.block))
            stack.enter_context(invariant_kernels(batch_invariant, self.device))
            stack.enter_context(row_sampling(self.gen, [state.sampling[slot]], self.default_sampling, TOP_K_TEXT))
            if self.device.type == "cpu":
                stack.enter_context(no_compile())
            self._forced = None
            run_piece(self.lm, self.gen, self._streams, job.prompt, job.pieces[job.done])
        job.done += 1
        if job.done < len(job.pieces):
            return False
        state.install(job.block, slot)
        return True

    def prefill(self, state: MoshiSlots, slot: int, prompt: SessionPrompt, batch_invariant: bool = False) -> None:
        """Make ``slot`` a fresh session that has consumed ``prompt`` in one go (``prompt.model_steps`` model steps,
        run on a one-row staging block: no other row is touched)."""
        job = self.prefill_start(state, slot, prompt)
        while not self.prefill_piece(state, job, slot, batch_invariant):
            pass

    def sampling_for(self, temperature: float | None, top_k: int | None) -> RowSampling:
        """A session's own sampling settings over the engine's (None = the engine's); ``ModelError`` naming the
        field (a temperature outside 0–5, a top-k outside 1 to the model's audio codebook size)."""
        return check_sampling(temperature, top_k, self.default_sampling, int(self.lm.card))

    def set_sampling(self, state: MoshiSlots, slot: int, sampling: RowSampling) -> None:
        """``slot`` samples with ``sampling`` until it is reset (it moves with the session)."""
        state._check(slot)
        state.sampling[slot] = sampling

    def encode_text(self, text: str) -> list[int]:
        """Text as the model's own text tokens, to be forced into its text stream (one per frame)."""
        return [int(t) for t in self.ckpt.text_tokenizer.encode(text)]

    def _force_text(self, text_token: Tensor) -> None:
        """Upstream's text hook: replace the sampled text token, in place, where a token is forced this frame
        (the depformer then voices it and it enters the delayed-token cache, as if the model had said it)."""
        if self._forced is not None:
            text_token.copy_(torch.where(self._forced >= 0, self._forced, text_token))

    def text_decoder(self) -> MoshiTextDecoder:
        return MoshiTextDecoder(self.ckpt.text_tokenizer, self.pad_ids)

    # --- upstream streaming state ------------------------------------------------------------------------

    def _modules(self) -> tuple[Any, Any, Any]:
        # LMGen detaches the LM from its streaming tree (set_streaming_detached), so the LM's state is separate
        return self.mimi, self.gen, self.lm

    def _check_idle(self) -> None:
        for module in self._modules():
            if module.is_streaming:
                raise RuntimeError(f"{type(module).__name__} is already streaming outside MoshiServed")

    @contextmanager
    def _swapped_in(self, block: _Block) -> Iterator[None]:
        """Install ``block``'s streaming state in the shared upstream modules for the duration."""
        self._check_idle()
        states = (block.mimi, block.gen, block.lm)
        try:
            for module, st in zip(self._modules(), states, strict=True):
                module.set_streaming_state(st)
            yield
        finally:
            for module, st in zip(self._modules(), states, strict=True):
                module.set_streaming_state(dict.fromkeys(st))

    def _new_block(self, start: int, rows: int) -> _Block:
        self._check_idle()
        # streaming(B) starts streaming at once (the ExitStack it returns only stops it, which detaching the
        # states here does instead); LMGen's state enters the LM's streaming itself
        self.mimi.streaming(rows)
        self.gen.streaming(rows)
        try:
            mimi, gen, lm = (module.get_streaming_state() for module in self._modules())
        finally:
            for module in self._modules():
                module.set_streaming_state(dict.fromkeys(module.get_streaming_state()))
        return _Block(start, rows, mimi, gen, lm, FloorTracker(rows, self.pad_ids, self.device))

    def _copy_row(self, src: _Block, i: int, dst: _Block, j: int) -> None:
        if src is dst and i == j:
            return
        for a, b in ((src.mimi, dst.mimi), (src.gen, dst.gen), (src.lm, dst.lm)):
            for name, st in a.items():
                _copy_state_row(st, i, b[name], j)
        src.floor.copy_row(i, dst.floor, j)

    def _reset_row(self, block: _Block, row: int) -> None:
        mask = torch.zeros(block.rows, dtype=torch.bool, device=self.device)
        mask[row] = True
        with self._swapped_in(block):
            self.mimi.reset_streaming(mask)
            self.gen.reset_streaming(mask)  # LMGen's reset callback resets the LM's rows too
        block.floor.reset(row)
