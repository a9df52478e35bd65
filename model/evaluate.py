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
from .data import Conversation
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
    model: DuplexModel, codec: Codec, convs: list[Conversation], chunk_ms: int = 200
) -> list[npt.NDArray[np.float32]]:
    """Stream every conversation through ``step`` + codec decode (batched, one slot each); the output audio
    is returned on the conversation's time axis, one chunk late (as heard in real time)."""
    cfg = model.cfg
    F = cfg.frames_per_chunk(chunk_ms)
    C = F * cfg.frame_samples
    n = len(convs)
    longest = max(c.user.shape[0] for c in convs)
    chunks = -(-longest // C)
    audio = torch.zeros(n, chunks * C)
    for i, c in enumerate(convs):
        audio[i, : c.user.shape[0]] = c.user
    state, cs = model.new_state(n), codec.new_state(n)
    out = torch.zeros(n, (chunks + 1) * C)
    with torch.no_grad():
        for k in range(chunks):
            step = model.step(state, audio[:, k * C : (k + 1) * C])
            out[:, (k + 1) * C : (k + 2) * C] = codec.decode(step.audio_codes, cs)
    return [out[i, : c.user.shape[0]].numpy() for i, c in enumerate(convs)]


def run_vad_baseline(convs: list[Conversation], reply_s: float = 2.0) -> list[npt.NDArray[np.float32]]:
    """silero-vad as a server-side turn detector: speech starts at probability ≥ 0.5, the turn ends after
    500 ms below 0.35 (the 300 ms prefix padding only decides which audio is kept, not when). The answer
    starts the instant the turn end fires and is cut the instant speech starts again (barge-in)."""
    from silero_vad import load_silero_vad  # ships its model inside the wheel: nothing is downloaded

    vad = load_silero_vad()
    win, sr = 512, 16000
    t = np.arange(int(reply_s * sr)) / sr
    answer = (0.1 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    outs = []
    for c in convs:
        vad.reset_states()
        x = c.user
        out = np.zeros(x.shape[0], np.float32)
        in_speech, silence = False, 0.0
        with torch.no_grad():
            for start in range(0, x.shape[0] - win + 1, win):
                p, end = float(vad(x[start : start + win], sr)), start + win
                if p >= 0.5:
                    if not in_speech:
                        out[end:] = 0.0  # speech_started: any answer in progress is cut here
                    in_speech, silence = True, 0.0
                elif in_speech and p < 0.35:
                    silence += win / sr
                    if silence >= 0.5:
                        in_speech, silence = False, 0.0
                        piece = answer[: x.shape[0] - end]
                        out[end : end + len(piece)] = piece
        outs.append(out)
    return outs


def score(
    system: str, convs: list[Conversation], outputs: list[npt.NDArray[np.float32]], chunk_ms: int = 200
) -> Metrics:
    lat: list[float] = []
    turns = taken = pauses = false_to = pause_on = clauses = interrupts = 0
    barges = barge_eval = bc_opps = bc_hits = 0
    stops: list[float] = []
    user_time = overlap_time = 0.0
    for conv, out in zip(convs, outputs, strict=True):
        segs = speech_segments(out)
        talking = np.zeros(int(len(out) / 16000 * 100) + 1, bool)  # model speech on a 10 ms grid
        for a, b in segs:
            talking[int(a * 100) : int(b * 100)] = True
        onsets = [(a, b) for a, b in segs]
        user_starts = sorted(e["start"] for e in conv.events if e["type"] == "user_speech")
        barge_users = {e["user_turn"] for e in conv.events if e["type"] == "barge_in"}
        for e in conv.events:
            kind = e["type"]
            if kind == "user_turn_end":
                nxt = next((s for s in user_starts if s > e["start"] + 0.05), float("inf"))
                turns += 1
                cand = [a for a, _ in onsets if e["start"] - 0.2 <= a <= min(e["start"] + 3.0, nxt)]
                if cand:
                    taken += 1
                    lat.append(max(0.0, cand[0] - e["start"]))
            elif kind == "pause":
                pauses += 1
                if any(e["start"] <= a < e["end"] + 0.2 and b - a >= TURN_MIN_S for a, b in onsets):
                    false_to += 1
                if any(e["start"] <= a < e["end"] + 0.2 for a, _ in onsets):
                    pause_on += 1
            elif kind == "user_speech" and e.get("turn") not in barge_users:
                user_time += e["end"] - e["start"]
                overlap_time += float(talking[int(e["start"] * 100) : int(e["end"] * 100)].sum()) / 100
                clauses += 1
                if any(e["start"] + 0.2 <= a < e["end"] and b - a >= TURN_MIN_S for a, b in onsets):
                    interrupts += 1
            elif kind == "barge_in":
                barges += 1
                u = e["user_onset"]
                covering = [(a, b) for a, b in segs if a <= u < b]
                if covering:
                    barge_eval += 1
                    stops.append(covering[0][1] - u)
            elif kind == "backchannel":
                bc_opps += 1
                if any(e["start"] - 0.5 <= a <= e["end"] + 0.5 and b - a < TURN_MIN_S for a, b in onsets):
                    bc_hits += 1
    within = chunk_ms / 1000 * 2  # one chunk of delivery delay + one chunk to react
    return Metrics(
        system=system,
        conversations=len(convs),
        turns=turns,
        tor=taken / turns if turns else 0.0,
        latency_p50=float(np.percentile(lat, 50)) if lat else None,
        latency_p95=float(np.percentile(lat, 95)) if lat else None,
        latency_mean=statistics.fmean(lat) if lat else None,
        pauses=pauses,
        false_takeover=false_to / pauses if pauses else 0.0,
        pause_onsets=pause_on / pauses if pauses else 0.0,
        interrupts_user=interrupts / clauses if clauses else 0.0,
        barge_ins=barges,
        barge_ins_evaluated=barge_eval,
        barge_in_stop_p50=float(np.percentile(stops, 50)) if stops else None,
        barge_in_within_chunk=sum(s <= within for s in stops) / len(stops) if stops else None,
        backchannel_rate=bc_hits / bc_opps if bc_opps else 0.0,
        overlap=overlap_time / user_time if user_time else 0.0,
        chunk_ms=chunk_ms,
        latencies=lat,
    )
