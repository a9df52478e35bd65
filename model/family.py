"""The one interface between the engine and a model family.

The engine (planner → executor → output stage) knows nothing of what it serves beyond this module: a
``ServedModel`` says its stream format, keeps per-slot streaming state (``SlotStates``: move a slot, reset a
slot), steps a contiguous block of slots under one execution mask and hands back plain per-frame decisions,
text tokens and audio. Each family turns its own text tokens into text (``TextDecoder``) and typed text into
its own input tokens (``encode_text``).

Families: ``duplex`` (this repository's early-fusion model, ``family_duplex.py``) and the Moshi family —
Kyutai's Moshi, NVIDIA's PersonaPlex and Kyutai's Hibiki, served with the upstream ``moshi`` package
(``duplex.model.moshi``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from torch import Tensor

FamilyName = Literal["duplex", "moshi", "personaplex", "hibiki"]


class Floor(IntEnum):
    """Per-frame floor control, the model's own decision (names and values equal ``duplex.v1.FloorControl``'s,
    which a test checks; the model never imports the wire contract)."""

    LISTEN = 0
    SPEAK = 1
    BACKCHANNEL = 2
    YIELD = 3


@dataclass(frozen=True)
class StreamFormat:
    """What a client must send and will receive."""

    family: FamilyName
    """Model family (``duplex``, ``moshi``, ``personaplex``, ``hibiki``)."""
    name: str
    """The model's name (served model name unless the engine spec overrides it)."""
    sample_rate: int
    """PCM16 mono rate of input and output audio."""
    frame_samples: int
    """Samples per model frame (the smallest step of the model)."""
    text_in_slots: int = 0
    """Text-input tokens the model takes per frame (0 = none)."""
    text_pad: int = 0
    """The text-input token that means "nothing" in a slot."""
    typed_text: bool = True
    """Whether clients may type text to the model (``TextInput``, ``SessionStart.instructions``). A family
    whose text input is its own text stream (Moshi) takes only the agent's results there, as forced text."""
    video_size: int = 0
    """Side of the square video frames it takes (0 = no video)."""
    continues_after_input: bool = False
    """Whether the model goes on after its client's input ends (Hibiki translates what it has heard): the
    engine then marks the slot's input ended (``InputEnds.end_input``), feeds silence and ends the session
    when a step says the row is done (``FamilyStep.done``). Otherwise a session ends with its last chunk."""

    @property
    def frame_ms(self) -> float:
        return 1000.0 * self.frame_samples / self.sample_rate


class SlotStates(Protocol):
    """Per-slot streaming state of the model and its codec, for ``slots`` rows."""

    def move(self, src: int, dst: int) -> None:
        """Copy slot ``src``'s state into slot ``dst`` (``src`` is left as it was)."""

    def reset(self, slot: int) -> None:
        """Make ``slot`` a fresh session."""


@runtime_checkable
class InputEnds(Protocol):
    """Slot states of a family that goes on after its input (``StreamFormat.continues_after_input``)."""

    def end_input(self, slot: int) -> None:
        """The client of ``slot`` sent its last chunk: the slot's next steps are the model's own tail."""


@dataclass(frozen=True)
class FamilyStep:
    """What one step produced for the ``n`` rows of its slot block (inactive rows included)."""

    control: Tensor
    """(n, F) long: floor control per frame (``Floor``)."""
    text: list[list[int]]
    """Per row, the model's text tokens of this step (family-specific ids; ``TextDecoder`` reads them)."""
    wave: Tensor
    """(n, F*frame_samples) float32 in [-1, 1]: the model's audio."""
    done: Tensor | None = None
    """(n,) bool, families that go on after their input (``StreamFormat.continues_after_input``): rows whose
    output is over since their input ended (inactive rows: False). None: no row is."""


class TextDecoder(Protocol):
    """One session's incremental text: the model's text tokens → printable text."""

    def feed(self, tokens: list[int]) -> tuple[str, bool]:
        """Text completed by these tokens, and whether the model ended its text (a final delta)."""


@runtime_checkable
class Prompted(Protocol):
    """A family whose sessions start with a prompt prefilled into their slot (PersonaPlex: voice and persona)."""

    def prompt_for(self, voice: str, persona: str) -> object | None:
        """The prompt of a session with this voice and persona (instructions); "" = the model's default, None =
        no prompt. Raises ``ModelError`` naming what is wrong."""
        ...

    def prefill_start(self, state: Any, slot: int, prompt: Any) -> object:
        """A resumable prefill job of ``prompt`` for ``slot``, on state of its own (no slot changes yet).
        Dropping the job before it is done cancels it and frees that state."""
        ...

    def prefill_piece(self, state: Any, job: Any, slot: int, batch_invariant: bool = False) -> bool:
        """Run ``job``'s next piece, touching no slot; after the last one ``slot`` (where the session lives now)
        is a fresh session that has consumed the prompt. True = done. The engine runs at most one piece between
        two steps, so a long prompt delays the other sessions' steps by one piece at a time."""
        ...


@runtime_checkable
class SessionSampling(Protocol):
    """A family whose sessions may sample with their own temperature and top-k (the Moshi family)."""

    def sampling_for(self, temperature: float | None, top_k: int | None) -> object:
        """A session's settings (None = the model's); raises ``ModelError`` whose message starts with the field
        (``temperature``, ``top_k``)."""
        ...

    def set_sampling(self, state: Any, slot: int, sampling: Any) -> None:
        """``slot`` (just reset) samples with ``sampling`` until its next reset."""
        ...


S = TypeVar("S", bound=SlotStates)


class ServedModel(Protocol[S]):
    """A model family as the engine serves it; ``S`` is its per-slot state type."""

    @property
    def format(self) -> StreamFormat: ...

    def frames_per_chunk(self, chunk_ms: int) -> int:
        """Frames in a chunk of ``chunk_ms``; raises ``ModelError`` naming the allowed values otherwise."""
        ...

    def new_slots(self, slots: int) -> S:
        """Fresh streaming state for ``slots`` rows."""
        ...

    def step(
        self,
        state: S,
        audio: Tensor,
        rows: slice,
        active: Tensor | None = None,
        text_in: Tensor | None = None,
        video: Tensor | None = None,
        video_rows: Tensor | None = None,
        batch_invariant: bool = False,
    ) -> FamilyStep:
        """Advance the slots ``rows`` by one chunk each: audio (n, F*frame_samples) float in [-1, 1].

        ``active`` (n,) bool: rows that really have a chunk now; an inactive row's state is left exactly as it
        was (None = all active). ``text_in`` (n, F, text_in_slots) input tokens (families with typed text);
        ``video`` (K, 3, V, V) frames for the rows ``video_rows``."""
        ...

    def encode_text(self, text: str) -> list[int]:
        """Text (typed by a client where ``format.typed_text``, or an agent's result) → input tokens for
        ``step``'s ``text_in``."""
        ...

    def text_decoder(self) -> TextDecoder:
        """A fresh per-session text decoder."""
        ...
