"""The Moshi family (Moshi, PersonaPlex, Hibiki) through the operator: resolve, render, status, and the
checkpoint volume (``spec.checkpoint``) every family can use. Pure: no cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from duplex.cli import app
from duplex.model.config import ModelError
from duplex.model.moshi import CHUNKS_MS
from duplex.model.spec import ModelSource
from duplex.operator import resolve as resolve_module
from duplex.operator.crd import crd_manifest
from duplex.operator.naming import ModelRef
from duplex.operator.render import ApiVersions, render_children
from duplex.operator.render.common import Manifest
from duplex.operator.resolve import InvalidSpec, Resolved, parse_spec, resolve
from duplex.operator.status import compute_status, observe, shard_plan_status
from duplex.serving.spec import EngineSpec

K8S_VERSION = kubernetes_validate.latest_version()
REF = ModelRef(name="talk", namespace="prod", uid="0f0e-uid")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "08-moshi-gpu.yaml"
GIB = 1024**3

MOSHI_GPU: dict[str, Any] = {
    "model": {"family": "moshi", "uri": "/models/moshiko", "dtype": "bfloat16", "temperature": 0.7, "topK": 250},
    "checkpoint": {"claimName": "moshi-weights"},
    "engine": {"device": "cuda", "chunkMs": 80, "gpusPerShard": 1, "gpuMemoryGib": 80, "maxSessions": 32},
    "replicas": 2,
}
MOSHI_CPU: dict[str, Any] = {
    "model": {"family": "personaplex", "uri": "/srv/models/personaplex"},
    "checkpoint": {"hostPath": "/srv/models", "mountPath": "/srv/models"},
    "engine": {"device": "cpu", "chunkMs": 160, "shards": "auto"},
}


def with_(base: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    """``base`` with some of its sections' fields replaced."""
    return {**base, **{k: {**base.get(k, {}), **v} for k, v in sections.items()}}


def render(raw: dict[str, Any]) -> list[Manifest]:
    return render_children(REF, resolve(parse_spec(raw)), ApiVersions())


def by_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def problems_of(raw: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(InvalidSpec) as err:
        resolve(parse_spec(raw))
    return [(p.field, p.message) for p in err.value.problems]


@pytest.mark.parametrize(
    ("raw", "field", "text"),
    [
        (with_(MOSHI_GPU, engine={"shards": 2}), "spec.engine.shards", "a Moshi-family model runs on one rank"),
        (with_(MOSHI_GPU, engine={"shards": 0}), "spec.engine.shards", "one rank"),
        (with_(MOSHI_GPU, engine={"chunkMs": 200}), "spec.engine.chunkMs", "80, 160, 240, 320, 400"),
        (with_(MOSHI_CPU, model={"uri": None}, checkpoint={"hostPath": ""}), "spec.model.uri", "checkpoint directory"),
        (with_(MOSHI_GPU, model={"uri": "/models/moshi.safetensors"}), "spec.model.uri", "a directory"),
        (with_(MOSHI_GPU, model={"uri": "hf://kyutai/moshiko"}), "spec.model.uri", "only paths inside the pod"),
        (with_(MOSHI_GPU, model={"cfgCoef": 3}), "spec.model.cfgCoef", "applies to Hibiki"),
        ({"model": {"cfgCoef": 3}}, "spec.model.cfgCoef", "Moshi family"),
        (with_(MOSHI_GPU, model={"family": "auto"}), "spec.model.family", "name the family"),
        ({"model": {"temperature": 0.5}}, "spec.model.temperature", "Moshi family"),
        ({"model": {"family": "duplex", "topK": 10}}, "spec.model.topK", "Moshi family"),
        ({"model": {"family": "duplex", "voice": "NATF2"}}, "spec.model.voice", "applies to PersonaPlex"),
        (with_(MOSHI_GPU, model={"persona": "Be kind."}), "spec.model.persona", "a moshi model takes no persona"),
        (with_(MOSHI_GPU, engine={"maxSessions": 64}), "spec.engine.maxSessions", "fit 80 GiB: at most 38"),
        (
            with_(MOSHI_GPU, model={"dtype": "float32"}, engine={"maxSessions": 32}),
            "spec.engine.maxSessions",
            "at most 14",
        ),
        (with_(MOSHI_GPU, engine={"gpuMemoryGib": 16}), "spec.engine.gpuMemoryGib", "no room"),
        (with_(MOSHI_GPU, checkpoint={"hostPath": "/srv/models"}), "spec.checkpoint.hostPath", "not both"),
        (with_(MOSHI_GPU, checkpoint={"mountPath": "/weights"}), "spec.model.uri", "not under"),
        (with_(MOSHI_GPU, model={"uri": "/models/../etc/m"}), "spec.model.uri", "not under"),
        (
            with_(MOSHI_GPU, checkpoint={"mountPath": "/tmp/m"}, model={"uri": "/tmp/m/moshiko"}),
            "spec.checkpoint.mountPath",
            "overlaps",
        ),
        (
            with_(MOSHI_CPU, checkpoint={"hostPath": "srv/models"}),
            "spec.checkpoint.hostPath",
            "absolute",
        ),
        ({"checkpoint": {"claimName": "weights"}}, "spec.model.uri", "never read it"),
    ],
)
def test_each_problem_names_its_field(raw: dict[str, Any], field: str, text: str) -> None:
    problems = problems_of(raw)
    assert any(f == field and text in m for f, m in problems), problems


def test_a_moshi_problem_is_the_only_one_for_a_spec_with_one_mistake() -> None:
    assert [f for f, _ in problems_of(with_(MOSHI_GPU, engine={"shards": 4}))] == ["spec.engine.shards"]
    # The duplex preset machinery is not consulted: a Moshi spec's default preset and chunk rules do not apply.
    assert resolve(parse_spec(with_(MOSHI_GPU, model={"preset": "no-such-preset"}))).family == "moshi"


def test_every_moshi_chunk_length_is_served() -> None:
    for chunk in CHUNKS_MS:
        assert resolve(parse_spec(with_(MOSHI_CPU, engine={"chunkMs": chunk}))).shards == 1


def test_auto_family_is_duplex_for_a_safetensors_file_or_no_uri() -> None:
    assert resolve(parse_spec({})).family == "duplex"
    file = {"model": {"uri": "/models/tiny.safetensors"}, "checkpoint": {"claimName": "w"}}
    resolved = resolve(parse_spec(file))
    assert resolved.family == "duplex" and resolved.config is not None
    # the checkpoint volume serves the duplex family too
    c = by_kind(render(file), "StatefulSet")[0]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "checkpoint", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]


def test_a_moshi_spec_renders_one_single_rank_statefulset_per_replica() -> None:
    out = render(MOSHI_GPU)
    for m in out:
        kubernetes_validate.validate(m, K8S_VERSION, strict=True)
    sts = by_kind(out, "StatefulSet")
    assert [s["metadata"]["name"] for s in sts] == ["talk-engine-0", "talk-engine-1"]
    for s in sts:
        assert s["spec"]["replicas"] == 1
        pod = s["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["args"][:4] == ["engine", "--rank-from-hostname", "--world-size", "1"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert c["resources"]["requests"]["nvidia.com/gpu"] == "1"
        assert {"name": "checkpoint", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]
        assert {
            "name": "checkpoint",
            "persistentVolumeClaim": {"claimName": "moshi-weights", "readOnly": True},
        } in pod["volumes"]
    engine_json = json.loads(by_kind(out, "ConfigMap")[0]["data"]["engine.json"])
    model = ModelSource.model_validate(engine_json["model"])  # what `duplex engine --config` parses
    assert (model.family, model.uri, model.temperature, model.top_k) == ("moshi", "/models/moshiko", 0.7, 250)
    engine = EngineSpec.model_validate(engine_json["engine"])
    assert (engine.shards, engine.chunk_ms, engine.max_sessions) == (1, 80, 32)


def test_a_host_path_checkpoint_is_mounted_read_only() -> None:
    out = render(MOSHI_CPU)
    pod = by_kind(out, "StatefulSet")[0]["spec"]["template"]["spec"]
    assert {"name": "checkpoint", "hostPath": {"path": "/srv/models", "type": "Directory"}} in pod["volumes"]
    c = pod["containers"][0]
    assert {"name": "checkpoint", "mountPath": "/srv/models", "readOnly": True} in c["volumeMounts"]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    plain = by_kind(render({}), "StatefulSet")[0]["spec"]["template"]["spec"]  # no spec.checkpoint: no volume
    assert "checkpoint" not in {v["name"] for v in plain["volumes"]}


def test_status_of_a_moshi_replica_on_a_gpu() -> None:
    resolved = resolve(parse_spec(MOSHI_GPU))
    assert resolved.moshi_plan is not None and resolved.config is None
    plan = resolved.moshi_plan
    status = shard_plan_status(resolved)
    assert (status.shards, status.source, status.family, status.experts_per_shard) == (1, "spec", "moshi", 0)
    assert status.bytes_per_shard == plan.weight_bytes + 32 * plan.session_bytes <= 80 * GIB
    assert status.max_sessions_fit == plan.sessions == 38
    assert status.total_params == plan.lm_params + plan.mimi_params > 7e9
    sts = [
        {
            "metadata": {"name": f"talk-engine-{i}", "generation": 1, "labels": {"duplex.ai/replica": str(i)}},
            "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1},
        }
        for i in range(2)
    ]
    front = {**sts[0], "metadata": {"name": "talk-front", "generation": 1}}
    out = compute_status(REF, resolved, observe(sts, [front], "talk.prod.svc:8080"), 1, None)
    assert {c["type"]: c["status"] for c in out["conditions"]}["Ready"] == "True"
    assert out["shardPlan"]["family"] == "moshi" and out["shardPlan"]["maxSessionsFit"] == 38


def test_status_of_a_moshi_replica_on_cpu_is_not_planned() -> None:
    resolved = resolve(parse_spec(MOSHI_CPU))
    assert resolved.moshi_plan is None and resolved.shards_source == "planner"  # shards: auto -> 1
    status = shard_plan_status(resolved)
    assert (status.shards, status.family, status.bytes_per_shard, status.total_params) == (1, "personaplex", 0, 0)
    assert status.max_sessions_fit is None


def test_the_session_plan_is_computed_once_per_memory_and_dtype() -> None:
    a = resolve(parse_spec(MOSHI_GPU)).moshi_plan
    hits = resolve_module._moshi_7b_plan.cache_info().hits
    b = resolve(parse_spec(with_(MOSHI_GPU, engine={"maxSessions": 1}))).moshi_plan
    assert a is b and resolve_module._moshi_7b_plan.cache_info().hits == hits + 1


def test_without_the_upstream_package_the_session_check_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*args: object, **kwargs: object) -> None:
        raise ModelError("the Moshi family needs the upstream moshi package")

    monkeypatch.setattr(resolve_module, "plan_moshi", missing)
    raw = with_(MOSHI_GPU, engine={"gpuMemoryGib": 77.5, "maxSessions": 500})  # a memory nothing cached
    resolved = resolve(parse_spec(raw))
    assert resolved.moshi_plan is None and shard_plan_status(resolved).bytes_per_shard == 0


def test_the_crd_names_the_new_fields_in_camel_case() -> None:
    spec = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    model = spec["model"]["properties"]
    assert {"family", "uri", "temperature", "topK"} <= set(model) and "top_k" not in model
    assert model["family"]["enum"] == ["auto", "duplex", "moshi", "personaplex", "hibiki"]
    checkpoint = spec["checkpoint"]["properties"]
    assert set(checkpoint) == {"claimName", "hostPath", "mountPath"}
    assert checkpoint["mountPath"]["default"] == "/models"
    assert all(p["description"] for p in checkpoint.values())


def test_the_example_fits_its_plan_and_renders_from_the_cli() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    resolved: Resolved = resolve(parse_spec(doc["spec"]))
    assert resolved.family == "moshi" and resolved.moshi_plan is not None
    assert doc["spec"]["engine"]["maxSessions"] <= resolved.moshi_plan.sessions
    result = CliRunner().invoke(app, ["render", "-f", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    assert sts["spec"]["replicas"] == 1
    pod = sts["spec"]["template"]["spec"]
    assert {"name": "checkpoint", "mountPath": "/models", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    assert (
        json.loads(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["engine.json"])["model"]["family"]
        == "moshi"
    )


def test_hibiki_renders_with_its_guidance_and_no_moshi_7b_session_check(tmp_path: Path) -> None:
    """Hibiki's shape is its checkpoint's (1B, 2B), which the operator does not read: its ``maxSessions`` is not
    held to the Moshi-7B plan; ``cfgCoef`` reaches the engine's model spec."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["model"].update(family="hibiki", uri="/models/hibiki", cfgCoef=3.0)
    doc["spec"]["engine"]["maxSessions"] = 500  # far beyond the Moshi-7B plan for 80 GiB
    resolved = resolve(parse_spec(doc["spec"]))
    assert resolved.family == "hibiki" and resolved.moshi_plan is None
    manifest = tmp_path / "hibiki.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(app, ["render", "-f", str(manifest)])
    assert result.exit_code == 0, result.output
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    model = json.loads(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["engine.json"])["model"]
    assert (model["family"], model["cfg_coef"]) == ("hibiki", 3.0)
    assert ModelSource.model_validate(model).cfg_coef == 3.0


def test_a_personaplex_voice_and_persona_reach_the_engine_config() -> None:
    raw = with_(MOSHI_GPU, model={"family": "personaplex", "voice": "NATF2", "persona": "You are Jane."})
    engine_json = json.loads(by_kind(render(raw), "ConfigMap")[0]["data"]["engine.json"])
    model = ModelSource.model_validate(engine_json["model"])  # what `duplex engine --config` parses
    assert (model.family, model.voice, model.persona) == ("personaplex", "NATF2", "You are Jane.")
    crd = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert crd["model"]["properties"]["persona"]["maxLength"] == 4096
    assert "PersonaPlex" in crd["model"]["properties"]["voice"]["description"]
