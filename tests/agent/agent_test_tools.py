"""Test-only tools, loaded through the plugin interface: ``agent.plugins: ["agent.agent_test_tools:TOOLS"]``
(with tests/ on the Python path)."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field

from duplex.serving.agent.tools import Arguments, Tool


class SleepArguments(Arguments):
    seconds: float = Field(ge=0, le=30)
    """How long the job takes."""


class Sleep(Tool[SleepArguments]):
    """A slow job: a worker can be killed while it runs."""

    name = "sleep"
    description = "Wait, then answer 'slept'."
    arguments = SleepArguments

    async def run(self, args: SleepArguments) -> str:
        await asyncio.sleep(args.seconds)
        return f"slept {args.seconds}"


class ExplodeArguments(Arguments):
    pass


class Explode(Tool[ExplodeArguments]):
    """A poison job: crashes every time (an unexpected exception, so it is retried, then dead-lettered)."""

    name = "explode"
    description = "Always raises."
    arguments = ExplodeArguments

    def __init__(self) -> None:
        self.runs = 0

    async def run(self, args: ExplodeArguments) -> str:
        self.runs += 1
        raise RuntimeError("boom")


def TOOLS() -> list[Tool[Any]]:
    return [Sleep(), Explode()]
