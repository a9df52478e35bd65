"""The checked-in duplex.v1 stubs are exactly what protoc generates from protos/duplex/v1/duplex.proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_match_proto(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)], check=True)
    for name in ("duplex_pb2.py", "duplex_pb2.pyi", "duplex_pb2_grpc.py"):
        fresh = (tmp_path / "duplex" / "v1" / name).read_bytes()
        committed = (ROOT / "duplex" / "v1" / name).read_bytes()
        assert fresh == committed, f"duplex/v1/{name} is stale: run `python protos/generate.py`"
