"""Helpers of the kserve tests: ``duplex kserve`` as a subprocess on free ports (KServe's own ModelServer),
reached with the kserve SDK's own clients. A uniquely named module (not ``conftest``, which other rootless
test folders also have), and no ``__init__.py`` here: as a package ``tests/kserve`` would shadow the SDK."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from kserve import InferenceRESTClient, RESTConfig
from serving.test_cli import Proc  # tests/serving: `duplex ARGS` as a subprocess

from duplex.serving.ports import free_port

MODEL = "duplex"
ENGINE_SETS = {
    "engine.cohorts": "1",  # one step clock: concurrent requests share steps
    "engine.batch_invariant": "true",  # a request's outputs do not depend on what shares its steps
    "engine.max_sessions": "4",
    "engine.torch_threads": "1",
}


@dataclass
class KServeProc:
    proc: Proc
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def rest_client() -> InferenceRESTClient:
    return InferenceRESTClient(RESTConfig(protocol="v2", timeout=120, retries=0))


async def wait_ready(base_url: str, deadline_s: float = 60.0) -> None:
    """Poll the V2 readiness endpoint until it answers ready (a state, with a deadline)."""
    end = time.monotonic() + deadline_s
    async with rest_client() as client:
        while True:
            try:
                if await client.is_server_ready(base_url):
                    return
            except Exception:  # not listening yet
                pass
            if time.monotonic() > end:
                raise TimeoutError(f"{base_url} not ready within {deadline_s} s")
            await asyncio.sleep(0.1)


def start_kserve(*extra: str) -> KServeProc:
    metrics_port = free_port()
    sets = [a for k, v in ENGINE_SETS.items() for a in ("--set", f"{k}={v}")]
    sets += ["--set", "engine.host=127.0.0.1", "--set", f"engine.metrics_port={metrics_port}"]
    p = Proc(["kserve", f"--model-name={MODEL}", "--http-port=0", "--grpc-port=0", *sets, *extra])
    try:
        m = p.wait_for(r"V2 REST port (\d+) and V2 gRPC port (\d+)", deadline_s=120)
        server = KServeProc(p, int(m[1]), int(m[2]), metrics_port)
        asyncio.run(wait_ready(server.base_url))
    except BaseException:
        p.p.kill()
        p.p.wait(timeout=30)
        raise
    return server
