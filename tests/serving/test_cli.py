"""The commands as a user runs them, in subprocesses: ``duplex up`` + ``duplex talk``, and ``duplex engine``
from a rendered config, each stopped by a signal (``duplex picker`` and ``duplex envoy``:
test_front_commands.py)."""

from __future__ import annotations

import json
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from duplex.loadtest.local import DUPLEX, LocalUp
from duplex.model.audio_io import read_wav, write_wav
from duplex.serving import client
from duplex.serving.ports import free_port, free_port_pair

from .conftest import tone, wait_serving


class Proc:
    """A subprocess whose output lines are collected by a thread, so tests can wait for a line."""

    def __init__(self, args: list[str], stream: str = "stdout") -> None:
        self.p = subprocess.Popen([*DUPLEX, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        for s in (self.p.stdout, self.p.stderr):
            threading.Thread(target=self._pump, args=(s,), daemon=True).start()

    def _pump(self, s: object) -> None:
        for line in s:  # type: ignore[attr-defined]
            self.lines.put(line)

    def wait_for(self, pattern: str, deadline_s: float = 60.0) -> re.Match[str]:
        end = time.monotonic() + deadline_s
        for old in self.seen:
            if m := re.search(pattern, old):
                return m
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(line)
            if m := re.search(pattern, line):
                return m
        raise AssertionError(f"no line matching {pattern!r}; got:\n{''.join(self.seen)[-3000:]}")

    def stop(self, sig: int, deadline_s: float = 30.0) -> int:
        self.p.send_signal(sig)
        return self.p.wait(timeout=deadline_s)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def talk(target: str, wav: Path, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """``duplex talk --target TARGET --input WAV --output OUT FLAGS…`` as a user runs it (output captured)."""
    args = ["talk", "--target", target, "--input", str(wav), "--output", str(out), *flags]
    return subprocess.run([*DUPLEX, *args], capture_output=True, text=True, timeout=120)


def test_up_and_talk(tmp_path: Path) -> None:
    mport = free_port_pair()  # the engine's /metrics, and the session picker's on mport + 1
    up = LocalUp(tmp_path / "up.log", ["--metrics-port", str(mport)])
    addr = up.start()
    try:
        wav = tmp_path / "in.wav"
        write_wav(wav, tone(1.5, sr=22050), 22050)  # talk resamples to 16 kHz
        out, tl, png = tmp_path / "out.wav", tmp_path / "t.json", tmp_path / "t.png"
        r = talk(addr, wav, out, "--timeline", str(tl), "--plot", str(png), "--fast")
        assert r.returncode == 0, r.stderr
        assert "duplex talk: converting in.wav 22050 Hz mono → 16000 Hz mono (soxr HQ)" in r.stderr
        recorded = read_wav(out)
        assert recorded.rate == 16000 and recorded.channels == 1 and len(recorded.samples) >= int(1.5 * 16000)
        timeline = json.loads(tl.read_text())
        assert timeline["status"] == "OK"
        seqs = [e["audio"].get("seq", "0") for e in timeline["events"] if "audio" in e]
        assert [int(s) for s in seqs] == list(range(8))
        assert "ready" in timeline["events"][0]
        assert png.stat().st_size > 1000
        engine_metrics, picker_metrics = scrape(mport), scrape(mport + 1)
        assert "duplex_engine_step_seconds_count" in engine_metrics
        assert 'duplex_engine_chunks_total{kind="on_time"} 8.0' in engine_metrics
        assert "duplex_engine_active_sessions 0.0" in engine_metrics
        assert "duplex_engine_queue_wait_seconds_bucket" in engine_metrics
        assert 'duplex_picker_checks_total{code="OK"} 1.0' in picker_metrics  # Envoy asked it once
        model_time = tmp_path / "model_time.wav"
        r = talk(addr, wav, model_time, "--model-time", "--fast")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().endswith("(model time)")
        assert len(read_wav(model_time).samples) == 8 * 3200  # to the last chunk's end, not to an arrival time
    finally:
        code = up.stop(signal.SIGINT)
    assert code == 0
    up.wait_for("duplex up: stopped", 5)
    host, port = addr.rsplit(":", 1)
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=5):
        pass  # Envoy's process is gone too


def test_up_on_a_busy_port_says_so() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([*DUPLEX, "up", "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert f"duplex up: cannot bind 127.0.0.1:{port} (Address already in use)" in r.stderr


def test_up_with_one_port_for_both_listeners_says_so() -> None:
    port = free_port()
    argv = [*DUPLEX, "up", "--port", str(port), "--http-port", str(port)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert f"--http-port {port} is also --port" in r.stderr


def test_engine_from_config(tmp_path: Path) -> None:
    cfg = tmp_path / "engine.json"
    cfg.write_text(
        json.dumps(
            {
                "engine": {"host": "127.0.0.1", "metrics_port": 0, "max_sessions": 4},
                "model": {"preset": "tiny", "seed": 3},
            }
        )
    )
    engine = Proc(["engine", "--config", str(cfg), "--port", "0"])
    try:
        eaddr = engine.wait_for(r"engine serving tiny on (127\.0\.0\.1:\d+)").group(1)
        wait_serving(eaddr)

        async def talk() -> client.Conversation:
            async with grpc.aio.insecure_channel(eaddr) as ch:
                return await client.converse(ch, client.split_chunks(tone(0.4), 3200), realtime=False)

        import asyncio

        conv = asyncio.run(talk())
        assert conv.code == grpc.StatusCode.OK and conv.audio_seqs() == [0, 1]
    finally:
        assert engine.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("flag", ["--help-spec"])
def test_engine_spec_flags_are_listed(flag: str) -> None:
    r = subprocess.run([*DUPLEX, "engine", flag], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert "EngineSpec.cohorts" in r.stdout and "ModelSource.preset" in r.stdout


def test_sharded_replica_two_ranks(tmp_path: Path) -> None:
    """Rank 1 holds half the experts; rank 0 serves gRPC; stopping rank 0 releases rank 1."""
    leader = f"127.0.0.1:{free_port()}"
    mport = free_port()
    rank1 = Proc(
        [
            "engine",
            "--world-size",
            "2",
            "--rank",
            "1",
            "--leader",
            leader,
            "--set",
            "engine.host=127.0.0.1",
            "--set",
            f"engine.metrics_port={mport}",
        ]
    )
    rank0 = Proc(
        [
            "engine",
            "--world-size",
            "2",
            "--rank",
            "0",
            "--leader",
            leader,
            "--port",
            "0",
            "--set",
            "engine.host=127.0.0.1",
            "--set",
            "engine.metrics_port=0",
        ]
    )
    try:
        addr = rank0.wait_for(r"engine serving tiny on (127\.0\.0\.1:\d+)").group(1)
        rank1.wait_for("rank 1/2 serving experts")

        async def talk() -> client.Conversation:
            async with grpc.aio.insecure_channel(addr) as ch:
                return await client.converse(ch, client.split_chunks(tone(0.6), 3200), realtime=False)

        import asyncio

        conv = asyncio.run(talk())
        assert conv.code == grpc.StatusCode.OK and conv.audio_seqs() == [0, 1, 2]
        rank1_metrics = scrape(mport)  # rank 1 computed its experts for those steps and says so
        count = re.search(r"^duplex_engine_expert_seconds_count (\S+)$", rank1_metrics, re.M)
        assert count is not None and float(count.group(1)) > 0
    finally:
        assert rank0.stop(signal.SIGTERM) == 0
    assert rank1.p.wait(timeout=30) == 0


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["engine", "--set", "engine.max_sessions=abc"], "engine.max_sessions"),
        (["engine", "--set", "engine.chunk_ms=20"], "engine.chunk_ms"),
        (["engine", "--set", "model.bogus=1"], "model.bogus"),
        (["up", "--cfg-coef", "0.5", "--port", "0", "--no-agent"], "cfg_coef"),
        (["engine", "--set", "agent.workers=1"], "unknown section 'agent'"),
        (["engine", "--set", "max_sessions=1"], "expected SECTION.FIELD=VALUE"),
        (["picker", "--eds-path", "e.json", "--set", "gateway.port=0x"], "gateway.port"),
    ],
)
def test_bad_settings_name_the_field(args: list[str], field: str) -> None:
    r = subprocess.run([*DUPLEX, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert field in r.stderr and "Traceback" not in r.stderr


def test_bad_config_file_names_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "engine.json"
    cfg.write_text(json.dumps({"engine": {"maxSessions": 0}, "model": {"seed": -1}}))
    r = subprocess.run([*DUPLEX, "engine", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert f"--config {cfg}: engine.max_sessions: Input should be greater than or equal to 1" in r.stderr
    r = subprocess.run(
        [*DUPLEX, "engine", "--config", str(tmp_path / "missing.json")], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "no such file" in r.stderr


def test_load_section_layers_set_over_the_file(tmp_path: Path) -> None:
    """The shared loader other commands call: file section, then --set on top (nested fields, lists)."""
    from duplex.model.spec import ModelSource
    from duplex.serving.settings import ConfigError, load_section
    from duplex.serving.spec import EngineSpec, GatewaySpec

    cfg = tmp_path / "engine.json"
    cfg.write_text(
        json.dumps({"engine": {"max_sessions": 4, "resources": {"cpu": "3", "memory": "1Gi"}}, "model": {"seed": 3}})
    )
    sets = ["engine.max_sessions=32", "engine.resources.cpu=4", 'engine.tools=["clock"]', "model.seed=5"]
    spec = load_section(cfg, sets, "engine", EngineSpec, known_sections=["model"])
    assert (spec.max_sessions, spec.resources.cpu, spec.resources.memory, spec.tools) == (32, "4", "1Gi", ["clock"])
    assert load_section(cfg, sets, "model", ModelSource, known_sections=["engine"]).seed == 5
    assert load_section(cfg, [], "model", ModelSource).seed == 3
    assert load_section(None, ["gateway.engines=a:1,b:2"], "gateway", GatewaySpec).engines == ["a:1", "b:2"]
    with pytest.raises(ConfigError, match="unknown section 'model'"):
        load_section(cfg, sets, "engine", EngineSpec)
