"""The model-initiated tool-call syntax and the tool-result text (documented in docs/agent.md).

A call, anywhere in the model's text stream::

    [[call TOOL {JSON object}]]

``TOOL`` is ``[a-z][a-z0-9_]*``; one space, then a JSON object whose end is found by the JSON grammar itself
(strings and escapes are followed, so ``]]`` or braces inside strings are harmless), then ``]]``. The parser is
incremental: the model's text may be split anywhere across chunks. Calls are numbered ``m1``, ``m2``, ... per
parser (one parser per session). A malformed call (bad tool name, no object, invalid JSON, no closing ``]]``,
longer than ``max_call_chars``) is reported as a ToolCall with ``error`` set and parsing resumes after it.

A result, injected into the model's text input::

    [[result CALL_ID TOOL STATE "DETAIL"]]

``STATE`` is QUEUED, RUNNING, DONE or FAILED; ``DETAIL`` is a JSON string (the result or the reason).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

OPEN = "[[call "
CLOSE = "]]"
_TOOL_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class ToolCall:
    call_id: str
    """``m1``, ``m2``, ... in the order the calls were opened."""
    tool: str
    """Tool name ("" when the call broke before its name ended)."""
    arguments_json: str
    """The JSON object as written by the model ("" for a malformed call)."""
    error: str | None = None
    """Why the call is malformed; None for a well-formed call."""


def _json_object_end(text: str) -> int | None:
    """Index just past the JSON object at the start of ``text`` (which starts with ``{``), or None if it has
    not ended yet. Only nesting and strings are tracked; validity is checked afterwards by ``json.loads``."""
    depth, in_string, escaped = 0, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


class ToolCallParser:
    """Incremental parser of ``[[call TOOL {JSON}]]`` in a text stream; keeps at most ``max_call_chars``."""

    def __init__(self, max_call_chars: int = 4096) -> None:
        self.max_call_chars = max_call_chars
        self._buf = ""
        self._count = 0

    def _next_id(self) -> str:
        self._count += 1
        return f"m{self._count}"

    def feed(self, text: str) -> list[ToolCall]:
        """Add text; return the calls (well-formed or not) that ended in it."""
        self._buf += text
        calls: list[ToolCall] = []
        while True:
            start = self._buf.find(OPEN)
            if start < 0:
                # keep only a tail that may still become the opening marker
                keep = next(
                    (k for k in range(min(len(OPEN) - 1, len(self._buf)), 0, -1) if OPEN.startswith(self._buf[-k:])), 0
                )
                self._buf = self._buf[len(self._buf) - keep :] if keep else ""
                return calls
            self._buf = self._buf[start:]
            call, consumed = self._parse_call(self._buf)
            if call is None:  # incomplete
                if len(self._buf) > self.max_call_chars:
                    calls.append(
                        ToolCall(self._next_id(), "", "", f"call longer than {self.max_call_chars} characters")
                    )
                    self._buf = self._buf[len(OPEN) :]
                    continue
                return calls
            calls.append(call)
            self._buf = self._buf[consumed:]

    def _parse_call(self, buf: str) -> tuple[ToolCall | None, int]:
        """Parse the call at the start of ``buf``: (call, characters used) or (None, 0) if incomplete."""
        pos = len(OPEN)
        m = _TOOL_NAME.match(buf, pos)
        if m is None or m.end() == len(buf):
            if pos == len(buf) or (m is not None and m.end() == len(buf)):
                return None, 0
            return ToolCall(self._next_id(), "", "", "tool name expected after '[[call '"), pos
        tool, pos = m.group(), m.end()
        if buf[pos] != " ":
            return ToolCall(self._next_id(), tool, "", f"expected a space after tool name {tool!r}"), pos
        pos += 1
        if pos == len(buf):
            return None, 0
        if buf[pos] != "{":
            return ToolCall(self._next_id(), tool, "", "expected a JSON object after the tool name"), pos
        end = _json_object_end(buf[pos:])
        if end is None:
            return None, 0
        arguments, pos = buf[pos : pos + end], pos + end
        if len(buf) - pos < len(CLOSE):
            return (
                (None, 0)
                if CLOSE.startswith(buf[pos:])
                else (ToolCall(self._next_id(), tool, arguments, "expected ']]' after the arguments"), pos)
            )
        if not buf.startswith(CLOSE, pos):
            return ToolCall(self._next_id(), tool, arguments, "expected ']]' after the arguments"), pos
        pos += len(CLOSE)
        try:
            value = json.loads(arguments)
        except json.JSONDecodeError as e:
            return ToolCall(self._next_id(), tool, arguments, f"arguments are not valid JSON: {e.msg}"), pos
        if not isinstance(value, dict):
            return ToolCall(self._next_id(), tool, arguments, "arguments must be a JSON object"), pos
        return ToolCall(self._next_id(), tool, arguments), pos


def result_text(call_id: str, tool: str, state: str, detail: str) -> str:
    """The documented tool-result text the engine injects into the model's text input."""
    return f"[[result {call_id} {tool} {state} {json.dumps(detail, ensure_ascii=False)}]]"
