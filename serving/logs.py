"""Structured logs: one JSON object per line, with the session id of the conversation that caused them.

``session_var`` is a context variable: set it once when a conversation starts and every log line written
while handling it — in the handler or its tasks — carries ``"session": ...``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

session_var: contextvars.ContextVar[str] = contextvars.ContextVar("duplex_session", default="")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        session = getattr(record, "session", None) or session_var.get()
        if session:
            out["session"] = session
        for key in ("component", "code", "peer", "replica"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record to ``sys.stderr`` as it is when the record is emitted, not as it was at set-up: a
    command run in-process (a test runner's CLI invocation) swaps it for a buffer it later closes."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass  # always the current sys.stderr


def setup(level: str = "INFO", json_lines: bool = True) -> None:
    """Configure the root logger once per process (idempotent)."""
    root = logging.getLogger()
    if any(getattr(h, "_duplex", False) for h in root.handlers):
        return
    handler = StderrHandler()
    handler._duplex = True  # type: ignore[attr-defined]
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.Formatter.converter = time.gmtime
    root.addHandler(handler)
    root.setLevel(level.upper())
