"""``duplex talk``: play a WAV into a conversation and record the model's side on the same time axis.

Sample 0 of the input and of the recording is the capture start of the first chunk (docs/design.md "Recorded
conversations"); the model's audio is placed on that axis in one of two ways:

* as heard (default): where the client heard it — each chunk when it arrived, or when the previous one
  finished playing. Network, batching and the one-chunk capture delay are in it; latency can be measured from
  the two tracks.
* model time (``--model-time``): at each chunk's ``output_sample``, the model's own clock, in step with the
  input (no delivery delay). Arrival jitter does not move it, so two runs of one input give the same bytes
  whenever the model's outputs are the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from duplex.model.audio_io import RESAMPLER, Wav, read_wav, write_wav
from duplex.v1 import duplex_pb2 as pb

from .client import Conversation


def conversion_note(path: Path, wav: Wav) -> str | None:
    """What ``read_wav`` changed to make ``wav`` (rate, channels, encoding), or None when nothing."""
    if not wav.converted:
        return None
    how = []
    if wav.rate != wav.file.rate:
        how.append(RESAMPLER)
    if wav.file.channels != 1:
        how.append("channels averaged")
    if wav.file.subtype != "PCM_16":
        how.append(f"{wav.file.subtype} to 16-bit")
    return f"converting {path.name} {wav.file.describe()} → {wav.rate} Hz mono ({', '.join(how)})"


def load_input(path: Path, sample_rate: int) -> tuple[np.ndarray, str | None]:
    """The input as int16 mono samples at ``sample_rate``, and the conversion note (None if none was needed)."""
    wav = read_wav(path, sample_rate, mono=True)
    return wav.samples, conversion_note(path, wav)


def timeline(conv: Conversation) -> dict[str, object]:
    """Every server event at its arrival on the recording's time axis (seconds after the capture start of the
    first chunk, re-aims taken out: ``Conversation.axis_us``), and the client's re-aims."""
    from google.protobuf.json_format import MessageToDict

    events = []
    for r in conv.received:
        d = MessageToDict(r.event, preserving_proto_field_name=True)
        if "audio" in d:
            d["audio"].pop("pcm", None)
            d["audio"]["silent"] = not r.event.audio.pcm
        if "agent" in d:  # state as the enum name, the result (or why it failed) in detail, the call id named
            a = r.event.agent
            d["agent"] = {"call_id": a.job_id, "tool": a.tool, "state": pb.AgentState.Name(a.state), "detail": a.detail}
            if a.arguments_json:  # the call's first event: its arguments as the engine received or parsed them
                d["agent"]["arguments_json"] = a.arguments_json
        events.append({"t": round(conv.axis_us(r.t_us) / 1e6, 4), **d})
    sent = {str(k): round(conv.axis_us(v) / 1e6, 4) for k, v in conv.sent_us.items()}
    return {
        "start_us": conv.start_us,
        "status": conv.code.name,
        "details": conv.details,
        "sent": sent,
        "reaims": [{"from_seq": seq, "later_ms": us / 1000} for seq, us in conv.reaims],
        "events": events,
    }


def parse_call(spec: str, call_id: str) -> pb.ClientEvent:
    """``--call 'TOOL {JSON}'`` → an ``AgentRequest``; ValueError naming what is wrong."""
    tool, _, arguments = spec.strip().partition(" ")
    if not tool:
        raise ValueError(f"--call {spec!r}: expected 'TOOL {{JSON object}}'")
    arguments = arguments.strip() or "{}"
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError as e:
        raise ValueError(f"--call {spec!r}: arguments are not valid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"--call {spec!r}: arguments must be a JSON object")
    return pb.ClientEvent(agent=pb.AgentRequest(call_id=call_id, tool=tool, arguments_json=arguments))


def plot(
    path: Path, user: np.ndarray, model: np.ndarray, sample_rate: int, conv: Conversation, model_time: bool = False
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 3.5))
    t_user = np.arange(len(user)) / sample_rate
    t_model = np.arange(len(model)) / sample_rate
    ax.plot(t_user, user / 32768.0 + 1.2, lw=0.4, color="tab:blue", label="user (sent)")
    ax.plot(
        t_model,
        model / 32768.0 - 1.2,
        lw=0.4,
        color="tab:orange",
        label="model (model time)" if model_time else "model (as heard)",
    )
    for r in conv.of("turn"):
        t = r.event.turn.output_sample / sample_rate if model_time else conv.axis_us(r.t_us) / 1e6
        ax.axvline(t, color="gray", lw=0.6, ls=":")
    for r in conv.of("agent"):  # agent events at their arrival on the client clock, labelled "c1 DONE"
        a = r.event.agent
        t = conv.axis_us(r.t_us) / 1e6
        ax.axvline(t, color="tab:green" if a.state != pb.FAILED else "tab:red", lw=0.8, ls="--")
        ax.text(t, 2.3, f"{a.job_id} {pb.AgentState.Name(a.state)}", rotation=90, fontsize=6, va="top")
    ax.set_yticks([1.2, -1.2], ["user", "model"])
    ax.set_xlabel("seconds since the capture start of the first chunk (client clock)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def track_length(conv: Conversation, user: np.ndarray, sample_rate: int, model_time: bool) -> int:
    """Samples in the recording: the input and all the model's audio, to the end of its last chunk. As heard
    that end can lie well after the last arrival (chunks that came in a burst play one after another), and
    the recording also reaches the last event's arrival; in model time it depends on the outputs only."""
    ends = [len(user), *(at + a.samples for at, a in conv.placements(sample_rate, model_time))]
    if not model_time:
        last = max((r.t_us for r in conv.received), default=conv.start_us)
        ends.append(int(conv.axis_us(last) * sample_rate / 1e6) + 1)
    return max(ends)


def save(
    conv: Conversation,
    user: np.ndarray,
    sample_rate: int,
    output: Path,
    timeline_path: Path | None,
    plot_path: Path | None,
    model_time: bool = False,
) -> None:
    model = conv.output_track(sample_rate, track_length(conv, user, sample_rate, model_time), model_time)
    write_wav(output, model, sample_rate)
    if timeline_path is not None:
        timeline_path.write_text(json.dumps(timeline(conv), indent=1))
    if plot_path is not None:
        plot(plot_path, user, model, sample_rate, conv, model_time)
