"""Regenerate the checked-in ``duplex.v1`` Python stubs from ``protos/duplex/v1/duplex.proto``.

python protos/generate.py            # writes duplex/v1/duplex_pb2{,_grpc}.py{,i}
python protos/generate.py --out DIR  # writes DIR/duplex/v1/... (the stub test compares the two)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = "duplex/v1/duplex.proto"


def generate(out: Path) -> None:
    (out / "duplex" / "v1").mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{ROOT / 'protos'}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(ROOT / "protos" / PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {PROTO}")
    # protoc's .pyi leaves generics bare and subclasses protobuf's untyped bases: keep `mypy --strict` of
    # the packages that import it about their own code (the types it declares are still used)
    pyi = out / "duplex" / "v1" / "duplex_pb2.pyi"
    pyi.write_text("# mypy: ignore-errors\n" + pyi.read_text())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT)
    generate(parser.parse_args(sys.argv[1:]).out)
