"""Coverage-guided fuzzing (atheris, libFuzzer) of the wire decoders a client's bytes go through.

    python bench/fuzz_wire.py                # 100,000 executions per target; prints, no write
    python bench/fuzz_wire.py --write        # the same, and writes bench/results/fuzzing.json

Targets (each in its own process, instrumented for coverage of the ``duplex`` modules only):
  grpc      ``ClientEvent`` protobuf parse (``validate.parse_event``) and the engine's validators in the order
            the engine's reader applies them (start, audio, video, text, agent)
  realtime  the Realtime endpoint's ``decode_client_event`` (a WebSocket text frame, as bytes)
Each starts from a seed corpus of valid events (and a dictionary of the Realtime protocol's tokens for the JSON
target). A crash is any exception but the decoder's own refusal (``InputError`` / ``ClientError``), or a
refusal whose message does not start with the field it names. libFuzzer's ``cov`` is the number of edges
(bytecode branches of the instrumented modules, and the C code of libFuzzer's own hooks) reached.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = ("grpc", "realtime")
REALTIME_TOKENS = [
    "type",
    "event_id",
    "session.update",
    "session",
    "realtime",
    "instructions",
    "tools",
    "function",
    "name",
    "audio",
    "input",
    "output",
    "format",
    "audio/pcm",
    "rate",
    "output_modalities",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.truncate",
    "response.create",
    "response.cancel",
    "item",
    "message",
    "role",
    "user",
    "content",
    "input_text",
    "text",
    "function_call",
    "function_call_output",
    "call_id",
    "arguments",
    "item_id",
    "content_index",
    "audio_end_ms",
]


# ------------------------------------------------------------------------------------------------- child side
def grpc_target() -> tuple[object, list[bytes]]:
    """The engine's reader over arbitrary bytes; the seeds are one valid event of each kind."""
    import atheris
    import grpc  # noqa: F401 - imported before instrumenting: only duplex code is instrumented
    import torch  # noqa: F401

    with atheris.instrument_imports(include=["duplex"]):
        from duplex.model.config import ModelConfig
        from duplex.model.family_duplex import DuplexServed
        from duplex.model.model import DuplexModel
        from duplex.serving.engine import validate as v
        from duplex.v1 import duplex_pb2 as pb

    cfg = ModelConfig()
    served = DuplexServed(DuplexModel(cfg))
    chunk_samples = cfg.frames_per_chunk(200) * cfg.frame_samples
    tools = ["clock", "calculator"]
    field_of = {"start": "start.", "audio": "audio.", "video": "video", "text": "text.text", "agent": "agent."}

    def one(data: bytes) -> None:
        ev = v.parse_event(data)
        kind: str | None = None
        try:
            kind = v.event_kind(ev)
            assert isinstance(ev, pb.ClientEvent)
            if kind == "start":
                v.check_start(ev.start, served, "tiny", 200, tools)
            elif kind == "audio":
                v.check_audio(ev.audio, 0, chunk_samples)
            elif kind == "video":
                v.check_video(ev.video, -1, cfg.video_size)
            elif kind == "text":
                v.check_text(ev.text, served)
            elif kind == "agent":
                v.check_agent(ev.agent)
        except v.InputError as e:
            if not e.message.startswith((field_of.get(kind or "", "ClientEvent"), "ClientEvent")):
                raise AssertionError(f"refusal does not name its field: {e.message!r}") from None

    seeds = [
        pb.ClientEvent(start=pb.SessionStart(format=pb.AudioFormat(sample_rate=16000, channels=1))),
        pb.ClientEvent(audio=pb.AudioChunk(seq=0, pcm=b"\x01\x00" * chunk_samples)),
        pb.ClientEvent(
            video=pb.VideoFrame(
                seq=0, rgb=b"\x80" * (cfg.video_size**2 * 3), width=cfg.video_size, height=cfg.video_size
            )
        ),
        pb.ClientEvent(text=pb.TextInput(text="hello")),
        pb.ClientEvent(agent=pb.AgentRequest(call_id="c1", tool="clock", arguments_json="{}")),
        pb.ClientEvent(end=pb.EndOfStream()),
    ]
    return one, [s.SerializeToString() for s in seeds]


def realtime_target() -> tuple[object, list[bytes]]:
    """The Realtime decoder over arbitrary bytes (a text frame); the seeds are the valid GA client events."""
    import atheris

    with atheris.instrument_imports(include=["duplex"]):
        from duplex.serving.realtime.events import decode_client_event
        from duplex.serving.realtime.protocol import ClientError

    def one(data: bytes) -> None:
        try:
            decode_client_event(data)
        except ClientError as e:
            if not e.message.startswith(e.param or "frame:"):
                raise AssertionError(f"refusal does not name its field: {e.param!r} {e.message!r}") from None

    sys.path.insert(0, str(HERE.parent / "tests"))
    from fuzz.test_realtime_events import valid_events

    return one, [json.dumps(e).encode() for e in valid_events()]


def child(target: str, runs: int, workdir: Path) -> None:
    import atheris

    target_one, seeds = grpc_target() if target == "grpc" else realtime_target()
    started: list[float] = []
    count = 0

    def one(data: bytes) -> None:
        nonlocal count
        if not started:
            started.append(time.perf_counter())
        target_one(data)  # type: ignore[operator]
        count += 1
        if count % 1000 == 0 or count == runs:  # libFuzzer's exec/s counts whole seconds; it exits from C
            print(f"fuzz_progress: {count} {time.perf_counter() - started[0]:.3f}", flush=True)

    corpus = workdir / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(seeds):
        (corpus / f"seed{i}").write_bytes(seed)
    args = [sys.argv[0], f"-runs={runs}", "-seed=1", f"-artifact_prefix={workdir}/", "-print_final_stats=1"]
    if target == "realtime":
        (workdir / "dict").write_text("".join(f'"\\"{t}\\""\n' for t in REALTIME_TOKENS))
        args.append(f"-dict={workdir / 'dict'}")
    atheris.Setup([*args, str(corpus)], one)  # type: ignore[arg-type]
    atheris.Fuzz()


# ------------------------------------------------------------------------------------------------ parent side
@dataclass
class Outcome:
    target: str
    runs: int
    seconds: float
    edges: int
    features: int
    exec_per_s: int
    crashes: int
    detail: str


def run_target(target: str, runs: int) -> Outcome:
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as tmp:
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", target, "--runs", str(runs), "--workdir", tmp],
            capture_output=True,
            text=True,
            errors="replace",
        )
        seconds = time.monotonic() - t0
        log = proc.stderr + proc.stdout
        done = re.search(r"Done (\d+) runs in", log)
        stats = re.findall(r"cov: (\d+) ft: (\d+)", log)
        crashed = proc.returncode != 0 or "Uncaught Python exception" in log
        detail = log[log.find("=== Uncaught Python exception") :][:3000] if crashed else ""
        if crashed and not detail:
            detail = log[-3000:]
        edges, features = (int(stats[-1][0]), int(stats[-1][1])) if stats else (0, 0)
        progress = re.findall(r"fuzz_progress: (\d+) ([0-9.]+)", log)
        runs_done = int(done.group(1)) if done else 0
        speed = int(int(progress[-1][0]) / float(progress[-1][1])) if progress and float(progress[-1][1]) > 0 else 0
        return Outcome(target, runs_done, seconds, edges, features, speed, int(crashed), detail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100_000, help="executions per target (libFuzzer -runs)")
    ap.add_argument("--target", choices=[*TARGETS, "all"], default="all")
    ap.add_argument("--write", action="store_true", help="write bench/results/fuzzing.json and docs/benchmarks.md")
    ap.add_argument("--child", choices=TARGETS, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.runs, args.workdir)
        return
    if args.runs < 1:
        ap.error("--runs: must be at least 1")
    outcomes = [run_target(t, args.runs) for t in (TARGETS if args.target == "all" else (args.target,))]
    rows = [
        "| target | executions | seconds (with start-up) | executions/s | edges (cov) | features (ft) | crashes |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        rows.append(
            f"| {o.target} | {o.runs} | {o.seconds:.1f} | {o.exec_per_s} | {o.edges} | {o.features} | {o.crashes} |"
        )
    table = "\n".join(rows)
    print(table)
    for o in outcomes:
        if o.crashes:
            print(f"\n{o.target} crashed:\n{o.detail}", file=sys.stderr)
    if args.write:
        sys.path.insert(0, str(HERE))
        from report import write_result

        about = (
            "Coverage-guided fuzzing (atheris 3, libFuzzer) of the wire decoders, each target in its own process "
            "from a seed corpus of valid events: `grpc` = `ClientEvent` protobuf parse + the engine's validators "
            "(serving/engine/validate.py), `realtime` = the Realtime endpoint's `decode_client_event` "
            "(serving/realtime/events.py). A crash is any exception but the decoder's own refusal, or a refusal "
            "whose message does not name its field. Edges are the instrumented branches of the `duplex` modules "
            "reached."
        )
        write_result("fuzzing", "Fuzzing", table, about)
    if any(o.crashes for o in outcomes):
        sys.exit(1)


if __name__ == "__main__":
    main()
