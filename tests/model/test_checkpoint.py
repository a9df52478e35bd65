from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from duplex.model import checkpoint
from duplex.model.checkpoint import CheckpointError
from duplex.model.config import ModelConfig, get_preset
from duplex.model.model import DuplexModel, ExpertShard


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_model: DuplexModel) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    checkpoint.save(tiny_model, path, metadata={"note": "test"})
    return path


def test_round_trip_is_exact(ckpt: Path, tiny_model: DuplexModel) -> None:
    loaded = checkpoint.load(ckpt)
    assert isinstance(loaded, DuplexModel)
    ref = tiny_model.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(ref)
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    assert checkpoint.read_metadata(ckpt)["note"] == "test"
    assert checkpoint.read_config(ckpt) == tiny_model.cfg
    # buffers that are not stored are rebuilt
    torch.testing.assert_close(loaded.inputs.audio.mel, tiny_model.inputs.audio.mel)


@pytest.mark.parametrize("world", [2, 4])
def test_each_rank_loads_only_its_part(ckpt: Path, tiny_model: DuplexModel, world: int) -> None:
    full = tiny_model.state_dict()
    per = tiny_model.cfg.n_experts // world
    for rank in range(world):
        part = checkpoint.load(ckpt, rank=rank, world_size=world)
        sd = part.state_dict()
        if rank == 0:
            assert isinstance(part, DuplexModel)
            dense = [k for k in full if ".moe.experts." not in k]
            assert all(torch.equal(sd[k], full[k]) for k in dense)
        else:
            assert isinstance(part, ExpertShard)
            assert all(".moe.experts." in k for k in sd)  # no dense weight on ranks > 0
        for k, v in sd.items():
            if ".moe.experts." in k:
                assert v.shape[0] == per
                assert torch.equal(v, full[k][rank * per : (rank + 1) * per])


def test_bfloat16_storage_halves_size_and_loads_as_float32(tmp_path: Path, tiny_model: DuplexModel) -> None:
    p32, p16 = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    checkpoint.save(tiny_model, p32)
    checkpoint.save(tiny_model, p16, dtype=torch.bfloat16)
    assert p16.stat().st_size < 0.51 * p32.stat().st_size
    assert p16.stat().st_size < 20 * 1024 * 1024  # the shipped checkpoint's budget
    m = checkpoint.load(p16)
    w = next(m.parameters())
    assert w.dtype == torch.float32


def test_mismatched_config_is_named(ckpt: Path) -> None:
    tiny = get_preset("tiny")
    other = ModelConfig(**{**tiny.model_dump(), "n_layers": 6, "name": "six"})
    with pytest.raises(CheckpointError, match=rf"n_layers: checkpoint {tiny.n_layers} vs expected 6"):
        checkpoint.load(ckpt, expected=other)


def test_missing_and_misshapen_tensors_are_named(tmp_path: Path, tiny_model: DuplexModel, tiny: ModelConfig) -> None:
    sd = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    meta = {"format": checkpoint.FORMAT, "config": tiny.to_json()}
    missing = dict(sd)
    del missing["audio_head.weight"]
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match=r"lacks tensors.*audio_head\.weight"):
        checkpoint.load(tmp_path / "missing.safetensors")
    bad = dict(sd)
    bad["text_head.weight"] = torch.zeros(3, 3)
    save_file(bad, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match=r"text_head.weight has shape \(3, 3\)"):
        checkpoint.load(tmp_path / "bad.safetensors")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        checkpoint.load(junk)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="format None"):
        checkpoint.load(foreign)


def test_shard_count_must_divide_experts(ckpt: Path) -> None:
    with pytest.raises(ValueError, match="not divisible by the shard count \\(3\\)"):
        checkpoint.load(ckpt, rank=0, world_size=3)
