"""Full-Duplex-Bench-style evaluation of turn-taking on corpus conversations.

Every system is run on the identical user audio and scored on its OUTPUT AUDIO by the same independent
speech detector (``detect.py``):

* the duplex model runs through the real streaming path — ``model.step`` chunk by chunk and the codec
  decoder, exactly what the engine does. Output chunk k can only be played once input chunk k is complete,
  so the model's audio is placed one chunk late on the conversation's time axis ("as heard"): the latency
  figures include the chunking delay, not only the model's decision.
* the cascade baseline is ``silero-vad`` with common server-side VAD defaults (threshold 0.5, 300 ms prefix,
  500 ms silence to end a turn). It "answers" the instant its turn-end fires — before any ASR/LLM/TTS time —
  and stops the instant it detects user speech; its answer is rendered as a tone so the same detector
  scores it.

Metrics (times in seconds):
  tor                 take-over rate: share of user turn ends followed by model speech (onset within
                      [end - 0.2, end + 3] s, before the user speaks again)
  latency_*           onset - user end of speech, clipped at 0, over turns taken (p50, p95, mean)
  false_takeover      share of mid-turn pauses in which the model starts a turn (a segment ≥ 0.8 s; shorter
                      bursts are back-channels) — talking over a user who had not finished
  pause_onsets        share of mid-turn pauses in which ANY model audio starts (back-channels included: the
                      corpus' ideal listener back-channels in ~40 % of them; a cascade's cut-short answers count)
  interrupts_user     share of user clauses inside which the model starts a turn (≥ 0.8 s)
  barge_in_stop_*     for barge-ins while the model was speaking: its speech offset - user onset
  barge_in_within_chunk  share of those whose audio stops within one chunk of the user's onset on the model's
                      own time axis (as heard: ≤ the chunk delay + one chunk)
  backchannel_rate    share of the corpus' back-channel opportunities with a short (< 0.8 s) model burst
  overlap             share of the user's speech time (outside barge-ins) during which the model's audio is
                      speech: catches a system that babbles in short bursts, which the turn metrics ignore
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from .codec import Codec
from .data import Conversation, text_input, video_input
from .detect import speech_segments
from .model import DuplexModel

TURN_MIN_S = 0.8


@dataclass
class Metrics:
    system: str
    conversations: int
    turns: int
    tor: float
    latency_p50: float | None
    latency_p95: float | None
    latency_mean: float | None
    pauses: int
    false_takeover: float
    pause_onsets: float
    interrupts_user: float
    barge_ins: int
    barge_ins_evaluated: int
    barge_in_stop_p50: float | None
    barge_in_within_chunk: float | None
    backchannel_rate: float
    overlap: float
    chunk_ms: int
    latencies: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("latencies")
        return d


def run_model(
    model: DuplexModel, codec: Codec, convs: list[Conversation], chunk_ms: int = 200, batch_invariant: bool = False
) -> list[npt.NDArray[np.float32]]:
    """Stream every conversation through ``step`` + codec decode (batched, one slot each); the output audio
    is returned on the conversation's time axis, one chunk late (as heard in real time, with no delay but the
    capture of the chunk). ``batch_invariant``: the kernels ``duplex up`` steps with (``engine.batch_invariant``),
    so each conversation's outputs are the ones the server gives it."""
    return stream_model(model, codec, convs, chunk_ms, batch_invariant)[0]


def stream_model(
    model: DuplexModel, codec: Codec, convs: list[Conversation], chunk_ms: int = 200, batch_invariant: bool = False
) -> tuple[list[npt.NDArray[np.float32]], list[npt.NDArray[np.int64]]]:
    """``run_model``'s audio, and each conversation's per-frame text tokens (model time: frame f is the model's
    output for input frame f). Typed text (``typed_text`` events) and video frames (``video_input``: per chunk
    the frame shown at its start) are fed as the engine feeds them."""
    cfg = model.cfg
    F = cfg.frames_per_chunk(chunk_ms)
    C = F * cfg.frame_samples
    n = len(convs)
    longest = max(c.user.shape[0] for c in convs)
    chunks = -(-longest // C)
    audio = torch.zeros(n, chunks * C)
    for i, c in enumerate(convs):
        audio[i, : c.user.shape[0]] = c.user
    typed = [text_input(c, cfg) for c in convs]
    text_in = None
    if any(x is not None for x in typed):
        text_in = torch.full((n, chunks * F, cfg.text_in_slots), cfg.pad_token, dtype=torch.long)
        for i, x in enumerate(typed):
            if x is not None:
                text_in[i, : x.shape[0]] = x
    videos = [video_input(c, cfg, chunk_ms) for c in convs]
    state, cs = model.new_state(n), codec.new_state(n)
    out = torch.zeros(n, (chunks + 1) * C)
    text = torch.zeros(n, chunks * F, dtype=torch.long)
    with torch.no_grad():
        for k in range(chunks):
            video, video_rows = _chunk_video(videos, k * F)
            step = model.step(
                state,
                audio[:, k * C : (k + 1) * C],
                text_in=None if text_in is None else text_in[:, k * F : (k + 1) * F],
                video=video,
                video_rows=video_rows,
                batch_invariant=batch_invariant,
            )
            out[:, (k + 1) * C : (k + 2) * C] = codec.decode(step.audio_codes, cs)
            text[:, k * F : (k + 1) * F] = step.text_tokens
    tracks = [out[i, : c.user.shape[0]].numpy() for i, c in enumerate(convs)]
    return tracks, [text[i, : c.frames].numpy() for i, c in enumerate(convs)]


def _chunk_video(
    videos: list[tuple[torch.Tensor, torch.Tensor] | None], first_frame: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The video frames that arrive with the chunk starting at model frame ``first_frame`` (one per conversation
    at most) and the batch rows they belong to; (None, None) when none does."""
    frames, rows = [], []
    for i, v in enumerate(videos):
        if v is not None:
            at = (v[1] == first_frame).nonzero()
            if len(at):
                frames.append(v[0][int(at[0, 0])])
                rows.append(i)
    if not frames:
        return None, None
    return torch.stack(frames), torch.tensor(rows, dtype=torch.long)


def run_vad_baseline(convs: list[Conversation], reply_s: float = 2.0) -> list[npt.NDArray[np.float32]]:
    """silero-vad as a server-side turn detector: speech starts at probability ≥ 0.5, the turn ends after
    500 ms below 0.35 (the 300 ms prefix padding only decides which audio is kept, not when). The answer
    starts the instant the turn end fires and is cut the instant speech starts again (barge-in)."""
    sr = 16000
    t = np.arange(int(reply_s * sr)) / sr
    answer = (0.1 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    outs = []
    for c, events in zip(convs, vad_events(convs), strict=True):
        out = np.zeros(c.user.shape[0], np.float32)
        for kind, at in events:
            if kind == "start":
                out[at:] = 0.0  # speech_started: any answer in progress is cut here
            else:
                piece = answer[: out.shape[0] - at]
                out[at : at + len(piece)] = piece
        outs.append(out)
    return outs


def vad_events(convs: list[Conversation]) -> list[list[tuple[str, int]]]:
    """Per conversation, silero-vad's ``start`` (speech started) and ``end`` (turn ended) events on the user
    track, at the sample where each fires (``run_vad_baseline``'s thresholds)."""
    from silero_vad import load_silero_vad  # ships its model inside the wheel: nothing is downloaded

    vad = load_silero_vad()
    win, sr = 512, 16000
    result = []
    for c in convs:
        vad.reset_states()
        x = c.user
        events: list[tuple[str, int]] = []
        in_speech, silence = False, 0.0
        with torch.no_grad():
            for start in range(0, x.shape[0] - win + 1, win):
                p, end = float(vad(x[start : start + win], sr)), start + win
                if p >= 0.5:
                    if not in_speech:
                        events.append(("start", end))
                    in_speech, silence = True, 0.0
                elif in_speech and p < 0.35:
                    silence += win / sr
                    if silence >= 0.5:
                        in_speech, silence = False, 0.0
                        events.append(("end", end))
        result.append(events)
    return result


@dataclass
class Tally:
    """What ``score`` counts, summed over conversations (in event order, so the sums are reproducible)."""

    turns: int = 0
    taken: int = 0
    latencies: list[float] = field(default_factory=list)
    pauses: int = 0
    false_takeovers: int = 0
    pause_onsets: int = 0
    clauses: int = 0
    interrupts: int = 0
    user_time: float = 0.0
    overlap_time: float = 0.0
    barge_ins: int = 0
    stops: list[float] = field(default_factory=list)
    backchannels: int = 0
    backchannel_hits: int = 0


Segments = list[tuple[float, float]]


def talking_grid(segs: Segments, samples: int) -> npt.NDArray[np.bool_]:
    """Model speech on a 10 ms grid, from the detector's segments of a track of ``samples`` samples."""
    talking = np.zeros(int(samples / 16000 * 100) + 1, bool)
    for a, b in segs:
        talking[int(a * 100) : int(b * 100)] = True
    return talking


def turn_latency(end: float, segs: Segments, user_starts: list[float]) -> float | None:
    """The latency of the model's reply to a user end of turn at ``end`` (None: the turn was not taken): the
    first onset in [end - 0.2, end + 3] s and before the user speaks again, minus ``end``, clipped at 0."""
    nxt = next((s for s in user_starts if s > end + 0.05), float("inf"))
    cand = [a for a, _ in segs if end - 0.2 <= a <= min(end + 3.0, nxt)]
    return max(0.0, cand[0] - end) if cand else None


def turn_latencies(conv: Conversation, out: npt.NDArray[np.float32]) -> list[float | None]:
    """``turn_latency`` of every user end of turn of ``conv`` (event order) against the model track ``out``."""
    segs = speech_segments(out)
    starts = user_starts(conv)
    return [turn_latency(e["start"], segs, starts) for e in conv.events if e["type"] == "user_turn_end"]


def user_starts(conv: Conversation) -> list[float]:
    return sorted(e["start"] for e in conv.events if e["type"] == "user_speech")


def _turn_end(t: Tally, e: dict[str, Any], segs: Segments, starts: list[float]) -> None:
    t.turns += 1
    latency = turn_latency(e["start"], segs, starts)
    if latency is not None:
        t.taken += 1
        t.latencies.append(latency)


def _pause(t: Tally, e: dict[str, Any], segs: Segments) -> None:
    t.pauses += 1
    inside = [(a, b) for a, b in segs if e["start"] <= a < e["end"] + 0.2]
    t.false_takeovers += any(b - a >= TURN_MIN_S for a, b in inside)
    t.pause_onsets += bool(inside)


def _clause(t: Tally, e: dict[str, Any], segs: Segments, talking: npt.NDArray[np.bool_]) -> None:
    t.user_time += e["end"] - e["start"]
    t.overlap_time += float(talking[int(e["start"] * 100) : int(e["end"] * 100)].sum()) / 100
    t.clauses += 1
    t.interrupts += any(e["start"] + 0.2 <= a < e["end"] and b - a >= TURN_MIN_S for a, b in segs)


def _barge_in(t: Tally, e: dict[str, Any], segs: Segments) -> None:
    t.barge_ins += 1
    u = e["user_onset"]
    covering = [(a, b) for a, b in segs if a <= u < b]
    if covering:
        t.stops.append(covering[0][1] - u)


def _backchannel(t: Tally, e: dict[str, Any], segs: Segments) -> None:
    t.backchannels += 1
    t.backchannel_hits += any(e["start"] - 0.5 <= a <= e["end"] + 0.5 and b - a < TURN_MIN_S for a, b in segs)


def tally_conversation(t: Tally, conv: Conversation, out: npt.NDArray[np.float32]) -> None:
    """Add one conversation, scored on the model track ``out`` (its time axis), to ``t``."""
    segs = speech_segments(out)
    talking = talking_grid(segs, len(out))
    starts = user_starts(conv)
    barge_users = {e["user_turn"] for e in conv.events if e["type"] == "barge_in"}
    for e in conv.events:
        kind = e["type"]
        if kind == "user_turn_end":
            _turn_end(t, e, segs, starts)
        elif kind == "pause":
            _pause(t, e, segs)
        elif kind == "user_speech" and e.get("turn") not in barge_users:
            _clause(t, e, segs, talking)
        elif kind == "barge_in":
            _barge_in(t, e, segs)
        elif kind == "backchannel":
            _backchannel(t, e, segs)


def _share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _percentile(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


def metrics(system: str, conversations: int, t: Tally, chunk_ms: int) -> Metrics:
    """The figures of a tally."""
    within = chunk_ms / 1000 * 2  # one chunk of delivery delay + one chunk to react
    lat, stops = t.latencies, t.stops
    return Metrics(
        system=system,
        conversations=conversations,
        turns=t.turns,
        tor=_share(t.taken, t.turns),
        latency_p50=_percentile(lat, 50),
        latency_p95=_percentile(lat, 95),
        latency_mean=statistics.fmean(lat) if lat else None,
        pauses=t.pauses,
        false_takeover=_share(t.false_takeovers, t.pauses),
        pause_onsets=_share(t.pause_onsets, t.pauses),
        interrupts_user=_share(t.interrupts, t.clauses),
        barge_ins=t.barge_ins,
        barge_ins_evaluated=len(stops),
        barge_in_stop_p50=_percentile(stops, 50),
        barge_in_within_chunk=sum(s <= within for s in stops) / len(stops) if stops else None,
        backchannel_rate=_share(t.backchannel_hits, t.backchannels),
        overlap=_share(t.overlap_time, t.user_time),
        chunk_ms=chunk_ms,
        latencies=lat,
    )


def score(
    system: str, convs: list[Conversation], outputs: list[npt.NDArray[np.float32]], chunk_ms: int = 200
) -> Metrics:
    """Score each conversation's model track (on its time axis: offline, one chunk late; live, as heard)."""
    t = Tally()
    for conv, out in zip(convs, outputs, strict=True):
        tally_conversation(t, conv, out)
    return metrics(system, len(convs), t, chunk_ms)
