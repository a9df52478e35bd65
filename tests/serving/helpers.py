from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from duplex.model.spec import ModelSource
from duplex.serving.engine.server import EngineServer
from duplex.serving.spec import EngineSpec

from .conftest import LoopThread, wait_serving


async def eventually(cond: Callable[[], bool], deadline_s: float = 10.0, what: str = "condition") -> None:
    """Poll ``cond`` until true or fail after the deadline (state observation, not synchronisation by sleep)."""
    import asyncio

    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Served:
    """One engine serving a checkpoint directory over real gRPC, on its own loop thread."""

    addr: str
    directory: Path
    engine: EngineServer
    thread: LoopThread


@contextmanager
def served_engine(source: ModelSource, model: Any = None, **spec: Any) -> Iterator[Served]:
    """An engine for the Moshi-family tests: 80 ms chunks, one cohort, batch-invariant kernels (a session's
    audio does not depend on what shares its steps), and ``lost_after_chunks`` high so that a slow machine never
    makes the engine substitute silence for a late chunk. ``spec`` overrides (``max_sessions``, ...)."""
    settings: dict[str, Any] = dict(
        host="127.0.0.1", metrics_port=0, chunk_ms=80, cohorts=1, batch_invariant=True, lost_after_chunks=1000
    )
    lt = LoopThread()

    async def up() -> EngineServer:
        engine = EngineServer(EngineSpec(**{**settings, **spec}), source, model=model, bind_port=0)
        await engine.start()
        return engine

    engine: EngineServer = lt.run(up())
    try:
        addr = f"127.0.0.1:{engine.port}"
        wait_serving(addr)
        yield Served(addr, Path(source.uri or ""), engine, lt)
    finally:
        lt.run(engine.stop(0.5))
        lt.close()
