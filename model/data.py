"""Corpus conversations → per-frame model inputs and training targets.

A conversation directory (written by ``duplex corpus make``) holds ``user.wav`` (what the microphone hears),
``model.wav`` (what a perfect full-duplex model says) and ``events.json`` on one time axis. Per 40 ms frame:

  control  listen, except: speak over every ``model_turn``, backchannel over every ``backchannel``, and
           yield for the first ``YIELD_FRAMES`` frames after the model stops for a ``barge_in``;
  audio    the reference codec's code for the model track's frame;
  text     the model's words, each word's bytes laid out from the frame its speech starts (one byte per
           frame, PAD elsewhere, EOT after a turn's last byte) — an inner monologue in step with the audio;
           a TimeSpeak ``timed_word`` is a turn of one word (speak, its bytes from its due moment, EOT) — or,
           for a model with word tokens (``ModelConfig.text_words``), the word's one token at the frame its
           speech starts, then EOT;
  text_in  input, not target: the bytes of every ``typed_text`` event, ``text_in_slots`` per frame from its
           first frame, as the engine feeds a chunk's queued typed text;
  video    input, not target (``video_input``): per chunk the frame shown at its start, on its first frame;
  agenda   (models with an agenda) the pending timed request from its end: its word, its period (0 =
           once) and the countdown to its next due moment in agenda units; empty (all 0) otherwise — after a
           "once" request's due moment, and after the stop of an "every" one has ended.

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
from .timespeak import WORDS

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
    video: Tensor | None = None
    """(K, H, W, 3) uint8 RGB frames on the conversation's time axis (``--task action-count``): frame k is shown
    from k × its ``video`` event's ``frame_period_s``; None when the conversation has no video."""

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
    """(T,) int64 bytes / PAD / EOT / word tokens."""
    weight: Tensor
    """(T,) float32 per-frame weight of the control loss."""
    text_in: Tensor | None = None
    """(T, text_in_slots) int64 typed input bytes (PAD = none); None when the conversation has no typed text."""
    agenda: Tensor | None = None
    """(T, A) int64 agenda tokens (word, period, countdown[, tally]); None when the model has no agenda."""


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
    return Conversation(
        doc["id"], doc.get("split", "?"), user[:n], model[:n], doc["events"], dry, _video(directory, doc)
    )


def _video(directory: Path, doc: dict[str, Any]) -> Tensor | None:
    """The conversation's frames (its ``video`` event's file), or None when it has none."""
    event = next((e for e in doc["events"] if e["type"] == "video"), None)
    if event is None:
        return None
    path = directory / event["path"]
    try:
        frames = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: not a video of uint8 frames ({e})") from None
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3 or frames.shape[1] != frames.shape[2]:
        raise ModelError(f"{path}: {frames.dtype} {frames.shape}, expected uint8 (K, V, V, 3)")
    return torch.from_numpy(frames)


def video_input(conv: Conversation, cfg: ModelConfig, chunk_ms: int = 200) -> tuple[Tensor, Tensor] | None:
    """The conversation's video as the engine feeds it: per ``chunk_ms`` chunk, the frame shown at the chunk's
    start (what ``duplex talk --video`` sends with it), attached to the chunk's first 40 ms frame. Returns
    (frames (K, 3, V, V) float in [0, 1], resized to ``cfg.video_size`` when it differs; model frame index of
    each (K,)), or None when the conversation has no video or the model takes none."""
    if conv.video is None or not cfg.video_size:
        return None
    event = next(e for e in conv.events if e["type"] == "video")
    period_ms = float(event["frame_period_s"]) * 1000
    per_chunk = cfg.frames_per_chunk(chunk_ms)
    chunks = -(-conv.frames // per_chunk)
    shown = [int(c * chunk_ms / period_ms + 1e-9) for c in range(chunks)]
    keep = [c for c in range(chunks) if shown[c] < conv.video.shape[0]]
    if not keep:
        return None
    frames = conv.video[[shown[c] for c in keep]].permute(0, 3, 1, 2).float() / 255.0
    if frames.shape[-1] != cfg.video_size:
        frames = torch.nn.functional.interpolate(frames, size=(cfg.video_size, cfg.video_size), mode="area")
    return frames.contiguous(), torch.tensor([c * per_chunk for c in keep], dtype=torch.long)


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
            token = _word_token(ev, cfg)
            if token is None:
                _lay_out_words(text, ev.get("words", []), f, cfg.eot_token)
            else:
                at = int(ev["words"][0]["start"] / f)
                text[at : at + 2] = torch.tensor([token, cfg.eot_token])[: max(0, T - at)]
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
    return Targets(control, audio, text, weight, text_input(conv, cfg), agenda_targets(conv, cfg))


def agenda_targets(conv: Conversation, cfg: ModelConfig) -> Tensor | None:
    """(T, 3) agenda tokens of the conversation's ``timed_request`` events (see the module doc); None when the
    model has no agenda. Countdown at a frame centred at τ: ``floor((next due − τ) / unit)``, capped."""
    classes = cfg.agenda_classes
    if not classes:
        return None
    if cfg.agenda_words < len(WORDS):
        raise ModelError(f"agenda_words={cfg.agenda_words} cannot hold the {len(WORDS)} TimeSpeak words")
    T = conv.frames
    out = torch.zeros(T, len(classes), dtype=torch.long)
    centre = (torch.arange(T, dtype=torch.float64) + 0.5) * (cfg.frame_ms / 1000)
    if cfg.agenda_tally:
        out[:, 3] = _tally(conv.events, centre, cfg.agenda_tally)
    unit = cfg.agenda_unit_ms / 1000
    for ev in sorted((e for e in conv.events if e["type"] == "timed_request"), key=lambda e: float(e["end"])):
        n, end = int(ev["n"]), float(ev["end"])
        if n > cfg.agenda_max_s:
            raise ModelError(f"{conv.id}: a request of {n} s is longer than agenda_max_s={cfg.agenda_max_s}")
        every = ev["form"] == "every"
        off = _stop_end(conv.events, ev["stop"]) if every else float(ev["due"][-1])
        span = (centre >= end) & (centre < off)
        if every:  # next due of end + k·n (k ≥ 1) after τ
            due = end + n * (torch.floor((centre - end) / n) + 1)
        else:
            due = torch.full_like(centre, float(ev["due"][-1]))
        count = torch.floor((due - centre) / unit + 1e-9).clamp(0, classes[2] - 1).long()
        out[span, 0] = WORDS.index(ev["word"]) + 1
        out[span, 1] = n if every else 0
        out[span, 2] = count[span]
    return out


def _tally(events: list[dict[str, Any]], centre: Tensor, cap: int) -> Tensor:
    """The actions of the clip finished by each frame's centre, until the count has been answered."""
    done = torch.zeros(centre.shape[0], dtype=torch.long)
    for e in events:
        if e["type"] == "action":
            done += (centre >= float(e["end"])).long()
    for e in events:
        if e["type"] == "model_turn" and e.get("kind") == "count_answer":
            done[centre >= float(e["end"])] = 0
    return done.clamp(max=cap)


def _stop_end(events: list[dict[str, Any]], stop: float | None) -> float:
    """When the stop of an "every" request has been said or typed (its turn's or typed text's end)."""
    if stop is None:
        return float("inf")
    for e in events:
        if e["type"] in ("user_turn", "typed_text") and abs(float(e["start"]) - stop) < 1e-6:
            return float(e["end"])
    raise ModelError(f"no user turn or typed text starts at the stop ({stop} s)")


def _word_token(ev: dict[str, Any], cfg: ModelConfig) -> int | None:
    """The word token a ``timed_word`` turn is laid out as (its one word has a token); None: lay out bytes."""
    words = ev.get("words", [])
    if ev["type"] != "timed_word" or len(words) != 1:
        return None
    return cfg.word_token(words[0]["word"])


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
