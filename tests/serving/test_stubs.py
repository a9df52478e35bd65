"""The checked-in stubs (duplex.v1, duplex.ext_authz.v3) are exactly what protoc generates from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_match_proto(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)], check=True)
    for stem in ("v1/duplex", "ext_authz/v3/external_auth"):
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            name = f"duplex/{stem}{suffix}"
            fresh = (tmp_path / name).read_bytes()
            committed = (ROOT / name).read_bytes()
            assert fresh == committed, f"{name} is stale: run `python protos/generate.py`"
