"""Corpus conversations → per-frame model inputs and training targets.

A conversation directory (written by ``duplex corpus make``) holds ``user.wav`` (what the microphone hears),
``model.wav`` (what a perfect full-duplex model says) and ``events.json`` on one time axis. Per 40 ms frame:

  control  listen, except: speak over every ``model_turn``, backchannel over every ``backchannel``, and
           yield for the first ``YIELD_FRAMES`` frames after the model stops for a ``barge_in``;
  audio    the reference codec's code for the model track's frame;
  text     the model's words, each word's bytes laid out from the frame its speech starts (one byte per
           frame, PAD elsewhere, EOT after a turn's last byte) — an inner monologue in step with the audio;
           a TimeSpeak ``timed_word`` is a turn of one word (speak, its bytes from its due moment, EOT);
  text_in  input, not target: the bytes of every ``typed_text`` event, ``text_in_slots`` per frame from its
           first frame, as the engine feeds a chunk's queued typed text.

Frames are assigned by their centre time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .audio_io import AudioFileError, read_wav
from .codec import Codec
from .config import ModelConfig, ModelError
from .family import Floor

YIELD_FRAMES = 3


@dataclass
class Conversation:
    id: str
    split: str
    user: Tensor
    """(T*S,) float32 microphone track, cut to whole frames."""
    model: Tensor
    """(T*S,) float32 target model track."""
    events: list[dict[str, Any]]
    user_clean: Tensor | None = None
    """(T*S,) the dry user speech (no noise, room or gain), when loaded."""

    @property
    def frames(self) -> int:
        return int(self.user.shape[0]) // 640


@dataclass
class Targets:
    control: Tensor
    """(T,) int64."""
    audio: Tensor
    """(T,) int64 codec codes."""
    text: Tensor
    """(T,) int64 bytes / PAD / EOT."""
    weight: Tensor
    """(T,) float32 per-frame weight of the control loss."""
    text_in: Tensor | None = None
    """(T, text_in_slots) int64 typed input bytes (PAD = none); None when the conversation has no typed text."""


def read_track(path: Path) -> Tensor:
    """A corpus track as float32 in [-1, 1); anything but 16 kHz mono PCM16 is an error, not converted."""
    try:
        wav = read_wav(path)
    except AudioFileError as e:
        raise ModelError(str(e)) from None
    if (wav.rate, wav.channels, wav.file.subtype) != (16000, 1, "PCM_16"):
        raise ModelError(f"{path}: expected 16 kHz mono PCM16, got {wav.file.describe()}")
    return torch.from_numpy(wav.samples.astype(np.float32) / 32768.0)


def load_conversation(directory: Path, frame_samples: int = 640, clean: bool = False) -> Conversation:
    doc = json.loads((directory / "events.json").read_text())
    user, model = read_track(directory / "user.wav"), read_track(directory / "model.wav")
    n = min(len(user), len(model)) // frame_samples * frame_samples
    dry = read_track(directory / "user_clean.wav")[:n] if clean and (directory / "user_clean.wav").is_file() else None
    return Conversation(doc["id"], doc.get("split", "?"), user[:n], model[:n], doc["events"], dry)


def split_ids(corpus: Path, split: str) -> list[str]:
    manifest_path = corpus / "manifest.json"
    if not manifest_path.is_file():
        raise ModelError(f"{corpus} is not a corpus: {manifest_path} is missing")
    manifest = json.loads(manifest_path.read_text())
    ids = [c["path"] for c in manifest["conversations"] if c["split"] == split]
    if not ids:
        raise ModelError(f"corpus {corpus} has no conversations in split {split!r}")
    return ids


def load_split(corpus: Path, split: str) -> list[Conversation]:
    return [load_conversation(corpus / cid) for cid in split_ids(corpus, split)]


def _frames(start: float, end: float, cfg: ModelConfig, total: int) -> slice:
    """Frames whose centre lies in [start, end)."""
    f = cfg.frame_ms / 1000
    return slice(max(0, int(np.ceil(start / f - 0.5))), min(total, int(np.ceil(end / f - 0.5))))


def targets(conv: Conversation, cfg: ModelConfig, codec: Codec) -> Targets:
    T = conv.frames
    control = torch.full((T,), Floor.LISTEN, dtype=torch.long)
    text = torch.full((T,), cfg.pad_token, dtype=torch.long)
    weight = torch.ones(T)
    f = cfg.frame_ms / 1000
    for ev in conv.events:
        kind = ev["type"]
        if kind in ("model_turn", "timed_word"):
            control[_frames(ev["start"], ev["end"], cfg, T)] = Floor.SPEAK
            _lay_out_words(text, ev.get("words", []), f, cfg.eot_token)
        elif kind == "backchannel":
            control[_frames(ev["start"], ev["end"], cfg, T)] = Floor.BACKCHANNEL
        elif kind == "pause":
            weight[_frames(ev["start"], ev["end"], cfg, T)] = 3.0  # must keep listening through a pause
    for ev in conv.events:
        if ev["type"] == "barge_in":
            stop = _frames(ev["model_stop"], ev["model_stop"] + YIELD_FRAMES * f, cfg, T)
            control[stop] = Floor.YIELD
            weight[_frames(ev["user_onset"], ev["model_stop"] + YIELD_FRAMES * f, cfg, T)] = 3.0
        elif ev["type"] == "user_turn_end":
            # the exact onset inside the short reply gap is arbitrary; do not punish it hard
            gap = _frames(ev["start"], ev["start"] + 0.3, cfg, T)
            weight[gap] = torch.minimum(weight[gap], torch.tensor(0.5))
    audio = codec.encode(conv.model[None])[0]
    return Targets(control, audio, text, weight, text_input(conv, cfg))


def _lay_out_words(text: Tensor, words: list[dict[str, Any]], frame_s: float, eot: int) -> None:
    """Each word's bytes from the frame its speech starts (after the previous word's), then EOT."""
    T = text.shape[0]
    cursor = 0
    for k, w in enumerate(words):
        data = (" " if k else "").encode() + w["word"].encode("utf-8", "replace")
        at = max(cursor, int(w["start"] / frame_s))
        for j, byte in enumerate(data):
            if at + j < T:
                text[at + j] = byte
        cursor = at + len(data)
    if cursor and cursor < T:
        text[cursor] = eot


def text_input(conv: Conversation, cfg: ModelConfig) -> Tensor | None:
    """(T, slots) typed bytes of the conversation's ``typed_text`` events, row-major from each event's first
    frame (the engine's layout of a chunk's text); None when it has none (or the model takes no text)."""
    typed = [e for e in conv.events if e["type"] == "typed_text"]
    if not typed or not cfg.text_in_slots:
        return None
    T, slots = conv.frames, cfg.text_in_slots
    flat = torch.full((T * slots,), cfg.pad_token, dtype=torch.long)
    for e in typed:
        data = torch.tensor(list(e["text"].encode()), dtype=torch.long)
        at = round(e["start_sample"] / cfg.frame_samples) * slots
        flat[at : at + len(data)] = data[: max(0, T * slots - at)]
    return flat.view(T, slots)
