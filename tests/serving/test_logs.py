"""The processes' log handler writes to the ``sys.stderr`` of the moment: a command run in-process (a CLI test)
may swap stderr for a buffer and close it afterwards, and a later record must not hit the closed one."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from duplex.serving import logs


def test_records_go_to_the_current_stderr_not_a_closed_one(monkeypatch: pytest.MonkeyPatch) -> None:
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    handler = logs.StderrHandler()
    handler.setFormatter(logs.JsonFormatter())
    first.close()  # the runner's buffer is gone
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    logger = logging.getLogger("duplex.tests.logs")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    errors: list[str] = []
    monkeypatch.setattr(handler, "handleError", lambda record: errors.append(record.getMessage()))
    try:
        logger.info("after the swap")
    finally:
        logger.removeHandler(handler)
    assert errors == []
    assert "after the swap" in second.getvalue()
