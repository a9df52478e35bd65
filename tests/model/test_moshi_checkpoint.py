"""Moshi-family checkpoints in their published layouts: detection, loading with the upstream loaders (local files
only), the tiny random checkpoints of ``duplex model init`` and their listening Mimi."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi is imported: no torch.compile on CPU

import gzip
import io
import json
import re
import shutil
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch
from moshi.conditioners.base import ConditionAttributes
from moshi.models import loaders
from moshi.models.lm import LMModel
from moshi.utils.compile import no_compile
from moshi_fixtures import fused_by_module
from safetensors.torch import load_file, save_file
from torch import Tensor
from typer.testing import CliRunner

from duplex.cli import app
from duplex.model.config import ModelError
from duplex.model.family import FamilyName
from duplex.model.moshi.checkpoint import MoshiCheckpoint, load_checkpoint, load_voice_prompt
from duplex.model.moshi.layout import MOSHI_FAMILIES, PERSONAPLEX_VOICES, detect
from duplex.model.moshi.tiny import init_checkpoint, published_state_dict

SR = 24000
PUBLISHED_FILES: dict[str, set[str]] = {
    "moshi": {
        "config.json",
        "model.safetensors",
        "tokenizer-e351c8d8-checkpoint125.safetensors",
        "tokenizer_spm_32k_3.model",
    },
    "personaplex": {
        "config.json",
        "model.safetensors",
        "tokenizer-e351c8d8-checkpoint125.safetensors",
        "tokenizer_spm_32k_3.model",
        "voices.tgz",
        *(f"voices/{v}.pt" for v in PERSONAPLEX_VOICES),
    },
    "hibiki": {
        "config.json",
        "hibikim-pytorch-dc2cf5a5@80.safetensors",
        "mimi-pytorch-e351c8d8@125.safetensors",
        "tokenizer_spm_48k_multi6_2.model",
    },
}
LM_FILE = {
    "moshi": "model.safetensors",
    "personaplex": "model.safetensors",
    "hibiki": "hibikim-pytorch-dc2cf5a5@80.safetensors",
}
MIMI_FILE = {
    "moshi": "tokenizer-e351c8d8-checkpoint125.safetensors",
    "personaplex": "tokenizer-e351c8d8-checkpoint125.safetensors",
    "hibiki": "mimi-pytorch-e351c8d8@125.safetensors",
}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("moshi-family")
    return {family: init_checkpoint(family, root / family, seed=7) for family in MOSHI_FAMILIES}


@pytest.fixture(scope="module")
def loaded(written: dict[str, Path]) -> dict[str, MoshiCheckpoint]:
    return {family: load_checkpoint(path) for family, path in written.items()}


def files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def copy_of(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def edit_config(directory: Path, **changes: Any) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            del config[key]
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def speechlike(f0: float, seconds: float = 2.0, seed: int = 0) -> Tensor:
    """(1, 1, samples): a voiced harmonic tone with vibrato and a syllable envelope, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    phase = 2 * torch.pi * torch.cumsum(f0 * (1 + 0.05 * torch.sin(2 * torch.pi * 5 * t)), 0) / SR
    voiced = sum(torch.sin(h * phase) / h for h in range(1, 7))
    x = 0.5 * voiced * torch.sin(torch.pi * 3.3 * t).abs() + 0.02 * torch.randn(t.shape[0], generator=g)
    return x.float().clamp(-1, 1)[None, None]


def rms(x: Tensor) -> float:
    return float(x.pow(2).mean().sqrt())


# --- round trip ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", MOSHI_FAMILIES)
def test_init_writes_the_published_layout_and_loads_as_its_family(
    family: FamilyName, written: dict[str, Path], loaded: dict[str, MoshiCheckpoint]
) -> None:
    path = written[family]
    assert PUBLISHED_FILES[family] <= set(files(path))
    layout = detect(path)
    assert layout.family == family
    ck = loaded[family]
    assert ck.family == family and ck.name == family
    assert not ck.lm.training and not ck.mimi.training
    config = json.loads((path / "config.json").read_text())
    assert ck.config == config
    assert ck.lm.n_q == config["n_q"] and ck.lm.dep_q == config["dep_q"] and ck.lm.dim == config["dim"]
    # one stream's codebooks: 8 for Moshi and PersonaPlex (whose depformer writes both streams), 16 for Hibiki
    assert ck.mimi.num_codebooks == {"moshi": 8, "personaplex": 8, "hibiki": 16}[family]
    assert ck.mimi.sample_rate == SR and ck.mimi.frame_size == 1920
    assert ck.text_tokenizer.vocab_size() == config["text_card"] == ck.lm.text_card
    assert ck.text_tokenizer.pad_id() == config["existing_text_padding_id"] == 3
    ids = ck.text_tokenizer.encode("kato mire su")
    assert ids and ck.text_tokenizer.decode(ids) == "kato mire su"
    assert ck.lm_gen_config == config["lm_gen_config"]
    assert set(ck.voices) == (set(PERSONAPLEX_VOICES) if family == "personaplex" else set())
    assert sum(p.numel() for p in ck.lm.parameters()) < 8_000_000  # tiny


@pytest.mark.parametrize("family", MOSHI_FAMILIES)
def test_loaded_weights_equal_the_written_fused_bf16_files(
    family: FamilyName, written: dict[str, Path], loaded: dict[str, MoshiCheckpoint]
) -> None:
    on_disk = load_file(str(written[family] / LM_FILE[family]))
    # published layout: fused attention projections, bf16
    assert any(k.endswith("self_attn.in_proj_weight") for k in on_disk)
    assert any(k.startswith("depformer.") and k.endswith("self_attn.out_proj.weight") for k in on_disk)
    assert not any(".in_projs." in k or ".out_projs." in k for k in on_disk)
    assert {v.dtype for v in on_disk.values()} == {torch.bfloat16}
    ck = loaded[family]
    got = published_state_dict(ck.lm)
    assert set(got) == set(on_disk)
    for key, value in on_disk.items():
        expected = value.float()
        if family == "hibiki" and key == "text_emb.weight":
            # upstream's Hibiki loader replaces EOS (2) by PAD (3) in the text embedding
            assert torch.equal(got[key][2], expected[3])
            expected[2] = expected[3]
        assert torch.equal(got[key], expected), key
    mimi_on_disk = load_file(str(written[family] / MIMI_FILE[family]))
    mimi_got = published_state_dict(ck.mimi)
    assert set(mimi_got) == set(mimi_on_disk)
    assert any(k.endswith("self_attn.in_proj_weight") for k in mimi_on_disk)
    assert all(torch.equal(mimi_got[k], v) for k, v in mimi_on_disk.items())


def test_load_never_touches_the_model_hub(written: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_hub(*args: Any, **kwargs: Any) -> str:
        raise AssertionError(f"hub download attempted: {args} {kwargs}")

    monkeypatch.setattr(loaders, "hf_hub_download", no_hub)
    for path in written.values():
        assert load_checkpoint(path).lm is not None


def test_other_seed_other_weights(written: dict[str, Path], tmp_path: Path) -> None:
    """(The same seed writes the same bytes: test_cli_init.)"""
    a = files(written["personaplex"])
    b = files(init_checkpoint("personaplex", tmp_path / "b", seed=8))
    assert set(a) == set(b) and a["config.json"] == b["config.json"]
    for name in ("model.safetensors", "tokenizer-e351c8d8-checkpoint125.safetensors", "voices/NATF0.pt", "voices.tgz"):
        assert a[name] != b[name], name


# --- the Mimi listens ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", MOSHI_FAMILIES)
@torch.no_grad()
def test_mimi_listens(family: FamilyName, loaded: dict[str, MoshiCheckpoint]) -> None:
    mimi = loaded[family].mimi
    silence = torch.zeros(1, 1, 2 * SR)
    low, high = speechlike(110.0, seed=1), speechlike(230.0, seed=2)
    with no_compile():
        codes = {name: mimi.encode(x) for name, x in (("silence", silence), ("low", low), ("high", high))}
        decoded = {name: mimi.decode(c) for name, c in codes.items()}
    frames = codes["silence"].shape[-1]
    assert frames == 25
    # silence is one steady code; speech-like input moves through many codes, and differently per voice
    assert codes["silence"][0].T.unique(dim=0).shape[0] == 1
    assert codes["low"][0, 0].unique().numel() >= frames // 2
    assert (codes["silence"] != codes["low"]).float().mean() > 0.5
    assert (codes["low"] != codes["high"]).float().mean() > 0.5
    # decoded audio follows the codes: silence decodes to near silence, the two voices to different audio
    assert rms(decoded["low"]) > 5 * rms(decoded["silence"])
    assert rms(decoded["high"]) > 5 * rms(decoded["silence"])
    assert rms(decoded["low"] - decoded["high"]) > 0.5 * rms(decoded["low"])
    assert decoded["low"].abs().max() < 2.0


# --- PersonaPlex voices, Hibiki CFG ----------------------------------------------------------------------------


@torch.no_grad()
def test_personaplex_voice_prompts_in_nvidias_format(
    written: dict[str, Path], loaded: dict[str, MoshiCheckpoint]
) -> None:
    ck = loaded["personaplex"]
    lm = ck.lm
    prompts = {
        name: load_voice_prompt(path, dim=lm.dim, num_codebooks=lm.num_codebooks) for name, path in ck.voices.items()
    }
    ct = max(lm.delays) + 3
    for prompt in prompts.values():
        assert prompt.embeddings.dtype == torch.bfloat16 and prompt.embeddings.shape[1:] == (1, 1, lm.dim)
        assert prompt.cache.shape == (1, lm.num_codebooks, ct) and prompt.cache.dtype == torch.long
        assert (prompt.cache >= 0).all() and (prompt.cache[0, 1:] < lm.card).all()
        assert (prompt.cache[0, 0] == 3).all()  # text is padding while the voice plays
        # the first recorded step's input is the initial token of every stream
        initial = lm.text_emb(torch.tensor([[lm.text_card]])) + sum(
            lm.emb[k](torch.tensor([[lm.card]])) for k in range(lm.n_q)
        )
        torch.testing.assert_close(prompt.embeddings[0].float(), initial, atol=0.05, rtol=0.05)
    # voices differ (their agent-stream codes come from different audio)
    assert not torch.equal(prompts["NATF0"].embeddings, prompts["NATM0"].embeddings)
    assert not torch.equal(prompts["NATF0"].cache, prompts["VARM4"].cache)
    # voices.tgz holds the same files, as NVIDIA ships them
    with gzip.open(written["personaplex"] / "voices.tgz") as gz, tarfile.open(fileobj=io.BytesIO(gz.read())) as tar:
        packed = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert packed == {
        f"voices/{n}.pt": (written["personaplex"] / "voices" / f"{n}.pt").read_bytes() for n in PERSONAPLEX_VOICES
    }


@torch.no_grad()
def test_hibiki_carries_the_cfg_conditioner(loaded: dict[str, MoshiCheckpoint]) -> None:
    ck = loaded["hibiki"]
    assert ck.config["model_type"] == "hibiki"
    assert ck.config["fuser"] == {"sum": ["description"]}
    provider = ck.lm.condition_provider
    assert provider is not None and "description" in provider.conditioners
    good, bad = (
        provider.prepare_and_provide([ConditionAttributes(text={"description": v}, tensor={})])["description"]
        for v in ("very_good", "very_bad")
    )
    assert not torch.equal(good.condition, bad.condition)


# --- errors name what is wrong ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "remove", "message"),
    [
        (
            "moshi",
            "tokenizer-e351c8d8-checkpoint125.safetensors",
            "mimi weights 'tokenizer-e351c8d8-checkpoint125.safetensors' (config.json mimi_name) not found",
        ),
        (
            "hibiki",
            "hibikim-pytorch-dc2cf5a5@80.safetensors",
            "LM weights 'hibikim-pytorch-dc2cf5a5@80.safetensors' (config.json moshi_name) not found",
        ),
        (
            "hibiki",
            "tokenizer_spm_48k_multi6_2.model",
            "text tokenizer 'tokenizer_spm_48k_multi6_2.model' (config.json tokenizer_name) not found",
        ),
        ("moshi", "mimi_config.json", "mimi config 'mimi_config.json' (config.json mimi_config_name) not found"),
        ("personaplex", "voices", "PersonaPlex voice prompts are still packed in voices.tgz"),
        ("personaplex", "voices+voices.tgz", "PersonaPlex voice prompts voices/*.pt not found"),
    ],
)
def test_missing_file_is_named(
    family: FamilyName, remove: str, message: str, written: dict[str, Path], tmp_path: Path
) -> None:
    d = copy_of(written[family], tmp_path)
    for name in remove.split("+"):
        target = d / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ModelError, match=re.escape(f"checkpoint {d}: {message}")):
        load_checkpoint(d)


@pytest.mark.parametrize(
    ("family", "changes", "message"),
    [
        (
            "hibiki",
            {"mimi_name": None},
            "config.json has no 'mimi_name' and the default mimi weights "
            "'tokenizer-e351c8d8-checkpoint125.safetensors' is not there",
        ),
        ("moshi", {"dep_q": None}, "config.json has no 'dep_q'"),
        ("hibiki", {"delays": None}, "config.json has no 'delays'"),
        (
            "hibiki",
            {
                "dim": None,
                "n_q": None,
                "dep_q": None,
                "text_card": None,
                "card": None,
                "num_heads": None,
                "num_layers": None,
                "delays": None,
            },
            "config.json has no 'dim': Hibiki's LM shape must be given",
        ),
        ("moshi", {"delays": [0] * 16}, "config.json 'delays' has 16 entries; n_q + 1 = 17 expected"),
        ("moshi", {"card": 1024}, "config.json card (1024) differs from the Mimi codebook size (2048)"),
        ("moshi", {"model_type": "stt"}, "config.json model_type 'stt' is not served here"),
        ("personaplex", {"dep_q": 8}, "PersonaPlex predicts both streams in its depformer (dep_q == n_q)"),
        (
            "moshi",
            {"mimi_name": "hf://kyutai/moshiko-pytorch-bf16/x.safetensors"},
            "config.json 'mimi_name' = 'hf://kyutai/moshiko-pytorch-bf16/x.safetensors' points at the model hub",
        ),
        ("moshi", {"num_layers": 3}, "LM weights 'model.safetensors' do not fit the LM's shape"),
    ],
)
def test_bad_config_is_named(
    family: FamilyName, changes: dict[str, Any], message: str, written: dict[str, Path], tmp_path: Path
) -> None:
    d = copy_of(written[family], tmp_path)
    edit_config(d, **changes)
    with pytest.raises(ModelError, match=re.escape(f"checkpoint {d}: {message}")):
        load_checkpoint(d)


def test_absent_name_keys_fall_back_to_upstreams_defaults(written: dict[str, Path], tmp_path: Path) -> None:
    d = copy_of(written["moshi"], tmp_path)
    edit_config(d, moshi_name=None, mimi_name=None, tokenizer_name=None)  # the defaults are the files there
    layout = detect(d)
    assert (layout.moshi_weights.name, layout.mimi_weights.name, layout.tokenizer.name) == (
        "model.safetensors",
        "tokenizer-e351c8d8-checkpoint125.safetensors",
        "tokenizer_spm_32k_3.model",
    )
    assert load_checkpoint(d).family == "moshi"


def test_not_a_moshi_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=re.escape(f"checkpoint {tmp_path / 'nope'}: not a directory")):
        detect(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(
        ModelError, match=re.escape("not a Moshi-family checkpoint: no config.json and no model.safetensors")
    ):
        detect(empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match=re.escape("config.json is not readable JSON")):
        detect(broken)


def test_published_repositories_without_lm_arguments(tmp_path: Path) -> None:
    """kyutai/moshiko-pytorch-bf16 has no config.json (upstream assumes the 7B shape); a PersonaPlex snapshot whose
    config.json carries no LM arguments gets NVIDIA's shape (Moshi 7B, dep_q 16). Detection only: no 7B here."""
    moshiko = tmp_path / "moshiko"
    moshiko.mkdir()
    for name in ("model.safetensors", "tokenizer-e351c8d8-checkpoint125.safetensors"):
        (moshiko / name).write_bytes(b"")
    with pytest.raises(ModelError, match=re.escape("text tokenizer 'tokenizer_spm_32k_3.model' not found")):
        detect(moshiko)
    (moshiko / "tokenizer_spm_32k_3.model").write_bytes(b"")
    layout = detect(moshiko)
    assert layout.family == "moshi" and layout.lm_config is None and not layout.published_config
    personaplex = tmp_path / "personaplex"
    shutil.copytree(moshiko, personaplex)
    (personaplex / "config.json").write_text("{}")
    (personaplex / "voices").mkdir()
    (personaplex / "voices" / "NATF2.pt").write_bytes(b"")
    layout = detect(personaplex)
    assert layout.family == "personaplex" and not layout.published_config
    assert layout.lm_config is not None and (layout.lm_config["dim"], layout.lm_config["dep_q"]) == (4096, 16)
    assert layout.mimi_codebooks == 8 and list(layout.voices) == ["NATF2"]


# --- a checkpoint written by another route ----------------------------------------------------------------------


def test_loads_a_checkpoint_written_by_another_route(written: dict[str, Path], tmp_path: Path) -> None:
    """An LM built directly with upstream code, in a shape init never writes (layer norm, no gating, biases, no
    per-step depformer weights, 4 codebooks per stream, delay 2), saved fused in float32 under its own name."""
    lm_kwargs: dict[str, Any] = {
        "dim": 48,
        "text_card": 128,
        "existing_text_padding_id": 3,
        "n_q": 8,
        "dep_q": 4,
        "card": 2048,
        "num_heads": 3,
        "num_layers": 3,
        "hidden_scale": 3,
        "norm": "layer_norm",
        "gating": "none",
        "bias_proj": True,
        "context": 64,
        "max_period": 10000,
        "positional_embedding": "rope",
        "depformer_dim": 24,
        "depformer_num_heads": 2,
        "depformer_num_layers": 1,
        "depformer_multi_linear": False,
        "depformer_weights_per_step": False,
        "depformer_pos_emb": "sin",
        "delays": [0, 0, 2, 2, 2, 0, 2, 2, 2],
    }
    torch.manual_seed(11)
    lm = LMModel(**lm_kwargs).eval()
    d = tmp_path / "other"
    d.mkdir()
    save_file(fused_by_module(lm), str(d / "lm-other.safetensors"))
    src = written["moshi"]
    for name in ("tokenizer-e351c8d8-checkpoint125.safetensors", "mimi_config.json", "tokenizer_spm_32k_3.model"):
        shutil.copy(src / name, d / name)
    config = {
        **lm_kwargs,
        "moshi_name": "lm-other.safetensors",
        "mimi_name": "tokenizer-e351c8d8-checkpoint125.safetensors",
        "mimi_config_name": "mimi_config.json",
        "tokenizer_name": "tokenizer_spm_32k_3.model",
    }
    (d / "config.json").write_text(json.dumps(config))
    ck = load_checkpoint(d, dtype=torch.float32)
    assert ck.family == "moshi" and ck.mimi.num_codebooks == 4
    expected, got = lm.state_dict(), ck.lm.state_dict()
    assert set(got) == set(expected)
    assert any(k.endswith("linear1.weight") for k in got) and "text_linear.bias" in got
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


# --- the CLI ---------------------------------------------------------------------------------------------------


def flat(text: str) -> str:
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_cli_init(written: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["model", "init", "--family", "hibiki", "--out", str(out), "--seed", "7"])
    assert result.exit_code == 0, result.output
    assert "wrote a tiny random hibiki checkpoint (seed 7)" in flat(result.output)
    assert files(out) == files(written["hibiki"])  # the same seed writes the same bytes
    # every file as the umask makes it (readable by the engine pods' user on a node's disk), weights included
    umask = os.umask(0)
    os.umask(umask)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in out.iterdir() if f.is_file()}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)
    again = runner.invoke(app, ["model", "init", "--family", "hibiki", "--out", str(out)])
    assert again.exit_code == 2
    assert f"error: {out} exists and is not an empty directory" in flat(again.output)


@pytest.mark.parametrize("family", ["kyutai", "duplex"])
def test_cli_init_rejects_an_unknown_family(family: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["model", "init", "--family", family, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    text = flat(result.output)
    assert (
        f"Invalid value for --family: unknown Moshi family {family!r}; choose one of moshi, personaplex, hibiki" in text
    )
    assert isinstance(result.exception, SystemExit) and "Traceback" not in text  # a usage error, not a crash
    assert not (tmp_path / "x").exists()
