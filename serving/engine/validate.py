"""Validation of client events: every rejection is an ``InputError`` with the gRPC status to answer and a
message naming the offending field. Pure functions; the handler turns errors into statuses."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import grpc
import torch
from google.protobuf.message import DecodeError

from duplex.model.config import ModelError
from duplex.model.family import Prompted, ServedModel, SessionSampling
from duplex.v1 import duplex_pb2 as pb

MAX_TEXT_BYTES = 4096
"""Largest single TextInput (bytes of UTF-8)."""
MAX_VOICE_CHARS = 64
"""Longest ``SessionStart.voice``."""


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
    instruction_tokens: list[int]
    """``instructions`` as the model's text-input tokens."""
    prompt: object | None = None
    """The session's prompt, prefilled before its first step (PersonaPlex: the instructions are its persona)."""
    sampling: object | None = None
    """The session's own sampling settings (``SessionSampling.sampling_for``), None = the model's."""


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
        raise InputError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "ClientEvent: not a valid duplex.v1.ClientEvent (protobuf decode failed or no event set)",
        )
    return kind


MAX_CLIENT_TIME_US = 1 << 62
"""Client clock readings must leave room for the phase hint's offset within int64."""


def check_start(
    start: pb.SessionStart, served: ServedModel[Any], model_name: str, chunk_ms: int, tools: list[str]
) -> Negotiated:
    if start.model and start.model != model_name:
        raise InputError(grpc.StatusCode.NOT_FOUND, f"start.model {start.model!r}: this replica serves {model_name!r}")
    fmt, model_fmt = start.format, served.format
    if fmt.sample_rate not in (0, model_fmt.sample_rate):
        raise InputError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"start.format.sample_rate {fmt.sample_rate}: the model takes {model_fmt.sample_rate} Hz "
            "(resample on the client)",
        )
    if fmt.channels not in (0, 1):
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT, f"start.format.channels {fmt.channels}: must be 1 (mono)")
    if fmt.encoding not in (pb.AUDIO_ENCODING_UNSPECIFIED, pb.PCM16_LE):
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT, f"start.format.encoding {fmt.encoding}: must be PCM16_LE")
    if start.chunk_ms not in (0, chunk_ms):
        raise InputError(
            grpc.StatusCode.INVALID_ARGUMENT, f"start.chunk_ms {start.chunk_ms}: this replica steps every {chunk_ms} ms"
        )
    unknown = [t for t in start.tools if t not in tools]
    if unknown:
        raise InputError(
            grpc.StatusCode.INVALID_ARGUMENT, f"start.tools {unknown}: unknown tool(s); available: {tools}"
        )
    if len(start.instructions.encode()) > MAX_TEXT_BYTES:
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT, f"start.instructions: longer than {MAX_TEXT_BYTES} bytes")
    prompt: object | None = None
    if len(start.voice) > MAX_VOICE_CHARS:
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT, f"start.voice: longer than {MAX_VOICE_CHARS} characters")
    if isinstance(served, Prompted) and served.format.family == "personaplex":
        instruction_tokens: list[int] = []
        try:
            prompt = served.prompt_for(start.voice, start.instructions)
        except ModelError as e:
            field = "start.voice" if str(e).startswith("voice ") else "start.instructions"
            raise InputError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {e}") from e
    else:
        if start.voice:
            raise InputError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"start.voice {start.voice!r}: the {served.format.family} family takes no voice (PersonaPlex does)",
            )
        instruction_tokens = encode_text("start.instructions", start.instructions, served) if start.instructions else []
    if len(start.session_id) > 128:
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT, "start.session_id: longer than 128 characters")
    if not 0 <= start.client_time_us < MAX_CLIENT_TIME_US:
        raise InputError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"start.client_time_us {start.client_time_us}: must be a clock reading in µs, "
            f"0 <= t < 2**62 (0 = no phase hint)",
        )
    samples = served.frames_per_chunk(chunk_ms) * model_fmt.frame_samples
    return Negotiated(
        model_name,
        chunk_ms,
        samples,
        list(start.tools),
        start.instructions,
        start.session_id,
        instruction_tokens,
        prompt,
        check_sampling(start, served),
    )


def check_sampling(start: pb.SessionStart, served: ServedModel[Any]) -> object | None:
    """The session's own ``temperature`` / ``top_k`` as the family's settings (None: neither is set), or an
    InputError naming the field."""
    temperature = start.temperature if start.HasField("temperature") else None
    top_k = start.top_k if start.HasField("top_k") else None
    if temperature is None and top_k is None:
        return None
    if not isinstance(served, SessionSampling):
        field = "start.temperature" if temperature is not None else "start.top_k"
        raise InputError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{field}: the {served.format.family} family samples with the replica's settings only "
            "(the Moshi family takes a session's own)",
        )
    try:
        return served.sampling_for(temperature, top_k)
    except ModelError as e:  # its message starts with the field and its value
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT, f"start.{e}") from e


def encode_text(field: str, text: str, served: ServedModel[Any]) -> list[int]:
    """Typed text as the served model's input tokens, or an InputError naming the field."""
    fmt = served.format
    if not fmt.typed_text:
        raise InputError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{field}: the {fmt.family} family takes no typed text (its text stream is the model's own words); "
            "send audio",
        )
    try:
        return served.encode_text(text)
    except ModelError as e:
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {e}") from e


def check_audio(audio: pb.AudioChunk, expected_seq: int, chunk_samples: int) -> bytes:
    """The chunk's PCM16 bytes (checked here, converted on the step thread), or an InputError naming what is
    wrong."""
    if audio.seq != expected_seq:
        what = "duplicate" if audio.seq < expected_seq else "out of order"
        raise InputError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"audio.seq {audio.seq}: {what}, expected {expected_seq} (sequence numbers must be consecutive from 0)",
        )
    if len(audio.pcm) != 2 * chunk_samples:
        raise InputError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"audio.pcm of chunk {audio.seq}: {len(audio.pcm)} bytes, expected {2 * chunk_samples} "
            f"({chunk_samples} PCM16 samples)",
        )
    return audio.pcm


def check_video(video: pb.VideoFrame, last_seq: int, size: int) -> torch.Tensor:
    if not size:
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT, "video: this model takes no video input")
    if last_seq >= 0 and video.seq <= last_seq:
        raise InputError(
            grpc.StatusCode.INVALID_ARGUMENT, f"video.seq {video.seq}: not after the previous frame's {last_seq}"
        )
    if (video.width, video.height) != (size, size):
        raise InputError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"video.width/height {video.width}x{video.height}: the model takes {size}x{size} frames",
        )
    if len(video.rgb) != size * size * 3:
        raise InputError(
            grpc.StatusCode.INVALID_ARGUMENT, f"video.rgb: {len(video.rgb)} bytes, expected {size * size * 3}"
        )
    rgb = torch.frombuffer(bytearray(video.rgb), dtype=torch.uint8).float() / 255.0
    return rgb.view(size, size, 3).permute(2, 0, 1).contiguous()


def check_text(text: pb.TextInput, served: ServedModel[Any]) -> list[int]:
    data = text.text.encode()
    if len(data) > MAX_TEXT_BYTES:
        raise InputError(grpc.StatusCode.INVALID_ARGUMENT, f"text.text: {len(data)} bytes, limit {MAX_TEXT_BYTES}")
    return encode_text("text.text", text.text, served)


MAX_CALL_ID_CHARS = 256
"""Longest ``AgentRequest.call_id``."""
MAX_TOOL_CHARS = 64
"""Longest tool name."""
MAX_ARGUMENTS_BYTES = 16384
"""Largest ``AgentRequest.arguments_json`` (bytes of UTF-8)."""
MAX_DEADLINE_S = 86_400.0
"""Longest ``AgentRequest.deadline_s``."""
_MODEL_CALL_ID = re.compile(r"m[0-9]+")


@dataclass(frozen=True)
class AgentCall:
    """A tool call that passed the framing checks (``check_agent``)."""

    call_id: str
    """Client-chosen id (or ``m1``, ``m2``, ... for the model's calls)."""
    tool: str
    """Tool name as sent."""
    arguments_json: str
    """The arguments as sent ("" = {})."""
    deadline_s: float
    """Seconds from now (0 = the engine's default)."""
    problem: str | None = None
    """Why the call cannot run (tool or arguments): answered with a FAILED AgentEvent, the stream goes on."""


def check_agent(req: pb.AgentRequest) -> AgentCall:
    """Framing problems (no usable call id, a deadline that is not a duration) are an ``InputError`` like any
    malformed event; problems with the tool or its arguments only fail that call (``AgentCall.problem``)."""
    if not req.call_id or len(req.call_id) > MAX_CALL_ID_CHARS:
        raise InputError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"agent.call_id: {len(req.call_id)} characters, must be 1 to {MAX_CALL_ID_CHARS}",
        )
    if _MODEL_CALL_ID.fullmatch(req.call_id):
        raise InputError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"agent.call_id {req.call_id!r}: m1, m2, ... name the model's own tool calls; pick another",
        )
    if not (math.isfinite(req.deadline_s) and 0 <= req.deadline_s <= MAX_DEADLINE_S):
        raise InputError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"agent.deadline_s {req.deadline_s}: must be 0 (engine default) to {MAX_DEADLINE_S:.0f} s",
        )
    call = AgentCall(req.call_id, req.tool, req.arguments_json, req.deadline_s)
    problem = agent_call_problem(req.tool, req.arguments_json)
    return call if problem is None else dataclasses.replace(call, problem=problem)


def agent_call_problem(tool: str, arguments_json: str) -> str | None:
    """What is wrong with a call's tool name or arguments at the framing level, or None (the tool's own
    argument schema is checked by the agent client)."""
    if not tool:
        return "tool: must not be empty"
    if len(tool) > MAX_TOOL_CHARS:
        return f"tool: {len(tool)} characters, limit {MAX_TOOL_CHARS}"
    size = len(arguments_json.encode())
    if size > MAX_ARGUMENTS_BYTES:
        return f"arguments_json: {size} bytes, limit {MAX_ARGUMENTS_BYTES}"
    if arguments_json:
        try:
            value = json.loads(arguments_json)
        except json.JSONDecodeError as e:
            return f"arguments_json: not valid JSON ({e.msg} at character {e.pos})"
        if not isinstance(value, dict):
            return f"arguments_json: must be a JSON object, got {type(value).__name__}"
    return None
