"""The V2 (Open Inference Protocol) contract of ``duplex kserve``: which tensors a request carries, how they
become one utterance at the model's rate, and how an utterance's outputs become response tensors.

Inputs (exactly one of the two audio tensors):

* ``audio`` BYTES [1]: a whole audio file (WAV or anything libsndfile reads, any rate and channel count;
  converted to the model's rate, mono, with soxr HQ). Over gRPC the element may be the file's own bytes;
  over REST it is the file as base64 text (the SDK's REST decoder turns every BYTES element into UTF-8 text,
  so a binary file cannot travel there as it is); base64 text is accepted over gRPC too.
* ``pcm`` INT16 [N]: mono samples; the input parameter ``sample_rate`` (default: the model's) says their
  rate, other rates are resampled with soxr HQ.

Request parameters: ``trailing_silence_ms`` (silence fed after the utterance while the model answers,
default 3000), ``instructions`` (text fed to the model before the audio, as ``SessionStart.instructions``).

Outputs: ``audio`` INT16 [M] (the model's PCM at its rate, one sample per input sample on the session's
time axis, the trailing silence included), ``text`` BYTES [1] (the model's text, UTF-8) and ``turn_events``
BYTES [K] (one JSON object per turn event). Bad input raises kserve's ``InvalidInput`` (HTTP 400, gRPC
INVALID_ARGUMENT) naming the tensor or parameter.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse

from duplex.model.audio_io import AudioFileError, read_wav, resample

MAX_UTTERANCE_S = 120.0
"""Longest accepted utterance (a request holds its whole input and output in memory)."""
DEFAULT_TRAILING_SILENCE_MS = 3000
"""Silence fed after the utterance, so the model has room to take the turn and answer."""
MAX_TRAILING_SILENCE_MS = 30000
"""Upper bound of ``trailing_silence_ms``."""

INPUTS: list[dict[str, Any]] = [
    {"name": "audio", "datatype": "BYTES", "shape": [1]},
    {"name": "pcm", "datatype": "INT16", "shape": [-1]},
]
"""Model metadata: the accepted inputs (a request carries exactly one of them)."""
OUTPUTS: list[dict[str, Any]] = [
    {"name": "audio", "datatype": "INT16", "shape": [-1]},
    {"name": "text", "datatype": "BYTES", "shape": [1]},
    {"name": "turn_events", "datatype": "BYTES", "shape": [-1]},
]
"""Model metadata: the outputs of every response."""


@dataclass(frozen=True)
class Utterance:
    """One validated request: what is fed to the engine."""

    samples: npt.NDArray[np.int16]
    """(n,) mono PCM at the model's rate."""
    trailing_silence_ms: int
    """Silence fed after the samples."""
    instructions: str
    """Text fed to the model before the audio (may be empty)."""


@dataclass(frozen=True)
class TurnRecord:
    """One turn event of the answer, as a JSON line of ``turn_events``."""

    type: str
    """``MODEL_TURN_START``, ``MODEL_TURN_END``, ``BACKCHANNEL`` or ``USER_BARGE_IN``."""
    time_s: float
    """Where it happened on the session's time axis (seconds from the first input sample)."""
    output_sample: int
    """The same position in samples of the output ``audio`` tensor."""
    seq: int
    """The input chunk during which it happened."""
    truncated_at_sample: int
    """MODEL_TURN_END: the turn's length in samples; USER_BARGE_IN: samples of the turn already sent."""


@dataclass(frozen=True)
class Answer:
    """What the engine made of one utterance."""

    audio: npt.NDArray[np.int16]
    """(m,) the model's PCM at its rate, m = chunks x chunk samples."""
    text: str
    """The model's text."""
    turns: list[TurnRecord]
    """Its turn events, in order."""
    chunks: int
    """Chunks stepped (utterance and trailing silence)."""
    max_batch_size: int
    """The largest number of sessions in one of the steps that served it (batched with others when > 1)."""


def _param(params: Any, key: str) -> Any:
    """A parameter from a REST dict or a gRPC ``InferParameter`` map (None when absent)."""
    if not params or key not in params:
        return None
    value = params[key]
    if isinstance(value, (int, float, str, bool)):
        return value
    choice = value.WhichOneof("parameter_choice")  # a gRPC InferParameter
    return None if choice is None else getattr(value, choice)


def _int_param(params: Any, key: str, default: int, low: int, high: int, where: str) -> int:
    value = _param(params, key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value))
        except ValueError:
            raise InvalidInput(f"{where} {key}: expected an integer, got {value!r}") from None
    if not low <= value <= high:
        raise InvalidInput(f"{where} {key}: {value} is outside [{low}, {high}]")
    return int(value)


def _file_bytes(tensor: InferInput) -> bytes:
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input `audio`: datatype must be BYTES (an audio file), got {tensor.datatype}")
    try:
        elements = tensor.as_numpy().reshape(-1)
    except (ValueError, TypeError) as e:
        raise InvalidInput(f"input `audio`: cannot read the tensor ({e})") from None
    if elements.size != 1:
        raise InvalidInput(f"input `audio`: shape must be [1] (one file), got {list(tensor.shape)}")
    item = elements[0]
    text = item if isinstance(item, str) else None
    if isinstance(item, bytes):
        try:
            text = item.decode("ascii")
        except UnicodeDecodeError:
            return item  # the file's own bytes (gRPC raw contents)
    try:  # over REST the SDK decodes BYTES elements as UTF-8 text: there the file travels as base64
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("input `audio`: expected the audio file's bytes, or the file as base64 text") from None


def _pcm(tensor: InferInput, model_rate: int) -> npt.NDArray[np.int16]:
    if tensor.datatype != "INT16":
        raise InvalidInput(f"input `pcm`: datatype must be INT16 (mono samples), got {tensor.datatype}")
    rate = _int_param(tensor.parameters, "sample_rate", model_rate, 8000, 192000, "input `pcm` parameter")
    try:
        samples = tensor.as_numpy().astype(np.int16).reshape(-1)
    except (ValueError, TypeError) as e:
        raise InvalidInput(f"input `pcm`: cannot read the tensor as INT16 samples ({e})") from None
    if rate == model_rate:
        return samples
    y = resample(samples.astype(np.float32) / 32768.0, rate, model_rate)
    return np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)


def parse_request(request: InferRequest, model_rate: int) -> Utterance:
    """Validate a V2 request into an ``Utterance`` (``InvalidInput`` naming the tensor or parameter)."""
    by_name: dict[str, InferInput] = {}
    for tensor in request.inputs:
        if tensor.name not in ("audio", "pcm"):
            raise InvalidInput(f"input `{tensor.name}`: unknown tensor (give `audio` BYTES [1] or `pcm` INT16 [N])")
        by_name[tensor.name] = tensor
    if len(by_name) != 1:
        raise InvalidInput(
            "inputs: give exactly one of `audio` (BYTES [1], an audio file) or `pcm` (INT16 [N] mono samples)"
        )
    if "audio" in by_name:
        try:
            samples = read_wav(_file_bytes(by_name["audio"]), model_rate, mono=True).samples
        except AudioFileError as e:
            raise InvalidInput(f"input `audio`: {e}") from None
    else:
        samples = _pcm(by_name["pcm"], model_rate)
    name = "audio" if "audio" in by_name else "pcm"
    if samples.size == 0:
        raise InvalidInput(f"input `{name}`: no samples")
    if samples.size > MAX_UTTERANCE_S * model_rate:
        raise InvalidInput(f"input `{name}`: {samples.size / model_rate:.1f} s is longer than {MAX_UTTERANCE_S:.0f} s")
    trailing = _int_param(
        request.parameters,
        "trailing_silence_ms",
        DEFAULT_TRAILING_SILENCE_MS,
        0,
        MAX_TRAILING_SILENCE_MS,
        "request parameter",
    )
    instructions = _param(request.parameters, "instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidInput(f"request parameter instructions: expected a string, got {instructions!r}")
    return Utterance(samples, trailing, instructions or "")


def build_response(request: InferRequest, model_name: str, answer: Answer, sample_rate: int) -> InferResponse:
    """The response tensors of ``answer`` (binary data when the request asked for it)."""
    binary = request.use_binary_outputs
    audio = InferOutput("audio", [int(answer.audio.size)], "INT16", parameters={"sample_rate": sample_rate})
    audio.set_data_from_numpy(answer.audio, binary_data=binary)
    text = InferOutput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([answer.text.encode()], dtype=np.object_), binary_data=binary)
    lines = [json.dumps(t.__dict__).encode() for t in answer.turns]
    turns = InferOutput("turn_events", [len(lines)], "BYTES")
    turns.set_data_from_numpy(np.array(lines, dtype=np.object_), binary_data=binary)
    return InferResponse(
        response_id=request.id or "",
        model_name=model_name,
        infer_outputs=[audio, text, turns],
        parameters={"sample_rate": sample_rate, "chunks": answer.chunks, "max_batch_size": answer.max_batch_size},
        use_binary_outputs=binary,
    )
