"""``duplex crd``, ``duplex render`` and ``duplex operator``. kopf is imported only when the operator runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml


def crd(
    peering: Annotated[bool, typer.Option(help="Also print kopf's ClusterKopfPeering CRD.")] = False,
    values_schema: Annotated[
        bool, typer.Option(help="Print the DuplexModel spec as a JSON Schema (Helm values.schema.json) instead.")
    ] = False,
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
        typer.echo(
            json.dumps(docs[0] if len(docs) == 1 else {"apiVersion": "v1", "kind": "List", "items": docs}, indent=2)
        )
    else:
        typer.echo(yaml.safe_dump_all(docs, sort_keys=False), nl=False)


def render(
    file: Annotated[
        Path,
        typer.Option(
            "--filename",
            "-f",
            help="DuplexModel manifest (YAML; several documents allowed)",
            exists=True,
            dir_okay=False,
        ),
    ],
    namespace: Annotated[
        str | None,
        typer.Option("--namespace", "-n", help="Namespace of the children (default: the manifest's, else default)"),
    ] = None,
    kube_version: Annotated[
        str | None,
        typer.Option(
            help="Render for this Kubernetes version (e.g. 1.20: "
            "policy/v1beta1 PDBs, autoscaling/v2beta2 HPAs); default "
            "current APIs"
        ),
    ] = None,
) -> None:
    """Print, offline, every child the operator would apply for a DuplexModel (a YAML stream, like `helm
    template`): for review, GitOps and scanners. Owner references are left out (the model has no uid yet)."""
    from .naming import API_VERSION, KIND, ModelRef
    from .render import ApiVersions, render_children
    from .resolve import InvalidSpec, parse_spec, resolve

    def fail(message: str) -> NoReturn:
        typer.echo(f"duplex render: {file}: {message}", err=True)
        raise typer.Exit(2)

    try:
        apis = ApiVersions.for_kube_version(kube_version) if kube_version else ApiVersions()
    except ValueError as e:
        fail(str(e))
    try:
        docs = [d for d in yaml.safe_load_all(file.read_text()) if d is not None]
    except yaml.YAMLError as e:
        fail(f"not YAML: {e}")
    out: list[dict[str, Any]] = []
    for i, doc in enumerate(docs):
        where = f"document {i + 1}" if len(docs) > 1 else "the manifest"
        if not isinstance(doc, dict) or (doc.get("apiVersion"), doc.get("kind")) != (API_VERSION, KIND):
            fail(f"{where}: expected apiVersion {API_VERSION}, kind {KIND}")
        meta = doc.get("metadata") or {}
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
            fail(f"{where}: metadata.name: a DuplexModel needs a name")
        ns = namespace or meta.get("namespace") or "default"
        try:
            resolved = resolve(parse_spec(doc.get("spec")))
        except InvalidSpec as e:
            fail(f"{meta['name']}: {e}")
        out += render_children(ModelRef(name=meta["name"], namespace=str(ns), uid=""), resolved, apis)
    typer.echo(yaml.dump_all(out, Dumper=_ReviewDumper, sort_keys=False), nl=False)


class _ReviewDumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's JSON files) as literal blocks, readable in review."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_ReviewDumper.add_representer(str, _str)


def operator(
    namespace: Annotated[
        list[str] | None, typer.Option("--namespace", "-n", help="Watch these namespaces (repeatable).")
    ] = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="Watch the whole cluster.")] = False,
    standalone: Annotated[bool, typer.Option(help="No peering: for tests and single-replica dev runs.")] = False,
    peering: Annotated[
        str,
        typer.Option(
            help="kopf peering name: operators sharing it elect one active "
            "replica (needs kopf's peering CRD: `duplex crd --peering`)."
        ),
    ] = "duplex-operator",
    priority: Annotated[int, typer.Option(help="Peering priority; the highest active replica wins.")] = 0,
    liveness: Annotated[
        str | None, typer.Option(help="Serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the DuplexModel operator (kopf). Settings: DUPLEX_OPERATOR_WORKERS, DUPLEX_OPERATOR_RESYNC_SECONDS,
    DUPLEX_KUBECONFIG (docs/operator.md)."""
    import logging

    import kopf

    from . import handlers
    from .settings import load_operator_settings

    if not namespace and not all_namespaces:
        typer.echo("error: pass --all-namespaces or --namespace NS", err=True)
        raise typer.Exit(2)
    try:
        settings = load_operator_settings()
    except ValueError as e:
        typer.echo(f"duplex operator: {e}", err=True)
        raise typer.Exit(2) from None
    handlers.register(settings)
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
    """Add ``crd``, ``render`` and ``operator`` to the ``duplex`` CLI."""
    app.command("crd")(crd)
    app.command("render")(render)
    app.command("operator")(operator)
