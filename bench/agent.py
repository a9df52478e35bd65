"""Background-agent benchmark: job round-trip overhead and throughput of one worker pool.

    python bench/agent.py                      # 300 sequential jobs + a burst of 1000; writes bench/results/agent.json
    python bench/agent.py --jobs 50 --burst 200 --no-write

A local redis-server (no persistence) and one ``duplex agent`` process (its own interpreter, like a pod) with
the benchmark's ``timed`` tool loaded as a plugin (this file). Per job, on the client's clock:
  round trip = ``AgentClient.submit`` called → the DONE update handed to ``on_event``
  overhead   = round trip − the tool's own run time (measured inside the tool, returned in its result)
Throughput: ``--burst`` jobs submitted at once; jobs/s = jobs / (first submit → last DONE).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from duplex.serving.agent.tools import Arguments, Tool

HERE = Path(__file__).resolve().parent


class TimedArguments(Arguments):
    sleep_ms: float = Field(0.0, ge=0, le=10_000)
    """How long the tool waits."""


class Timed(Tool[TimedArguments]):
    """Waits ``sleep_ms`` and answers with its own run time in microseconds."""

    name = "timed"
    description = "Benchmark tool: waits, answers its run time."
    arguments = TimedArguments

    async def run(self, args: TimedArguments) -> str:
        t0 = time.perf_counter()
        if args.sleep_ms:
            await asyncio.sleep(args.sleep_ms / 1000)
        return str(round((time.perf_counter() - t0) * 1e6))


def TOOLS() -> list[Tool[Any]]:
    return [Timed()]


_PLUGIN_SHIM = """import importlib.util
_spec = importlib.util.spec_from_file_location("duplex_bench_agent", {path!r})
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
TOOLS = _module.TOOLS
"""


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def measure(jobs: int, burst: int, concurrency: int, sleep_ms: float) -> dict[str, float]:
    from duplex.serving.agent.client import AgentClient
    from duplex.serving.agent.protocol import AgentUpdate
    from duplex.serving.agent.redis_server import RedisServer
    from duplex.serving.agent.tools import ToolRegistry
    from duplex.serving.spec import AgentSpec

    spec = AgentSpec(
        stream_prefix="bench",
        tools=["timed"],
        plugins=["agent_bench_plugin:TOOLS"],
        concurrency=concurrency,
        metrics_port=0,
    )
    done: dict[str, tuple[float, AgentUpdate]] = {}
    changed = asyncio.Event()

    def on_event(u: AgentUpdate) -> None:
        if u.state.terminal:
            done[u.call_id] = (time.perf_counter(), u)
            changed.set()

    async def wait_all(ids: list[str]) -> None:
        while not all(i in done for i in ids):
            changed.clear()
            await asyncio.wait_for(changed.wait(), 60)

    with RedisServer() as redis, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "agent.json"
        config.write_text(json.dumps({"agent": spec.model_dump(mode="json")}))
        # bench/ itself cannot go on the path (bench/operator.py would shadow the standard library): a shim
        # module loads this file's tools by path
        (Path(tmp) / "agent_bench_plugin.py").write_text(_PLUGIN_SHIM.format(path=str(Path(__file__).resolve())))
        env = {**os.environ, "PYTHONPATH": tmp}
        worker = subprocess.Popen(
            [str(Path(sys.executable).with_name("duplex")), "agent", "--redis-url", redis.url, "--config", str(config)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert worker.stdout is not None
            line = await asyncio.to_thread(worker.stdout.readline)
            if "ready" not in line:
                raise RuntimeError(f"duplex agent did not start: {line!r}")
            client = AgentClient(redis.url, "bench-0", on_event, spec=spec, registry=ToolRegistry([Timed()]))
            await client.start()
            await client.connected.wait()
            args = json.dumps({"sleep_ms": sleep_ms})
            overhead_ms: list[float] = []
            for i in range(jobs):
                cid = f"seq-{i}"
                t0 = time.perf_counter()
                await client.submit("s", cid, "timed", args, 30)
                await wait_all([cid])
                t1, u = done[cid]
                assert u.state.name == "DONE", u
                overhead_ms.append((t1 - t0) * 1000 - int(u.detail) / 1000)
            ids = [f"burst-{i}" for i in range(burst)]
            t0 = time.perf_counter()
            await asyncio.gather(*(client.submit("s", cid, "timed", args, 60) for cid in ids))
            await wait_all(ids)
            elapsed = max(done[i][0] for i in ids) - t0
            await client.close()
        finally:
            worker.terminate()
            worker.wait(30)
    return {
        "p50": _pct(overhead_ms, 0.5),
        "p90": _pct(overhead_ms, 0.9),
        "p99": _pct(overhead_ms, 0.99),
        "jobs_per_s": burst / elapsed,
        "burst_s": elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=300, help="sequential jobs for the round-trip overhead")
    ap.add_argument("--burst", type=int, default=1000, help="jobs submitted at once for jobs/s")
    ap.add_argument("--concurrency", type=int, default=8, help="agent.concurrency of the worker pool")
    ap.add_argument("--sleep-ms", type=float, default=0.0, help="the tool's own run time")
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/results/ alone")
    a = ap.parse_args()
    r = asyncio.run(measure(a.jobs, a.burst, a.concurrency, a.sleep_ms))
    sys.path.insert(0, str(HERE))
    from report import command, machine, write_result

    setup = (
        f"One `duplex agent` process (concurrency {a.concurrency}) and the client in this process, on a local "
        f"redis-server. Overhead = submit → DONE delivered, minus the tool's own run time ({a.sleep_ms:g} ms sleep), "
        f"over {a.jobs} sequential jobs; throughput over a burst of {a.burst} jobs."
    )
    table = (
        "| overhead p50 ms | p90 ms | p99 ms | jobs/s (one worker process) |\n|---|---|---|---|\n"
        f"| {r['p50']:.2f} | {r['p90']:.2f} | {r['p99']:.2f} | {r['jobs_per_s']:.0f} |"
    )
    verdict = f"Target: overhead p50 ≤ 10 ms — **{'met' if r['p50'] <= 10 else 'missed'}**."
    body = (
        f"Command: `{command()}`  \nMachine: {machine()}  \nDate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f"\n\n{setup}\n\n{table}\n\n{verdict}"
    )
    print(body)
    if not a.no_write:
        write_result("agent", "Background agent", table, f"{setup}\n\n{verdict}")


if __name__ == "__main__":
    main()
