"""``duplex talk``: play a WAV into a conversation and record the model's side on the same time axis."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np

from .client import Conversation


def read_wav(path: Path, sample_rate: int) -> np.ndarray:
    """Mono int16 samples at ``sample_rate`` (channels averaged; other rates resampled linearly)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported (got {8 * w.getsampwidth()}-bit)")
        rate, ch = w.getframerate(), w.getnchannels()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32)
    data = data.reshape(-1, ch).mean(axis=1)
    if rate != sample_rate:
        n = int(len(data) * sample_rate / rate)
        data = np.interp(np.arange(n) * rate / sample_rate, np.arange(len(data)), data)
    out: np.ndarray = np.clip(data, -32768, 32767).astype(np.int16)
    return out


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(samples.astype("<i2").tobytes())


def timeline(conv: Conversation) -> dict[str, object]:
    """Every server event with its client-clock time in seconds after the first chunk was sent."""
    from google.protobuf.json_format import MessageToDict

    events = []
    for r in conv.received:
        d = MessageToDict(r.event, preserving_proto_field_name=True)
        if "audio" in d:
            d["audio"].pop("pcm", None)
            d["audio"]["silent"] = not r.event.audio.pcm
        events.append({"t": round((r.t_us - conv.start_us) / 1e6, 4), **d})
    sent = {str(k): round((v - conv.start_us) / 1e6, 4) for k, v in conv.sent_us.items()}
    return {"start_us": conv.start_us, "status": conv.code.name, "details": conv.details, "sent": sent,
            "events": events}


def plot(path: Path, user: np.ndarray, model: np.ndarray, sample_rate: int, conv: Conversation) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 3.5))
    t_user = np.arange(len(user)) / sample_rate
    t_model = np.arange(len(model)) / sample_rate
    ax.plot(t_user, user / 32768.0 + 1.2, lw=0.4, color="tab:blue", label="user (sent)")
    ax.plot(t_model, model / 32768.0 - 1.2, lw=0.4, color="tab:orange", label="model (received)")
    for r in conv.of("turn"):
        t = (r.t_us - conv.start_us) / 1e6
        ax.axvline(t, color="gray", lw=0.6, ls=":")
    ax.set_yticks([1.2, -1.2], ["user", "model"])
    ax.set_xlabel("seconds since the first chunk was sent (client clock)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save(conv: Conversation, user: np.ndarray, sample_rate: int, output: Path, timeline_path: Path | None,
         plot_path: Path | None) -> None:
    last = max((r.t_us for r in conv.received), default=conv.start_us)
    total = max(len(user), int((last - conv.start_us) * sample_rate / 1e6) + 1) + sample_rate
    model = conv.output_track(sample_rate, total)
    write_wav(output, model, sample_rate)
    if timeline_path is not None:
        timeline_path.write_text(json.dumps(timeline(conv), indent=1))
    if plot_path is not None:
        plot(plot_path, user, model, sample_rate, conv)
