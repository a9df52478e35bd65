"""Regenerate the checked-in Python stubs: ``duplex.v1`` from ``protos/duplex/v1/duplex.proto`` and
``duplex.ext_authz.v3`` from ``protos/duplex/ext_authz/v3/external_auth.proto`` (the wire-compatible subset of
Envoy's ext_authz service that the session picker serves).

python protos/generate.py            # writes duplex/v1/duplex_pb2{,_grpc}.py{,i} and duplex/ext_authz/v3/...
python protos/generate.py --out DIR  # writes DIR/duplex/... (the stub test compares the two)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ("duplex/v1/duplex.proto", "duplex/ext_authz/v3/external_auth.proto")
WELL_KNOWN = Path(protoc.__file__).parent / "_proto"
"""google/protobuf/*.proto as shipped with grpcio-tools (the ext_authz subset imports wrappers.proto)."""


def generate(out: Path) -> None:
    for proto in PROTOS:
        folder = out / Path(proto).parent
        folder.mkdir(parents=True, exist_ok=True)
        args = [
            "protoc",
            f"-I{ROOT / 'protos'}",
            f"-I{WELL_KNOWN}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(ROOT / "protos" / proto),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")
        # protoc's .pyi leaves generics bare and subclasses protobuf's untyped bases: keep `mypy --strict` of
        # the packages that import it about their own code (the types it declares are still used)
        pyi = folder / (Path(proto).stem + "_pb2.pyi")
        pyi.write_text("# mypy: ignore-errors\n" + pyi.read_text())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT)
    generate(parser.parse_args(sys.argv[1:]).out)
