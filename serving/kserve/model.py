"""``DuplexKServeModel``: the duplex model as a ``kserve.Model`` for KServe's ``ModelServer``.

The ``ModelServer`` owns the process: it calls ``load()`` before its event loop exists, then runs its REST
and gRPC servers and this model's ``start_engine()`` together in one ``asyncio.run``. The engine's
``Scheduler`` hands step results to the loop it was built on, so it is built in ``start_engine()``, on the
server's loop; ``predict`` waits for it. ``ModelServer.stop`` (its SIGTERM/SIGINT handler) unloads the model,
which calls ``stop_engine()``: the step thread is stopped there.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from kserve import Model
from kserve.errors import InvalidInput, ModelNotReady
from kserve.protocol.infer_type import InferRequest, InferResponse

from duplex.model.family_duplex import DuplexServed
from duplex.model.model import DuplexModel
from duplex.model.runtime import load_part
from duplex.model.spec import ModelSource

from ..engine.scheduler import Scheduler
from ..metrics import EngineMetrics, MetricsServer
from ..spec import EngineSpec
from . import tensors
from .utterance import answer

log = logging.getLogger(__name__)


class DuplexKServeModel(Model):  # type: ignore[misc]  # kserve ships no type information
    """Utterance-level V2 inference on the engine's batching scheduler (see ``tensors`` for the contract)."""

    def __init__(self, name: str, spec: EngineSpec, source: ModelSource, model: DuplexModel | None = None) -> None:
        """``model`` = already loaded weights (tests); otherwise ``load()`` reads ``source``."""
        super().__init__(name)
        self.spec, self.source = spec, source
        self.model = model
        self.engine = True  # the ModelServer runs start_engine() on its loop
        self.metrics = EngineMetrics()
        self.scheduler: Scheduler | None = None
        self._metrics_server: MetricsServer | None = None
        self._started: asyncio.Event | None = None

    def load(self) -> bool:
        if self.model is None:
            part = load_part(self.source, device=self.spec.device)
            assert isinstance(part, DuplexModel)
            self.model = part
        self.model.cfg.frames_per_chunk(self.spec.chunk_ms)  # a clear error before any port is bound
        # the engine's step metrics (a thread of its own; port 0 = off); a busy port fails here, before serving
        self._metrics_server = MetricsServer(self.metrics.registry, self.spec.host, self.spec.metrics_port)
        self.ready = True
        return True

    @property
    def sample_rate(self) -> int:
        assert self.model is not None
        return int(self.model.cfg.sample_rate)

    async def start_engine(self) -> None:
        assert self.model is not None, "load() first"
        started = self._started_event()
        sched = Scheduler(
            DuplexServed(self.model),
            self.spec,
            self.spec.chunk_ms,
            self.metrics,
            asyncio.get_running_loop(),
        )
        sched.on_fatal = self._fatal
        sched.start()
        self.scheduler = sched
        started.set()
        log.info("duplex engine started for V2 requests (%d slots, chunk %d ms)", sched.capacity, self.spec.chunk_ms)

    def _started_event(self) -> asyncio.Event:
        if self._started is None:
            self._started = asyncio.Event()
        return self._started

    def _fatal(self, exc: BaseException) -> None:
        log.error("engine step thread died (%s): model not ready", exc)
        self.ready = False
        if self.scheduler is not None:
            for conv in list(self.scheduler.conversations):
                conv.close(grpc.StatusCode.INTERNAL, f"engine step thread died: {exc}")

    def stop_engine(self) -> None:
        self.ready = False
        if self.scheduler is not None:
            self.scheduler.stop()
            self.scheduler = None
        if self._metrics_server is not None:
            self._metrics_server.close()
            self._metrics_server = None

    def get_input_types(self) -> list[dict[str, Any]]:
        return tensors.INPUTS

    def get_output_types(self) -> list[dict[str, Any]]:
        return tensors.OUTPUTS

    async def predict(
        self,
        payload: InferRequest | dict[str, Any],
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        if not isinstance(payload, InferRequest):
            raise InvalidInput("this model speaks the V2 protocol only: POST /v2/models/NAME/infer")
        utterance = tensors.parse_request(payload, self.sample_rate)
        await self._started_event().wait()
        if self.scheduler is None or not self.ready:
            raise ModelNotReady(self.name, "the engine is stopped")
        result = await answer(self.scheduler, self.spec, utterance, self.sample_rate)
        return tensors.build_response(payload, self.name, result, self.sample_rate)
