"""The Realtime protocol's shapes as this endpoint speaks them (GA event names, as the ``openai`` SDK's
``openai.types.realtime`` define them): session settings and their checks, server-event construction, errors.
Pure: no I/O."""

from __future__ import annotations

import itertools
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from .audio import WIRE_RATE

AUDIO_FORMAT: dict[str, Any] = {"type": "audio/pcm", "rate": WIRE_RATE}
"""The one audio format in both directions."""
MAX_INSTRUCTIONS_BYTES = 4096
"""As the engine's ``SessionStart.instructions`` limit."""
MAX_TEMPERATURE = 5.0
"""As the engine's ``SessionStart.temperature`` limit (the Moshi family's ``sampling.MAX_TEMPERATURE``)."""
_TOOL_NAME = re.compile(r"[a-z][a-z0-9_]*")
"""The engine's tool names (the model's ``[[call TOOL {...}]]`` syntax)."""

IGNORED_SESSION_FIELDS = frozenset(
    {
        "model",
        "tool_choice",
        "max_output_tokens",
        "tracing",
        "truncation",
        "prompt",
        "include",
        "parallel_tool_calls",
        "reasoning",
        "object",
        "id",
        "expires_at",
    }
)
"""Session fields OpenAI's server knows that have no meaning here: accepted and ignored (docs/realtime.md)."""
IGNORED_AUDIO_FIELDS = frozenset({"turn_detection", "noise_reduction", "transcription", "speed"})
"""``audio.input``/``audio.output`` fields accepted and ignored: the model takes turns itself (no VAD) and
transcribes nothing but its own speech."""
OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage", "shimmer", "verse"}
)
"""OpenAI's own voice names: ``audio.output.voice`` set to one of them is accepted and ignored (the model speaks
in its own voice); any other name is the session's PersonaPlex voice (``SessionStart.voice``)."""
MAX_VOICE_CHARS = 64
"""As the engine's ``SessionStart.voice`` limit."""


class ClientError(Exception):
    """A client event the endpoint refuses: answered with an ``error`` event (the session stays open). The
    message starts with the field it is about (``param``; the frame itself when ``param`` is None)."""

    def __init__(
        self, message: str, param: str | None = None, code: str = "invalid_value", event_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.event_id = message, param, code, event_id


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


SHOWN_CHARS = 80
"""How much of a client's value an error message repeats."""


def show(value: object) -> str:
    """``repr(value)``, cut to ``SHOWN_CHARS`` (an error message never grows with the client's input)."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def key(name: str) -> str:
    """A client's object key as it appears in a field path: itself when short and printable, else ``show``n."""
    return name if len(name) <= SHOWN_CHARS and name.isprintable() else show(name)


@dataclass(frozen=True)
class SessionPatch:
    """What a ``session.update`` sets, checked on its own (``check_session``)."""

    instructions: str | None = None
    """New instructions, or None to keep them."""
    tools: list[str] | None = None
    """New tool names, or None to keep them."""
    voice: str | None = None
    """New PersonaPlex voice ("" = the model's default), or None to keep it."""
    temperature: float | None = None
    """New sampling temperature (0 = greedy), or None to keep it."""


def check_session(session: object) -> SessionPatch:
    """A ``session.update``'s ``session`` object → what it sets; ClientError naming the field on anything this
    server cannot do."""
    if not isinstance(session, dict):
        raise ClientError("session: must be an object", "session")
    known = {"type", "instructions", "tools", "audio", "output_modalities", "temperature"}
    unknown = sorted(set(session) - IGNORED_SESSION_FIELDS - known)
    if unknown:
        name = key(unknown[0])
        raise ClientError(f"session.{name}: unknown session field", f"session.{name}", "unknown_parameter")
    if "output_modalities" in session:
        if session["output_modalities"] != ["audio"]:
            raise ClientError(
                f"session.output_modalities {show(session['output_modalities'])}: the model always speaks; "
                "only ['audio'] (audio with its transcript) is supported",
                "session.output_modalities",
            )
    kind = session.get("type", "realtime")
    if kind != "realtime":
        raise ClientError(
            f"session.type {show(kind)}: only 'realtime' sessions are served (no transcription sessions)",
            "session.type",
        )
    voice = _check_audio(session.get("audio"))
    instructions = session.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise ClientError("session.instructions: must be a string", "session.instructions")
        try:
            size = len(instructions.encode())
        except UnicodeEncodeError:
            raise ClientError(
                "session.instructions: not valid Unicode (a lone surrogate \\ud800-\\udfff)", "session.instructions"
            ) from None
        if size > MAX_INSTRUCTIONS_BYTES:
            raise ClientError(
                f"session.instructions: longer than {MAX_INSTRUCTIONS_BYTES} bytes", "session.instructions"
            )
    tools = _tool_names(session["tools"]) if "tools" in session else None
    return SessionPatch(instructions, tools, voice, _temperature(session.get("temperature")))


def _temperature(value: object) -> float | None:
    if value is None:
        return None
    # NaN and infinities fail the comparison; an integer of any size compares without becoming a float
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_TEMPERATURE:
        raise ClientError(
            f"session.temperature {show(value)}: must be a number from 0 (greedy) to {MAX_TEMPERATURE}",
            "session.temperature",
        )
    return float(value)


@dataclass
class SessionSettings:
    """What a client may set with ``session.update`` (or mint into a client secret)."""

    instructions: str = ""
    """System prompt: ``SessionStart.instructions`` (fixed once the conversation has started)."""
    tools: list[str] = field(default_factory=list)
    """Function names: the session's granted tools, ``SessionStart.tools`` (fixed once started)."""
    voice: str = ""
    """PersonaPlex voice, ``SessionStart.voice`` ("" = the model's default; fixed once started)."""
    temperature: float | None = None
    """Sampling temperature, ``SessionStart.temperature`` for a model that samples per session (None = the
    model's; fixed once started)."""

    def update(self, session: object, started: bool) -> None:
        """Apply a ``session.update``'s ``session`` object; ClientError naming the field on anything this server
        cannot do. Nothing changes unless every field is acceptable."""
        self.apply(check_session(session), started)

    def apply(self, patch: SessionPatch, started: bool) -> None:
        """Apply a checked update; once the conversation has started, instructions and tools are fixed."""
        instructions = self.instructions if patch.instructions is None else patch.instructions
        tools = self.tools if patch.tools is None else patch.tools
        voice = self.voice if patch.voice is None else patch.voice
        temperature = self.temperature if patch.temperature is None else patch.temperature
        if started and temperature != self.temperature:
            raise ClientError(
                "session.temperature: fixed once the conversation has started (the first "
                "input_audio_buffer.append); set it before sending audio",
                "session.temperature",
            )
        if started and voice != self.voice:
            raise ClientError(
                "session.audio.output.voice: fixed once the conversation has started (the first "
                "input_audio_buffer.append); set it before sending audio",
                "session.audio.output.voice",
            )
        if started and instructions != self.instructions:
            raise ClientError(
                "session.instructions: fixed once the conversation has started (the first "
                "input_audio_buffer.append); set them before sending audio",
                "session.instructions",
            )
        if started and tools != self.tools:
            raise ClientError(
                "session.tools: fixed once the conversation has started (the first input_audio_buffer.append); "
                "set them before sending audio",
                "session.tools",
            )
        self.instructions, self.tools, self.voice, self.temperature = instructions, tools, voice, temperature

    def describe(self, session_id: str, model: str) -> dict[str, Any]:
        """The session object of ``session.created``/``session.updated``."""
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": session_id,
            "model": model,
            "output_modalities": ["audio"],
            "instructions": self.instructions,
            "tools": [{"type": "function", "name": t} for t in self.tools],
            "tool_choice": "auto",
            "audio": {
                "input": {"format": AUDIO_FORMAT, "turn_detection": None},
                "output": {"format": AUDIO_FORMAT, **({"voice": self.voice} if self.voice else {})},
            },
        }


def _check_audio(audio: object) -> str | None:
    """Checks ``session.audio``; returns the PersonaPlex voice it sets (None = none set, or an OpenAI voice)."""
    voice: str | None = None
    if audio is None:
        return None
    if not isinstance(audio, dict):
        raise ClientError("session.audio: must be an object", "session.audio")
    for side in audio:
        if side not in ("input", "output"):
            where = f"session.audio.{key(side)}"
            raise ClientError(f"{where}: unknown field", where, "unknown_parameter")
        conf = audio[side]
        if not isinstance(conf, dict):
            raise ClientError(f"session.audio.{side}: must be an object", f"session.audio.{side}")
        for k, v in conf.items():
            where = f"session.audio.{side}.{key(k)}"
            if k == "format":
                if (
                    not isinstance(v, dict)
                    or v.get("type", "audio/pcm") != "audio/pcm"
                    or v.get("rate", WIRE_RATE) != WIRE_RATE
                ):
                    raise ClientError(
                        f"{where} {show(v)}: only {{'type': 'audio/pcm', 'rate': {WIRE_RATE}}} is supported "
                        "(PCM16 mono; resampled to the model's rate by the server)",
                        where,
                    )
            elif k == "voice" and side == "output":
                if not isinstance(v, str) or len(v) > MAX_VOICE_CHARS:
                    raise ClientError(f"{where}: must be a voice name of at most {MAX_VOICE_CHARS} characters", where)
                voice = None if v in OPENAI_VOICES else v
            elif k not in IGNORED_AUDIO_FIELDS:
                raise ClientError(f"{where}: unknown field", where, "unknown_parameter")
    return voice


def _tool_names(tools: object) -> list[str]:
    if not isinstance(tools, list):
        raise ClientError("session.tools: must be a list of {type: 'function', name}", "session.tools")
    names: list[str] = []
    for i, t in enumerate(tools):
        where = f"session.tools[{i}]"
        if not isinstance(t, dict) or t.get("type", "function") != "function":
            raise ClientError(f"{where}: only function tools are supported (no MCP)", where)
        name = t.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            raise ClientError(
                f"{where}.name {show(name)}: a tool name of the engine ([a-z][a-z0-9_]*)", f"{where}.name"
            )
        names.append(name)
    return names


class EventFactory:
    """Builds server events with unique ``event_id``s."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(4)

    def __call__(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "event_id": f"event_{self._prefix}{next(self._ids)}", **fields}

    def error(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        event_id: str | None = None,
        kind: str = "invalid_request_error",
    ) -> dict[str, Any]:
        return self(
            "error", error={"type": kind, "code": code, "message": message, "param": param, "event_id": event_id}
        )
