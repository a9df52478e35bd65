"""``duplex kserve``: the engine behind KServe's Open Inference (V2) protocol, served by the kserve SDK's own
``ModelServer`` (REST and gRPC). The Helm chart's ClusterServingRuntime runs
``duplex kserve --model-name={{.Name}} --model-dir=/mnt/models --http-port=8080 --grpc-port=8081``."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from duplex.model.spec import ModelSource

from .. import logs
from ..ports import free_port
from ..spec import EngineSpec

if TYPE_CHECKING:
    from kserve import ModelServer

RUNTIME_ARGS = ["--model-name={{.Name}}", "--model-dir=/mnt/models", "--http-port=8080", "--grpc-port=8081"]
"""The arguments the Helm chart's ClusterServingRuntime passes (KServe fills in ``{{.Name}}``); the two must
agree (tests/kserve/test_kserve_example.py parses these)."""
GRACE_S = 10
"""How long the ModelServer waits for in-flight requests on SIGTERM."""


@contextlib.contextmanager
def _argv_hidden() -> Iterator[None]:
    """Import kserve with an empty command line: ``kserve.model_server`` parses ``sys.argv`` at import time
    with argparse, whose prefix matching would read ``--config`` as its ``--configure_logging``."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def checkpoint_in(model_dir: Path) -> Path:
    """The one ``*.safetensors`` in ``model_dir`` (as KServe's storage initializer mounts it)."""
    found = sorted(model_dir.glob("*.safetensors"))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise ValueError(f"--model-dir {model_dir}: expected exactly one *.safetensors checkpoint, found {names}")
    return found[0]


def model_server(http_port: int, grpc_port: int) -> ModelServer:
    with _argv_hidden():
        from kserve import ModelServer
    return ModelServer(http_port=http_port, grpc_port=grpc_port, enable_grpc=True, grace_period=GRACE_S)


def kserve(
    model_name: str = typer.Option("duplex", help="Name of the model on the V2 endpoints (/v2/models/NAME)"),
    model_dir: Path | None = typer.Option(
        None,
        help="Directory holding one *.safetensors checkpoint (KServe mounts storageUri at /mnt/models); "
        "absent = model.uri, else the shipped checkpoint",
    ),
    http_port: int = typer.Option(8080, min=0, max=65535, help="V2 REST port (0 = any free port)"),
    grpc_port: int = typer.Option(8081, min=0, max=65535, help="V2 gRPC port (0 = any free port)"),
    config: Path | None = typer.Option(None, help='JSON {"engine": EngineSpec, "model": ModelSource}'),
    set_: list[str] = typer.Option([], "--set", help="Override a field: engine.max_sessions=32, model.seed=1"),
) -> None:
    """Serve the model over KServe's Open Inference (V2) protocol: a WAV in, model audio, text and turn
    events out, on the engine's batching scheduler (docs/kserve.md)."""
    from ..cli import load_command_config

    logs.setup()
    loaded = load_command_config("engine", config, set_)
    spec, source = loaded["engine"], loaded["model"]
    assert isinstance(spec, EngineSpec) and isinstance(source, ModelSource)
    try:
        if model_dir is not None and model_dir.exists():
            source = source.model_copy(update={"uri": str(checkpoint_in(model_dir))})
        # port 0 is resolved here: the SDK's servers do not report the port they bound
        http = http_port or free_port("0.0.0.0")
        grpc = grpc_port or free_port("0.0.0.0")
        with _argv_hidden():
            from .model import DuplexKServeModel
        model = DuplexKServeModel(model_name, spec, source)
        model.load()
    except (ValueError, OSError) as e:
        typer.echo(f"duplex kserve: {e}", err=True)
        raise typer.Exit(2) from None
    server = model_server(http, grpc)
    typer.echo(f"duplex kserve: model {model_name} on V2 REST port {http} and V2 gRPC port {grpc}")
    sys.stdout.flush()
    server.start([model])
