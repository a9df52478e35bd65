"""``duplex up`` with its background agent, as a user runs it: a local redis-server and one worker start with
it, ``duplex talk --call`` gets a DONE into its timeline, and Ctrl-C stops redis and the worker too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from serving.conftest import tone
from serving.test_cli import talk

from duplex.loadtest.local import DUPLEX, LocalUp
from duplex.model.audio_io import write_wav


def alive(pid: int) -> bool:
    """Is ``pid`` a live process (a zombie of ours counts as gone)?"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_up_runs_the_agent_and_talk_records_its_result(tmp_path: Path) -> None:
    up = LocalUp(tmp_path / "up.log")
    addr = up.start()
    try:
        agent = up.wait_for(r"redis-server pid (\d+) at (\S+), worker pid (\d+)")
        redis_pid, worker_pid = int(agent.group(1)), int(agent.group(3))
        assert alive(redis_pid) and alive(worker_pid)
        wav, out, tl, png = tmp_path / "in.wav", tmp_path / "out.wav", tmp_path / "t.json", tmp_path / "t.png"
        write_wav(wav, tone(1.0), 16000)
        calls = ["--call", 'calculator {"expression": "6 * 7"}', "--call", "clock"]
        r = talk(addr, wav, out, "--timeline", str(tl), "--plot", str(png), *calls)
        assert r.returncode == 0, r.stderr
        assert "duplex talk: c1 calculator DONE: 42" in r.stdout
        events = [e["agent"] for e in json.loads(tl.read_text())["events"] if "agent" in e]
        c1 = [e for e in events if e["call_id"] == "c1"]
        assert [e["state"] for e in c1] == ["QUEUED", "RUNNING", "DONE"] and c1[-1]["detail"] == "42"
        c2 = [e for e in events if e["call_id"] == "c2"]
        assert c2[-1]["state"] == "DONE" and c2[-1]["tool"] == "clock" and c2[-1]["detail"]
        assert png.stat().st_size > 1000
    finally:
        code = up.stop(signal.SIGINT)
    assert code == 0
    up.wait_for("duplex up: stopped", 5)
    assert not alive(redis_pid), "redis-server stopped with duplex up"
    assert not alive(worker_pid), "the agent worker stopped with duplex up"


def test_up_without_redis_server_says_how_to_go_on(tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    env = {**os.environ, "PATH": str(bare)}
    r = subprocess.run([*DUPLEX, "up", "--port", "0"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2
    assert "duplex up: redis-server not found on PATH (apt-get install redis-server), or pass --no-agent" in r.stderr


def test_talk_names_a_bad_call(tmp_path: Path) -> None:
    wav = tmp_path / "in.wav"
    write_wav(wav, tone(0.4), 16000)
    for call, problem in [
        ("calculator [1, 2]", "arguments must be a JSON object"),
        ('calculator {"expression": ', "arguments are not valid JSON"),
        ("   ", "expected 'TOOL {JSON object}'"),
    ]:
        r = talk("127.0.0.1:1", wav, tmp_path / "o.wav", "--call", call)
        assert r.returncode == 2, r.stderr
        assert f"duplex talk: --call {call!r}: {problem}" in r.stderr
