"""The ``duplex`` family behind the engine's ``ServedModel`` interface: this repository's early-fusion model and
its reference codec, stepped under one execution mask (rows a step leaves inactive are computed but nothing of
them is committed, in the model and in the codec alike)."""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from .codec import Codec, CodecState
from .family import FamilyStep, Floor, StreamFormat
from .model import DuplexModel
from .state import StreamState


@dataclass
class DuplexSlots:
    """The model's and the codec's per-slot streaming state."""

    model: StreamState
    codec: CodecState

    def move(self, src: int, dst: int) -> None:
        self.model.move(src, dst)
        self.codec.move(src, dst)

    def reset(self, slot: int) -> None:
        self.model.reset(slot)
        self.codec.reset(slot)


class ByteTextDecoder:
    """The model's text tokens are UTF-8 bytes (values < 256), an end-of-text token and, for a model with word
    tokens (``ModelConfig.word_tokens``), one token per TimeSpeak word, decoded as the word."""

    def __init__(self, eot_token: int, words: Mapping[int, str] | None = None) -> None:
        self.eot_token = eot_token
        self.words = dict(words or {})
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, tokens: list[int]) -> tuple[str, bool]:
        final = self.eot_token in tokens
        text: list[str] = []
        piece = bytearray()
        for t in tokens:
            if t < 256:
                piece.append(t)
            elif t in self.words:  # a whole word: bytes before it that end mid-character are broken
                text += [self.utf8.decode(bytes(piece), final=True), self.words[t]]
                piece.clear()
        if not text and not piece and not final:
            return "", False
        return "".join(text) + self.utf8.decode(bytes(piece), final=final), final


class DuplexServed:
    """``ServedModel`` for a ``DuplexModel`` (rank 0 of its replica) and its ``Codec``."""

    def __init__(self, model: DuplexModel, name: str = "") -> None:
        self.model = model
        self.cfg = model.cfg
        self.codec = Codec(self.cfg)
        self._format = StreamFormat(
            family="duplex",
            name=name or self.cfg.name,
            sample_rate=self.cfg.sample_rate,
            frame_samples=self.cfg.frame_samples,
            text_in_slots=self.cfg.text_in_slots,
            text_pad=self.cfg.pad_token,
            video_size=self.cfg.video_size,
        )

    @property
    def format(self) -> StreamFormat:
        return self._format

    def frames_per_chunk(self, chunk_ms: int) -> int:
        return self.cfg.frames_per_chunk(chunk_ms)

    def new_slots(self, slots: int) -> DuplexSlots:
        return DuplexSlots(self.model.new_state(slots), self.codec.new_state(slots))

    def step(
        self,
        state: DuplexSlots,
        audio: Tensor,
        rows: slice,
        active: Tensor | None = None,
        text_in: Tensor | None = None,
        video: Tensor | None = None,
        video_rows: Tensor | None = None,
        batch_invariant: bool = False,
    ) -> FamilyStep:
        out = self.model.step(
            state.model,
            audio,
            rows=rows,
            active=active,
            text_in=text_in,
            video=video,
            video_rows=video_rows,
            batch_invariant=batch_invariant,
        )
        speaking = (out.control == Floor.SPEAK) | (out.control == Floor.BACKCHANNEL)
        codes = torch.where(speaking, out.audio_codes, 0)  # listen/yield frames decode as silence
        wave = self.codec.decode(codes, state.codec, rows=rows, active=active)
        return FamilyStep(out.control, out.text_tokens.tolist(), wave)

    def encode_text(self, text: str) -> list[int]:
        return list(text.encode())

    def text_decoder(self) -> ByteTextDecoder:
        return ByteTextDecoder(self.cfg.eot_token, self.cfg.word_tokens)
