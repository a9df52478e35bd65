"""Model configuration and presets.

One typed config describes the whole early-fusion streaming MoE model. Everything else — the module
shapes, the analytic parameter count, the size planner, the checkpoint metadata — is derived from it.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .timespeak import WORDS


class ModelError(ValueError):
    """Bad input to the model package: the message names the field or tensor that is wrong."""


class ModelConfig(BaseModel):
    """Shape of a duplex model. Frozen: a config is a value, shared by model, checkpoint and planner."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    name: str = "custom"
    """Preset name this config came from (informational)."""

    # --- audio / time axis -------------------------------------------------------------------------
    sample_rate: int = Field(16000, ge=8000, le=48000)
    """Input and output audio sample rate (Hz). Input is PCM16 mono at this rate."""
    frame_ms: int = Field(40, ge=10, le=200)
    """One sequence position per audio frame of this many milliseconds."""
    feedback_delay_frames: int = Field(5, ge=1, le=32)
    """The model sees its own outputs (audio code, text, control) this many frames late. Because of it a
    whole chunk of up to this many frames is computed in ONE forward pass; larger chunks run as sub-steps."""

    # --- transformer -------------------------------------------------------------------------------
    d_model: int = Field(256, ge=8)
    """Residual stream width."""
    n_layers: int = Field(4, ge=1)
    """Transformer blocks."""
    n_heads: int = Field(4, ge=1)
    """Query heads."""
    n_kv_heads: int = Field(2, ge=1)
    """Key/value heads (grouped-query attention); must divide n_heads."""
    window: int = Field(320, ge=8)
    """Attention window in frames: each position attends to itself and the window-1 before it. It bounds
    the KV cache, so a session of any length holds constant memory."""
    rope_theta: float = 10000.0
    """Rotary embedding base."""

    # --- mixture of experts -----------------------------------------------------------------------
    n_experts: int = Field(8, ge=1)
    """Routed experts per MoE layer."""
    top_k: int = Field(2, ge=1)
    """Experts each token is routed to."""
    expert_hidden: int = Field(256, ge=1)
    """Hidden width of each SwiGLU expert."""
    shared_expert_hidden: int = Field(256, ge=0)
    """Hidden width of the always-on shared expert (0 = none)."""
    router_aux_loss_coef: float = Field(0.01, ge=0.0)
    """Weight of the load-balancing auxiliary loss during training."""

    # --- vocabularies and inputs ------------------------------------------------------------------
    audio_codes: int = Field(1024, ge=2)
    """Model audio codes per frame (the codec's codebook size). Code 0 is silence."""
    text_vocab: int = Field(260, ge=4)
    """Text tokens: bytes 0-255, then PAD=256, EOT=257, two reserved, then the ``text_words`` word tokens
    (260, 261, …). Larger vocabularies are allowed for planning presets."""
    text_words: int = Field(0, ge=0, le=len(WORDS))
    """How many of the TimeSpeak words (``timespeak.WORDS``, in order) have a text token of their own (0 =
    none: all text is bytes). A word token is the whole word in one frame: a timed word the model says is one
    token at the frame its speech starts, which it reads back ``feedback_delay_frames`` later, instead of bytes
    it cannot see itself write (ids ``first_word_token`` + k; ``text_vocab`` must hold them)."""
    silent_codes: int = Field(64, ge=1)
    """Audio codes [0, silent_codes) are silence (the codec's energy-0 codes); see ``decide``."""
    control_classes: int = Field(4, ge=2)
    """Per-frame floor control: 0 listen, 1 speak, 2 backchannel, 3 yield (stopped for a barge-in)."""
    text_in_slots: int = Field(4, ge=0)
    """Typed-text / tool-result tokens the model can read per frame (0 disables text input)."""
    video_size: int = Field(32, ge=0)
    """Side of the square RGB video frame the patch projection takes (0 disables video)."""
    video_patch: int = Field(8, ge=1)
    """Patch side for the video projection."""
    agenda_words: int = Field(0, ge=0, le=64)
    """Words the model's agenda can hold (0 = no agenda). The agenda is the model's working memory for timed
    speech ("say go every four seconds"): per frame it writes three tokens — the pending word (0 = none), the
    period in seconds (0 = once) and a countdown to the due moment in units of ``agenda_unit_ms`` — and reads
    them back ``feedback_delay_frames`` later like its other outputs, so a timer outlives the attention window."""
    agenda_max_s: int = Field(30, ge=1, le=120)
    """Longest delay or period (seconds) the agenda counts down."""
    agenda_tally: int = Field(0, ge=0, le=64)
    """Largest count the agenda's fourth token, a tally of the actions seen so far in a video, holds (0 = no
    tally; needs ``agenda_words``): what lets the model answer "how many times did it jump?" about a clip
    longer than its window."""

    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Parameter dtype used by the planner and when loading for serving."""

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ModelError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads:
            raise ModelError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ModelError("head dimension d_model/n_heads must be even for rotary embeddings")
        if self.top_k > self.n_experts:
            raise ModelError(f"top_k ({self.top_k}) must not exceed n_experts ({self.n_experts})")
        if (self.sample_rate * self.frame_ms) % 1000:
            raise ModelError(f"frame_ms={self.frame_ms} is not a whole number of samples at {self.sample_rate} Hz")
        if self.video_size and self.video_size % self.video_patch:
            raise ModelError(f"video_size ({self.video_size}) must be a multiple of video_patch ({self.video_patch})")
        if self.agenda_tally and not self.agenda_words:
            raise ModelError("agenda_tally needs an agenda (agenda_words > 0)")
        if self.text_vocab < 258:
            raise ModelError(f"text_vocab ({self.text_vocab}) must hold 256 bytes + PAD + EOT")
        if self.text_words and self.text_vocab < self.first_word_token + self.text_words:
            raise ModelError(
                f"text_vocab ({self.text_vocab}) is too small for text_words={self.text_words}: the word tokens "
                f"take ids {self.first_word_token}..{self.first_word_token + self.text_words - 1}, so text_vocab "
                f"must be at least {self.first_word_token + self.text_words}"
            )
        return self

    # --- derived ------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def frame_samples(self) -> int:
        """Audio samples per frame (640 at 16 kHz / 40 ms)."""
        return self.sample_rate * self.frame_ms // 1000

    @property
    def cache_len(self) -> int:
        """KV ring-buffer length: the window plus the largest one-pass chunk, so that writing a chunk's
        keys never evicts a key an earlier query of the same chunk still needs."""
        return self.window + self.feedback_delay_frames

    @property
    def pad_token(self) -> int:
        return 256

    @property
    def eot_token(self) -> int:
        return 257

    @property
    def first_word_token(self) -> int:
        """Id of the first word token: after the 256 bytes, PAD, EOT and two reserved ids."""
        return 260

    def word_token(self, word: str) -> int | None:
        """The text token of ``word`` (one of ``timespeak.WORDS``), None when the model has no token for it."""
        k = WORDS.index(word) if word in WORDS else len(WORDS)
        return self.first_word_token + k if k < self.text_words else None

    def token_word(self, token: int) -> str | None:
        """The TimeSpeak word a text token stands for, None for a byte, PAD, EOT or any other id."""
        k = token - self.first_word_token
        return WORDS[k] if 0 <= k < self.text_words else None

    @property
    def word_tokens(self) -> dict[int, str]:
        """Each word token's id and the word it stands for ({} without word tokens)."""
        return {self.first_word_token + k: WORDS[k] for k in range(self.text_words)}

    @property
    def video_patches(self) -> int:
        return (self.video_size // self.video_patch) ** 2 if self.video_size else 0

    @property
    def dtype_bytes(self) -> int:
        return 4 if self.dtype == "float32" else 2

    @property
    def agenda_unit_ms(self) -> int:
        """One countdown step: the feedback delay, so each count the model reads back is one more than the
        count it writes (``count(t) = count(t - delay) - 1``)."""
        return self.frame_ms * self.feedback_delay_frames

    @property
    def agenda_classes(self) -> tuple[int, ...]:
        """Classes of the agenda's (word, period, countdown[, tally]) tokens; () without an agenda."""
        if not self.agenda_words:
            return ()
        timer = (self.agenda_words + 1, self.agenda_max_s + 1, self.agenda_max_s * 1000 // self.agenda_unit_ms + 1)
        return timer + ((self.agenda_tally + 1,) if self.agenda_tally else ())

    def frames_per_chunk(self, chunk_ms: int) -> int:
        """Frames in a chunk of ``chunk_ms``; the chunk must be a whole number of frames in 80–400 ms."""
        if not 80 <= chunk_ms <= 400:
            raise ModelError(f"chunk_ms={chunk_ms} is outside the supported 80–400 ms")
        if chunk_ms % self.frame_ms:
            raise ModelError(f"chunk_ms={chunk_ms} is not a multiple of frame_ms={self.frame_ms}")
        return chunk_ms // self.frame_ms

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.model_validate(json.loads(text))


PRESETS: dict[str, ModelConfig] = {
    # Sized from the measured step cost of 64 long (window-full) sessions on the 2-core CPU: the defaults
    # (d 256, 4 layers, 12.8 s window, 256-wide experts) cost 100-160 ms per full-ring step at 64 rows, about
    # twice the budget; this shape costs 0.43-0.45 of that (1 thread, random weights; docs/model-card.md).
    # 3.05 M parameters (1.72 M active); a 6.1 MB bfloat16 checkpoint.
    "tiny": ModelConfig(
        name="tiny",
        d_model=192,
        n_layers=3,
        window=160,
        expert_hidden=128,
        shared_expert_hidden=128,
    ),
    # A planning shape for the reference 276B-total / 12B-active system. Never instantiated here.
    "tml-interaction-small": ModelConfig(
        name="tml-interaction-small",
        d_model=6144,
        n_layers=48,
        n_heads=48,
        n_kv_heads=8,
        window=1500,
        n_experts=160,
        top_k=2,
        expert_hidden=1888,
        shared_expert_hidden=2176,
        audio_codes=2048,
        text_vocab=131072,
        text_in_slots=8,
        video_size=224,
        video_patch=14,
        feedback_delay_frames=5,
        dtype="bfloat16",
    ),
}


# ``tiny`` with an agenda for timed speech (TimeSpeak): 12 words, delays and periods up to 30 s, and a text token
# for each of the 12 words (ids 260..271).
PRESETS["tiny-timed"] = ModelConfig.model_validate(
    PRESETS["tiny"].model_dump() | {"name": "tiny-timed", "agenda_words": 12, "text_words": 12, "text_vocab": 272}
)


def get_preset(name: str) -> ModelConfig:
    """The preset called ``name``; a clear error listing the known presets otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise ModelError(f"unknown preset {name!r}; known presets: {known}") from None
