"""``duplex crd`` and ``duplex operator``. kopf is imported only when the operator runs."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
import yaml


def crd(
    peering: Annotated[bool, typer.Option(help="Also print kopf's ClusterKopfPeering CRD.")] = False,
    values_schema: Annotated[bool, typer.Option(help="Print the DuplexModel spec as a JSON Schema "
                                                "(Helm values.schema.json) instead.")] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="yaml or json")] = "yaml",
) -> None:
    """Print the DuplexModel CustomResourceDefinition (generated from the typed spec)."""
    from .crd import crd_manifest, kopf_peering_crd
    from .schema import values_json_schema
    from .spec import DuplexModelSpec

    if values_schema:
        typer.echo(json.dumps(values_json_schema(DuplexModelSpec), indent=2))
        return
    docs = [crd_manifest(), *([kopf_peering_crd()] if peering else [])]
    if output == "json":
        typer.echo(json.dumps(docs[0] if len(docs) == 1 else {"apiVersion": "v1", "kind": "List", "items": docs},
                              indent=2))
    else:
        typer.echo(yaml.safe_dump_all(docs, sort_keys=False), nl=False)


def operator(
    namespace: Annotated[list[str] | None, typer.Option("--namespace", "-n",
                                                        help="Watch these namespaces (repeatable).")] = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="Watch the whole cluster.")] = False,
    standalone: Annotated[bool, typer.Option(help="No peering: for tests and single-replica dev runs.")] = False,
    peering: Annotated[str, typer.Option(help="kopf peering name: operators sharing it elect one active "
                                         "replica (needs kopf's peering CRD: `duplex crd --peering`).")]
    = "duplex-operator",
    priority: Annotated[int, typer.Option(help="Peering priority; the highest active replica wins.")] = 0,
    liveness: Annotated[str | None, typer.Option(help="Serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")]
    = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the DuplexModel operator (kopf)."""
    import logging

    import kopf

    from . import handlers  # registers the handlers

    _ = handlers
    if not namespace and not all_namespaces:
        typer.echo("error: pass --all-namespaces or --namespace NS", err=True)
        raise typer.Exit(2)
    kopf.configure(verbose=verbose)
    logging.getLogger("duplex.operator").setLevel(logging.DEBUG if verbose else logging.INFO)
    try:
        kopf.run(
            standalone=standalone,
            peering_name=None if standalone else peering,
            priority=priority,
            clusterwide=all_namespaces,
            namespaces=namespace or (),
            liveness_endpoint=liveness,
        )
    except KeyboardInterrupt:  # pragma: no cover - interactive stop
        sys.exit(0)


def register(app: typer.Typer) -> None:
    """Add ``crd`` and ``operator`` to the ``duplex`` CLI."""
    app.command("crd")(crd)
    app.command("operator")(operator)
