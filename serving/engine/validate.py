"""Validation of client events: every rejection is an ``InputError`` with the gRPC status to answer and a
message naming the offending field. Pure functions; the handler turns errors into statuses."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import torch
from google.protobuf.message import DecodeError

from duplex.model.config import ModelConfig
from duplex.v1 import duplex_pb2 as pb

MAX_TEXT_BYTES = 4096
"""Largest single TextInput (bytes of UTF-8)."""


class InputError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Negotiated:
    model: str
    chunk_ms: int
    chunk_samples: int
    tools: list[str]
    instructions: str
    session_id: str


class Undecodable:
    """Stands in for request bytes that are not a ClientEvent (so the handler can answer precisely)."""


def parse_event(data: bytes) -> pb.ClientEvent | Undecodable:
    """Request deserializer that never raises."""
    try:
        event: pb.ClientEvent = pb.ClientEvent.FromString(data)
    except DecodeError:
        return Undecodable()
    return event


def event_kind(ev: pb.ClientEvent | Undecodable) -> str:
    """The oneof field set, or an InputError for undecodable/empty events."""
    kind: str | None = ev.WhichOneof("event") if isinstance(ev, pb.ClientEvent) else None
    if kind is None:
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT,
                         "ClientEvent: not a valid duplex.v1.ClientEvent (protobuf decode failed or no event set)")
    return kind


MAX_CLIENT_TIME_US = 1 << 62
"""Client clock readings must leave room for the phase hint's offset within int64."""


def check_start(start: pb.SessionStart, cfg: ModelConfig, model_name: str, chunk_ms: int,
                tools: list[str]) -> Negotiated:
    if start.model and start.model != model_name:
        raise InputError(grpc.StatusCode.NOT_FOUND,
                         f"start.model {start.model!r}: this replica serves {model_name!r}")
    fmt = start.format
    if fmt.sample_rate not in (0, cfg.sample_rate):
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"start.format.sample_rate {fmt.sample_rate}: the model takes {cfg.sample_rate} Hz "
                         "(resample on the client)")
    if fmt.channels not in (0, 1):
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT, f"start.format.channels {fmt.channels}: must be 1 (mono)")
    if fmt.encoding not in (pb.AUDIO_ENCODING_UNSPECIFIED, pb.PCM16_LE):
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT, f"start.format.encoding {fmt.encoding}: must be PCM16_LE")
    if start.chunk_ms not in (0, chunk_ms):
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"start.chunk_ms {start.chunk_ms}: this replica steps every {chunk_ms} ms")
    unknown = [t for t in start.tools if t not in tools]
    if unknown:
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"start.tools {unknown}: unknown tool(s); available: {tools}")
    if len(start.instructions.encode()) > MAX_TEXT_BYTES:
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT, f"start.instructions: longer than {MAX_TEXT_BYTES} bytes")
    if len(start.session_id) > 128:
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT, "start.session_id: longer than 128 characters")
    if not 0 <= start.client_time_us < MAX_CLIENT_TIME_US:
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"start.client_time_us {start.client_time_us}: must be a clock reading in µs, "
                         f"0 <= t < 2**62 (0 = no phase hint)")
    samples = cfg.frames_per_chunk(chunk_ms) * cfg.frame_samples
    return Negotiated(model_name, chunk_ms, samples, list(start.tools), start.instructions, start.session_id)


def check_audio(audio: pb.AudioChunk, expected_seq: int, chunk_samples: int) -> torch.Tensor:
    """The chunk's samples as float32 in [-1, 1], or an InputError naming what is wrong."""
    if audio.seq != expected_seq:
        what = "duplicate" if audio.seq < expected_seq else "out of order"
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"audio.seq {audio.seq}: {what}, expected {expected_seq} (sequence numbers must be "
                         "consecutive from 0)")
    if len(audio.pcm) != 2 * chunk_samples:
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"audio.pcm of chunk {audio.seq}: {len(audio.pcm)} bytes, expected {2 * chunk_samples} "
                         f"({chunk_samples} PCM16 samples)")
    return torch.frombuffer(bytearray(audio.pcm), dtype=torch.int16).float() / 32768.0


def check_video(video: pb.VideoFrame, last_seq: int, size: int) -> torch.Tensor:
    if not size:
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT, "video: this model takes no video input")
    if last_seq >= 0 and video.seq <= last_seq:
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"video.seq {video.seq}: not after the previous frame's {last_seq}")
    if (video.width, video.height) != (size, size):
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"video.width/height {video.width}x{video.height}: the model takes {size}x{size} frames")
    if len(video.rgb) != size * size * 3:
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"video.rgb: {len(video.rgb)} bytes, expected {size * size * 3}")
    rgb = torch.frombuffer(bytearray(video.rgb), dtype=torch.uint8).float() / 255.0
    return rgb.view(size, size, 3).permute(2, 0, 1).contiguous()


def check_text(text: pb.TextInput) -> list[int]:
    data = text.text.encode()
    if len(data) > MAX_TEXT_BYTES:
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT, f"text.text: {len(data)} bytes, limit {MAX_TEXT_BYTES}")
    return list(data)
