"""examples/07-kserve.yaml, checked against the kserve SDK's own generated models (and the Kubernetes client's
for the core types they embed), and the command line the chart's ClusterServingRuntime runs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kserve
import kubernetes.client
import typer.main
import yaml

from duplex.cli import app
from duplex.serving.kserve.cli import RUNTIME_ARGS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "07-kserve.yaml"
RUNTIME_TEMPLATE = ROOT / "charts" / "duplex" / "templates" / "kserve-runtime.yaml"
NATIVE = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object, "datetime": str}


def model_class(name: str) -> Any:
    """A generated model class by name: kserve's own, else the Kubernetes client's (V1ObjectMeta, ...).
    kserve's ApiClient.deserialize looks only in ``kserve.models`` and fails on the core types."""
    return getattr(kserve.models, name, None) or getattr(kubernetes.client.models, name)


def build(value: Any, type_name: str, where: str) -> Any:
    """``value`` as ``type_name`` of the generated models, failing on any key the model does not have."""
    if m := re.fullmatch(r"[lL]ist\[(.+)\]", type_name):
        assert isinstance(value, list), where
        return [build(v, m[1], f"{where}[{i}]") for i, v in enumerate(value)]
    if m := re.fullmatch(r"dict\(str, (.+)\)|Dict\[str, (.+)\]", type_name):
        assert isinstance(value, dict), where
        return {k: build(v, m[1] or m[2], f"{where}.{k}") for k, v in value.items()}
    if type_name in NATIVE:
        assert isinstance(value, NATIVE[type_name]), f"{where}: {value!r} is not {type_name}"
        return value
    klass = model_class(type_name)
    assert isinstance(value, dict), f"{where}: expected an object ({type_name})"
    by_key = {key: attr for attr, key in klass.attribute_map.items()}
    unknown = set(value) - set(by_key)
    assert not unknown, f"{where}: {sorted(unknown)} are not fields of {type_name}"
    kwargs = {by_key[k]: build(v, klass.openapi_types[by_key[k]], f"{where}.{k}") for k, v in value.items()}
    return klass(**kwargs)


def contains(big: Any, small: Any) -> bool:
    """Every key and value of ``small`` is in ``big`` (recursively; lists element by element)."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and contains(big[k], v) for k, v in small.items())
    if isinstance(small, list):
        return isinstance(big, list) and len(big) == len(small) and all(map(contains, big, small))
    return bool(big == small)


def test_example_is_an_inference_service_on_the_duplex_runtime() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    isvc = build(doc, "V1beta1InferenceService", "07-kserve.yaml")
    assert isinstance(isvc, kserve.V1beta1InferenceService)
    assert (isvc.api_version, isvc.kind) == (f"{kserve.constants.KSERVE_GROUP}/v1beta1", "InferenceService")
    model = isvc.spec.predictor.model
    assert model.model_format.name == "duplex" and model.runtime == "duplex"
    assert model.protocol_version == "v2"
    assert model.storage_uri and "://" in model.storage_uri
    # the SDK serialises it back to a superset of the document (it adds defaults such as model.name ""):
    # nothing was dropped or renamed
    assert contains(kserve.ApiClient().sanitize_for_serialization(isvc), doc)


def test_runtime_command_line_and_example_args_are_flags_of_duplex_kserve() -> None:
    """The ClusterServingRuntime's arguments plus the example's ``args`` parse as ``duplex kserve`` options."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    args = [a.replace("{{.Name}}", "duplex-tiny") for a in RUNTIME_ARGS] + doc["spec"]["predictor"]["model"]["args"]
    command = typer.main.get_command(app).commands["kserve"]  # type: ignore[attr-defined]
    ctx = command.make_context("kserve", args)
    assert ctx.params["model_name"] == "duplex-tiny"
    assert str(ctx.params["model_dir"]) == "/mnt/models"
    assert (ctx.params["http_port"], ctx.params["grpc_port"]) == (8080, 8081)
    assert ctx.params["set_"] == ["engine.device=cpu", "engine.cohorts=1"]


def test_the_charts_serving_runtime_runs_exactly_these_arguments() -> None:
    """The chart's ClusterServingRuntime template: ``duplex kserve`` with ``RUNTIME_ARGS``, for model format
    ``duplex`` over protocol v2 (what the example selects)."""
    template = RUNTIME_TEMPLATE.read_text()
    args_block = template.split("args:", 1)[1].split("env:", 1)[0]
    args = [m[1] for m in re.finditer(r"^\s*- (.+)$", args_block, re.MULTILINE)]
    assert args == ["kserve", *(a.replace("{{.Name}}", '{{ "{{.Name}}" }}') for a in RUNTIME_ARGS)]
    assert re.search(r"supportedModelFormats:\s*- name: duplex", template)
    assert "protocolVersions: [v2]" in template
