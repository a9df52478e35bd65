"""Moshi-family checkpoints as users have them: a local snapshot of a Hugging Face repository in Kyutai's
layout (``config.json``, LM weights, Mimi weights, SentencePiece text tokenizer; PersonaPlex voices).

``detect`` reads a directory and says which family it holds and where each file is, or raises ``ModelError``
naming the missing file or key; ``load_checkpoint`` loads it with the upstream ``moshi`` loaders, local paths only
(nothing is ever downloaded); ``init_checkpoint`` writes a tiny random checkpoint in a family's published layout
whose Mimi listens (different audio → different codes → different decoded audio), for tests and demos.

Published layouts (docs/moshi.md):

- Moshi (``kyutai/moshiko-pytorch-bf16``): ``model.safetensors``, ``tokenizer-e351c8d8-checkpoint125.safetensors``
  (Mimi), ``tokenizer_spm_32k_3.model``; no ``config.json`` (upstream then assumes the 7B shape). Newer Kyutai
  repositories carry a ``config.json``: the LM's arguments plus ``moshi_name``, ``mimi_name``, ``tokenizer_name``,
  optional ``mimi_config_name``/``lora_name``, ``model_type`` and ``lm_gen_config``.
- PersonaPlex (``nvidia/personaplex-7b-v1``): Moshi's file names plus ``voices.tgz``, which NVIDIA's server
  extracts next to it as ``voices/NAME.pt``; the LM is Moshi's 7B with ``dep_q = n_q = 16``.
- Hibiki (``kyutai/hibiki-1b-pytorch-bf16``): ``config.json`` with ``model_type: hibiki`` and a ``description``
  LUT conditioner (summed into the input; classifier-free guidance contrasts ``very_good`` with ``very_bad``),
  ``hibikim-pytorch-dc2cf5a5@80.safetensors``, ``mimi-pytorch-e351c8d8@125.safetensors``,
  ``tokenizer_spm_48k_multi6_2.model``.

LM weights are stored with fused attention projections (``self_attn.in_proj_weight``, ``self_attn.out_proj.weight``:
the per-step matrices stacked on dim 0); upstream's ``StreamingMultiheadAttention`` splits them on load.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import random
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ModelError
from ..family import FamilyName

MOSHI_FAMILIES: tuple[FamilyName, ...] = ("moshi", "personaplex", "hibiki")
"""The families this module reads and writes."""

CONFIG_NAME = "config.json"
# upstream's defaults (moshi/models/loaders.py) for a repository without config.json or without the name keys
DEFAULT_MOSHI_NAME = "model.safetensors"
DEFAULT_MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
DEFAULT_TOKENIZER_NAME = "tokenizer_spm_32k_3.model"
VOICES_DIR = "voices"
VOICES_TGZ = "voices.tgz"

SAMPLE_RATE = 24000
FRAME_SAMPLES = 1920
"""One Mimi frame: 80 ms at 24 kHz (12.5 Hz)."""

PERSONAPLEX_VOICES = (
    *(f"NATF{i}" for i in range(4)),
    *(f"NATM{i}" for i in range(4)),
    *(f"VARF{i}" for i in range(5)),
    *(f"VARM{i}" for i in range(5)),
)
"""The voice prompts NVIDIA ships (README "Voices")."""
PERSONAPLEX_PROMPT_TEXT_TOKEN = 3
"""Text token fed while a voice prompt plays (PersonaPlex's ``zero_text_code``: the padding id)."""

# config.json keys that are not LM arguments (upstream CheckpointInfo.from_hf_repo pops them)
_LOADER_KEYS = (
    "moshi_name",
    "mimi_name",
    "mimi_config_name",
    "tokenizer_name",
    "lora_name",
    "model_type",
    "lm_gen_config",
    "tts_config",
    "stt_config",
    "model_id",
)
_LM_REQUIRED = ("dim", "text_card", "n_q", "dep_q", "card", "num_heads", "num_layers", "delays")
"""LM arguments without a usable upstream default: a config.json with LM arguments must name them all."""
_MIMI_CONFIG_REQUIRED = ("sample_rate", "channels", "frame_rate", "seanet", "quantizer", "transformer")
_PUBLISHED_MIMI_BINS = 2048
_PUBLISHED_MIMI_LEVELS = 32


@dataclass(frozen=True)
class Layout:
    """What a checkpoint directory holds: its family and the resolved paths of its files."""

    directory: Path
    family: FamilyName
    model_type: str
    """config.json's ``model_type`` (upstream's default ``moshi`` when absent)."""
    config: dict[str, Any]
    """config.json as read ({} when the directory has none)."""
    config_path: Path | None
    lm_config: dict[str, Any] | None
    """The LM's constructor arguments; None = upstream's built-in Moshi 7B shape (a repository without them)."""
    moshi_weights: Path
    mimi_weights: Path
    tokenizer: Path
    mimi_config_path: Path | None = None
    lora_weights: Path | None = None
    voices: dict[str, Path] = field(default_factory=dict)
    """PersonaPlex voice prompts by name (``voices/NAME.pt``)."""
    mimi_codebooks: int = 8
    """Codebooks per audio stream (Mimi levels the LM reads and writes for one speaker)."""

    @property
    def published_config(self) -> bool:
        """Whether the LM shape comes from config.json (rather than upstream's built-in 7B arguments)."""
        return self.config_path is not None and self.lm_config is not None and "dim" in self.config


@dataclass
class MoshiCheckpoint:
    """A loaded Moshi-family checkpoint: the upstream modules, ready to stream."""

    family: FamilyName
    """``moshi``, ``personaplex`` or ``hibiki`` (detected from the directory)."""
    name: str
    """The model's name: ``org/name`` for a Hugging Face cache snapshot, else the directory's name."""
    lm: Any
    """``moshi.models.lm.LMModel``, eval mode."""
    mimi: Any
    """``moshi.models.compression.MimiModel``, eval mode."""
    text_tokenizer: Any
    """``sentencepiece.SentencePieceProcessor``."""
    lm_gen_config: dict[str, Any] = field(default_factory=dict)
    """config.json's ``lm_gen_config`` (sampling defaults etc.)."""
    config: dict[str, Any] = field(default_factory=dict)
    """config.json as read."""
    voices: dict[str, Path] = field(default_factory=dict)
    """PersonaPlex voice prompts by name (``voices/NAME.pt``)."""
    layout: Layout | None = None
    """Where each file came from (``detect``'s answer)."""


@dataclass(frozen=True)
class VoicePrompt:
    """A PersonaPlex voice prompt as NVIDIA stores it (``torch.save`` of a dict with these two tensors)."""

    embeddings: Tensor
    """(T, 1, 1, dim): the LM's summed input embeddings of each prompt step, replayed one step at a time."""
    cache: Tensor
    """(1, n_q + 1, max(delays) + 3) long: the token ring buffer after the prompt, copied into the generator."""


# --------------------------------------------------------------------------------------------------------------
# detection


def _fail(directory: Path, message: str) -> ModelError:
    return ModelError(f"checkpoint {directory}: {message}")


def _read_json(directory: Path, path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(directory, f"{path.name} is not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise _fail(directory, f"{path.name} must hold a JSON object, got {type(data).__name__}")
    return data


def _resolve(directory: Path, config: dict[str, Any], has_config: bool, key: str, default: str, what: str) -> Path:
    """The file config.json names under ``key`` (upstream's ``default`` when the key is absent)."""
    name = config.get(key)
    if name is None:
        path = directory / default
        if path.is_file():
            return path
        if has_config:
            raise _fail(directory, f"config.json has no {key!r} and the default {what} {default!r} is not there")
        raise _fail(directory, f"{what} {default!r} not found")
    if not isinstance(name, str) or not name:
        raise _fail(directory, f"config.json {key!r} must be a file name, got {name!r}")
    if name.startswith("hf://"):
        raise _fail(
            directory,
            f"config.json {key!r} = {name!r} points at the model hub; nothing is downloaded here: put the file in "
            "the directory and name it",
        )
    path = directory / name.removeprefix("file://")
    if not path.is_file():
        raise _fail(directory, f"{what} {name!r} (config.json {key}) not found")
    return path


def _int_key(directory: Path, config: dict[str, Any], key: str) -> int:
    value = config[key]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise _fail(directory, f"config.json {key!r} must be a positive integer, got {value!r}")
    return value


def _lm_config(directory: Path, config: dict[str, Any], family: FamilyName) -> dict[str, Any] | None:
    """The LM's arguments from config.json, checked; None when config.json carries none (published 7B shape)."""
    if not any(k in config for k in _LM_REQUIRED):
        if family == "hibiki":
            raise _fail(directory, "config.json has no 'dim': Hibiki's LM shape must be given")
        if family == "personaplex":
            return {**_upstream_lm_kwargs(), "dep_q": 16}  # NVIDIA's loader: Moshi 7B with 16 depformer steps
        return None
    for key in _LM_REQUIRED:
        if key not in config:
            raise _fail(directory, f"config.json has no {key!r}")
    n_q = _int_key(directory, config, "n_q")
    dep_q = _int_key(directory, config, "dep_q")
    for key in ("dim", "text_card", "card", "num_heads", "num_layers"):
        _int_key(directory, config, key)
    if dep_q > n_q:
        raise _fail(directory, f"config.json dep_q ({dep_q}) exceeds n_q ({n_q})")
    delays = config["delays"]
    if not isinstance(delays, list) or not all(isinstance(d, int) and d >= 0 for d in delays):
        raise _fail(directory, f"config.json 'delays' must be a list of non-negative integers, got {delays!r}")
    if len(delays) != n_q + 1:
        raise _fail(directory, f"config.json 'delays' has {len(delays)} entries; n_q + 1 = {n_q + 1} expected")
    return {k: v for k, v in config.items() if k not in _LOADER_KEYS}


def _hf_snapshot_name(directory: Path) -> str | None:
    """``org/name`` for a Hugging Face cache snapshot (``models--org--name/snapshots/<revision>``)."""
    parts = directory.resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/")
    return None


def detect(directory: Path) -> Layout:
    """Which Moshi-family checkpoint ``directory`` holds, and where its files are.

    Family: ``model_type: hibiki`` → Hibiki; a ``voices/`` folder (or ``voices.tgz``), ``model_type:
    personaplex`` or ``dep_q == n_q`` → PersonaPlex; otherwise Moshi. Raises ``ModelError`` naming the missing
    file or key, or saying the directory is not a Moshi-family checkpoint at all."""
    directory = Path(directory)
    if not directory.is_dir():
        raise _fail(directory, "not a directory")
    config_path = directory / CONFIG_NAME
    has_config = config_path.is_file()
    if has_config:
        config = _read_json(directory, config_path)
    else:
        if not (directory / DEFAULT_MOSHI_NAME).is_file() and not (directory / DEFAULT_MIMI_NAME).is_file():
            raise _fail(
                directory,
                f"not a Moshi-family checkpoint: no {CONFIG_NAME} and no {DEFAULT_MOSHI_NAME} "
                "(expected a snapshot of e.g. kyutai/moshiko-pytorch-bf16, nvidia/personaplex-7b-v1 or "
                "kyutai/hibiki-1b-pytorch-bf16)",
            )
        config = {}
    model_type = config.get("model_type", "moshi")
    if model_type not in ("moshi", "personaplex", "hibiki"):
        raise _fail(
            directory, f"config.json model_type {model_type!r} is not served here (moshi, personaplex or hibiki)"
        )
    voices_dir, voices_tgz = directory / VOICES_DIR, directory / VOICES_TGZ
    family: FamilyName
    if model_type == "hibiki":
        family = "hibiki"
    elif (
        model_type == "personaplex"
        or voices_dir.is_dir()
        or voices_tgz.is_file()
        or (isinstance(config.get("n_q"), int) and config.get("dep_q") == config.get("n_q"))
    ):
        family = "personaplex"
    else:
        family = "moshi"
    lm_config = _lm_config(directory, config, family)

    moshi_weights = _resolve(directory, config, has_config, "moshi_name", DEFAULT_MOSHI_NAME, "LM weights")
    mimi_weights = _resolve(directory, config, has_config, "mimi_name", DEFAULT_MIMI_NAME, "mimi weights")
    tokenizer = _resolve(directory, config, has_config, "tokenizer_name", DEFAULT_TOKENIZER_NAME, "text tokenizer")
    mimi_config_path = None
    mimi_bins, mimi_levels = _PUBLISHED_MIMI_BINS, _PUBLISHED_MIMI_LEVELS
    if config.get("mimi_config_name") is not None:
        mimi_config_path = _resolve(directory, config, True, "mimi_config_name", "", "mimi config")
        mimi_config = _read_json(directory, mimi_config_path)
        for key in _MIMI_CONFIG_REQUIRED:
            if key not in mimi_config:
                raise _fail(directory, f"mimi config {mimi_config_path.name!r} has no {key!r}")
        quantizer = mimi_config["quantizer"]
        if not isinstance(quantizer, dict) or "bins" not in quantizer or "n_q" not in quantizer:
            raise _fail(directory, f"mimi config {mimi_config_path.name!r}: 'quantizer' needs 'bins' and 'n_q'")
        mimi_bins, mimi_levels = quantizer["bins"], quantizer["n_q"]
    lora_weights = None
    if config.get("lora_name"):
        lora_weights = _resolve(directory, config, True, "lora_name", "", "LoRA weights")

    n_q = 16 if lm_config is None else lm_config["n_q"]
    dep_q = 8 if lm_config is None else lm_config["dep_q"]
    card = _PUBLISHED_MIMI_BINS if lm_config is None else lm_config["card"]
    if card != mimi_bins:
        raise _fail(directory, f"config.json card ({card}) differs from the Mimi codebook size ({mimi_bins})")
    voices: dict[str, Path] = {}
    if family == "personaplex":
        if dep_q != n_q:
            raise _fail(
                directory,
                f"PersonaPlex predicts both streams in its depformer (dep_q == n_q); config.json has dep_q {dep_q}, "
                f"n_q {n_q}",
            )
        if not voices_dir.is_dir():
            if voices_tgz.is_file():
                raise _fail(
                    directory,
                    f"PersonaPlex voice prompts are still packed in {VOICES_TGZ}: extract it "
                    f"(tar -xzf {VOICES_TGZ}) so that {VOICES_DIR}/NAME.pt exist",
                )
            raise _fail(directory, f"PersonaPlex voice prompts {VOICES_DIR}/*.pt not found")
        voices = {p.stem: p for p in sorted(voices_dir.glob("*.pt"))}
        if not voices:
            raise _fail(directory, f"{VOICES_DIR}/ holds no voice prompt (*.pt)")
        mimi_codebooks = n_q // 2
    else:
        mimi_codebooks = max(dep_q, n_q - dep_q)
    if mimi_codebooks > mimi_levels:
        raise _fail(directory, f"the LM reads {mimi_codebooks} codebooks per stream; the Mimi has {mimi_levels}")
    return Layout(
        directory=directory,
        family=family,
        model_type=model_type,
        config=config,
        config_path=config_path if has_config else None,
        lm_config=lm_config,
        moshi_weights=moshi_weights,
        mimi_weights=mimi_weights,
        tokenizer=tokenizer,
        mimi_config_path=mimi_config_path,
        lora_weights=lora_weights,
        voices=voices,
        mimi_codebooks=mimi_codebooks,
    )


# --------------------------------------------------------------------------------------------------------------
# loading


def upstream_loaders() -> Any:
    try:
        from moshi.models import loaders
    except ImportError as e:  # pragma: no cover - the [moshi] extra is part of the dev setup
        raise ModelError(
            "the Moshi family needs the upstream moshi package: pip install --no-deps moshi==0.2.13 "
            f"(and its imports: pip install 'duplex[moshi]') ({e})"
        ) from None
    return loaders


def _upstream_lm_kwargs() -> dict[str, Any]:
    return copy.deepcopy(dict(upstream_loaders()._lm_kwargs))


@contextmanager
def _no_compile() -> Iterator[None]:
    """Run upstream modules eagerly (its lazy torch.compile wants a C toolchain on CPU)."""
    from moshi.utils.compile import no_compile

    with no_compile():
        yield


def _short(e: BaseException, limit: int = 400) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _checkpoint_info(layout: Layout) -> Any:
    """Upstream's ``CheckpointInfo`` for the directory, every file given as a local ``Path``."""
    loaders = upstream_loaders()
    d = layout.directory
    if layout.published_config:
        assert layout.config_path is not None
        try:
            return loaders.CheckpointInfo.from_hf_repo(
                str(d),
                moshi_weights=layout.moshi_weights,
                mimi_weights=layout.mimi_weights,
                tokenizer=layout.tokenizer,
                config_path=layout.config_path,
                mimi_config_path=layout.mimi_config_path,
                lora_weights=layout.lora_weights,
            )
        except (OSError, ValueError) as e:
            raise _fail(d, f"upstream could not read the checkpoint: {_short(e)}") from e
    # no LM arguments in config.json (or no config.json): the published 7B shape, as upstream assumes
    mimi_config = None if layout.mimi_config_path is None else _read_json(d, layout.mimi_config_path)
    return loaders.CheckpointInfo(
        moshi_weights=layout.moshi_weights,
        mimi_weights=layout.mimi_weights,
        tokenizer=layout.tokenizer,
        lm_config=copy.deepcopy(layout.lm_config),
        raw_config=copy.deepcopy(layout.config) or None,
        mimi_config=mimi_config,
        model_type=layout.model_type,
        lora_weights=layout.lora_weights,
        lm_gen_config=dict(layout.config.get("lm_gen_config") or {}),
    )


def load_voice_prompt(path: Path, dim: int | None = None, num_codebooks: int | None = None) -> VoicePrompt:
    """Read a PersonaPlex voice prompt (``voices/NAME.pt``) and check its shapes against the LM when given."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"voice prompt {path}: not a readable torch file ({_short(e)})") from e
    if not isinstance(state, dict) or not {"embeddings", "cache"} <= state.keys():
        raise ModelError(f"voice prompt {path}: expected a dict with 'embeddings' and 'cache'")
    emb, cache = state["embeddings"], state["cache"]
    if not isinstance(emb, Tensor) or emb.dim() != 4 or emb.shape[1:3] != (1, 1) or emb.shape[0] == 0:
        raise ModelError(f"voice prompt {path}: 'embeddings' must be (T, 1, 1, dim), got {getattr(emb, 'shape', emb)}")
    if dim is not None and emb.shape[3] != dim:
        raise ModelError(f"voice prompt {path}: embeddings have dim {emb.shape[3]}, the LM has {dim}")
    if not isinstance(cache, Tensor) or cache.dim() != 3 or cache.dtype != torch.long or cache.shape[0] != 1:
        raise ModelError(f"voice prompt {path}: 'cache' must be (1, K, CT) long, got {getattr(cache, 'shape', cache)}")
    if num_codebooks is not None and cache.shape[1] != num_codebooks:
        raise ModelError(f"voice prompt {path}: cache has {cache.shape[1]} streams, the LM has {num_codebooks}")
    return VoicePrompt(embeddings=emb, cache=cache)


def load_checkpoint(
    directory: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> MoshiCheckpoint:
    """Load a Moshi-family checkpoint directory with the upstream loaders (local files only), modules in eval
    mode; the LM in ``dtype`` (Mimi stays float32, as upstream keeps it)."""
    layout = detect(directory)
    d = layout.directory
    info = _checkpoint_info(layout)
    try:
        mimi = info.get_mimi(device=device)
    except Exception as e:
        raise _fail(d, f"mimi weights {layout.mimi_weights.name!r} do not load: {_short(e)}") from e
    mimi.set_num_codebooks(layout.mimi_codebooks)  # upstream sets max(dep_q, n_q - dep_q): 16 for PersonaPlex
    try:
        lm = info.get_moshi(device=device, dtype=dtype)
    except Exception as e:
        raise _fail(d, f"LM weights {layout.moshi_weights.name!r} do not fit the LM's shape: {_short(e)}") from e
    try:
        tokenizer = info.get_text_tokenizer()
    except Exception as e:
        raise _fail(d, f"text tokenizer {layout.tokenizer.name!r} is not a SentencePiece model: {_short(e)}") from e
    if tokenizer.vocab_size() != lm.text_card:
        raise _fail(
            d,
            f"text tokenizer {layout.tokenizer.name!r} has {tokenizer.vocab_size()} pieces; the LM's text_card is "
            f"{lm.text_card}",
        )
    for path in layout.voices.values():
        load_voice_prompt(path, dim=lm.dim, num_codebooks=lm.num_codebooks)
    return MoshiCheckpoint(
        family=layout.family,
        name=_hf_snapshot_name(d) or d.resolve().name,
        lm=lm.eval(),
        mimi=mimi.eval(),
        text_tokenizer=tokenizer,
        lm_gen_config=dict(info.lm_gen_config),
        config=copy.deepcopy(layout.config),
        voices=dict(layout.voices),
        layout=layout,
    )


# --------------------------------------------------------------------------------------------------------------
# writing: the published layout


def published_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """``module``'s weights as Kyutai publishes them: each attention's per-step ``in_projs.{i}.weight`` and
    ``out_projs.{i}.weight`` fused into ``in_proj_weight`` and ``out_proj.weight`` (stacked on dim 0)."""
    state = {k: v.detach() for k, v in module.state_dict().items()}
    out: dict[str, Tensor] = {}
    fused: dict[str, list[tuple[int, Tensor]]] = {}
    for key, value in state.items():
        for part, target in ((".in_projs.", "in_proj_weight"), (".out_projs.", "out_proj.weight")):
            if part in key and key.endswith(".weight"):
                prefix, rest = key.split(part, 1)
                step = int(rest.split(".", 1)[0])
                fused.setdefault(f"{prefix}.{target}", []).append((step, value))
                break
        else:
            out[key] = value
    for key, parts in fused.items():
        out[key] = torch.cat([v for _, v in sorted(parts, key=lambda p: p[0])], dim=0)
    return {k: v.contiguous() for k, v in out.items()}


def _save_safetensors(state: dict[str, Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


# The tiny checkpoints: each family's published config.json keys, the LM and Mimi shrunk to run in milliseconds.
_TINY_MIMI_CONFIG: dict[str, Any] = {
    "sample_rate": SAMPLE_RATE,
    "channels": 1,
    "frame_rate": 12.5,
    "seanet": {
        "channels": 1,
        "dimension": 32,
        "causal": True,
        "n_filters": 4,
        "n_residual_layers": 1,
        "activation": "ELU",
        "compress": 2,
        "dilation_base": 2,
        "disable_norm_outer_blocks": 0,
        "kernel_size": 7,
        "residual_kernel_size": 3,
        "last_kernel_size": 3,
        "norm": "none",
        "pad_mode": "constant",
        "ratios": [8, 6, 5, 4],
        "true_skip": True,
    },
    "quantizer": {
        "dimension": 16,
        "n_q": _PUBLISHED_MIMI_LEVELS,
        "bins": _PUBLISHED_MIMI_BINS,
        "input_dimension": 32,
        "output_dimension": 32,
    },
    "transformer": {
        "d_model": 32,
        "num_heads": 2,
        "num_layers": 1,
        "causal": True,
        "layer_scale": 0.01,
        "context": 250,
        "conv_layout": True,
        "max_period": 10000,
        "gating": "none",
        "norm": "layer_norm",
        "positional_embedding": "rope",
        "dim_feedforward": 64,
        "input_dimension": 32,
        "output_dimensions": [32],
    },
}
_TINY_MIMI_CONFIG_NAME = "mimi_config.json"
_LM_GEN_CONFIG = {"temp": 0.8, "temp_text": 0.7, "top_k": 250, "top_k_text": 25}
"""Upstream LMGen's sampling defaults."""


def _tiny_lm(
    *, text_card: int, n_q: int, dep_q: int, delays: list[int], context: int, max_period: int, dep_context: int
) -> dict[str, Any]:
    """Moshi's LM arguments (upstream ``loaders._lm_kwargs`` keys, in its order), shrunk."""
    return {
        "dim": 64,
        "text_card": text_card,
        "existing_text_padding_id": 3,
        "n_q": n_q,
        "dep_q": dep_q,
        "card": _PUBLISHED_MIMI_BINS,
        "num_heads": 4,
        "num_layers": 2,
        "hidden_scale": 4.125,
        "causal": True,
        "layer_scale": None,
        "context": context,
        "max_period": max_period,
        "gating": "silu",
        "norm": "rms_norm_f32",
        "positional_embedding": "rope",
        "depformer_dim": 32,
        "depformer_dim_feedforward": int(4.125 * 32),
        "depformer_num_heads": 2,
        "depformer_num_layers": 2,
        "depformer_causal": True,
        "depformer_layer_scale": None,
        "depformer_multi_linear": True,
        "depformer_context": dep_context,
        "depformer_max_period": 10000,
        "depformer_gating": "silu",
        "depformer_pos_emb": "none",
        "depformer_weights_per_step": True,
        "delays": delays,
    }


def _tiny_config(family: FamilyName) -> dict[str, Any]:
    moshi_delays = [0] + ([0] + [1] * 7) * 2
    if family == "moshi":
        lm = _tiny_lm(
            text_card=128, n_q=16, dep_q=8, delays=moshi_delays, context=3000, max_period=10000, dep_context=8
        )
        return {
            "model_type": "moshi",
            **lm,
            "moshi_name": DEFAULT_MOSHI_NAME,
            "mimi_name": DEFAULT_MIMI_NAME,
            "mimi_config_name": _TINY_MIMI_CONFIG_NAME,
            "tokenizer_name": DEFAULT_TOKENIZER_NAME,
            "lm_gen_config": dict(_LM_GEN_CONFIG),
        }
    if family == "personaplex":
        # NVIDIA's loader: Moshi's arguments with dep_q = 16 (the depformer writes both streams), context 8 kept
        lm = _tiny_lm(
            text_card=128, n_q=16, dep_q=16, delays=moshi_delays, context=3000, max_period=10000, dep_context=8
        )
        return {
            **lm,
            "moshi_name": DEFAULT_MOSHI_NAME,
            "mimi_name": DEFAULT_MIMI_NAME,
            "mimi_config_name": _TINY_MIMI_CONFIG_NAME,
            "tokenizer_name": DEFAULT_TOKENIZER_NAME,
            "lm_gen_config": dict(_LM_GEN_CONFIG),
        }
    if family == "hibiki":
        # Kyutai's hibiki config.json: 16 source + 16 target codebooks, delay 2, 9 depformer weight slices,
        # low-rank depformer embeddings, the ``description`` LUT conditioner summed into the input (CFG)
        delays = [0] + ([0] + [2] * 15) * 2
        lm = _tiny_lm(text_card=160, n_q=32, dep_q=16, delays=delays, context=500, max_period=100000, dep_context=16)
        lm["depformer_dim_feedforward"] = 96
        del lm["delays"]
        return {
            "model_type": "hibiki",
            **lm,
            "depformer_weights_per_step_schedule": [*range(9), *([8] * 7)],
            "depformer_low_rank_embeddings": 8,
            "delays": delays,
            "conditioners": {
                "description": {
                    "type": "lut",
                    "lut": {
                        "n_bins": 31,
                        "dim": 16,
                        "tokenizer": "noop",
                        "possible_values": ["very_bad", "bad", "neutral", "good", "very_good"],
                    },
                }
            },
            "fuser": {"sum": ["description"]},
            "moshi_name": "hibikim-pytorch-dc2cf5a5@80.safetensors",
            "mimi_name": "mimi-pytorch-e351c8d8@125.safetensors",
            "mimi_config_name": _TINY_MIMI_CONFIG_NAME,
            "tokenizer_name": "tokenizer_spm_48k_multi6_2.model",
            "lm_gen_config": dict(_LM_GEN_CONFIG),
        }
    raise ModelError(f"unknown Moshi family {family!r}; choose one of {', '.join(MOSHI_FAMILIES)}")


def probe_audio(rows: int, seconds: float, seed: int) -> Tensor:
    """Varied test audio (rows, samples) at 24 kHz in [-1, 1]: silence, quiet noise, harmonic tones with vibrato
    and syllable-like gating, chirps, noise bursts — row ``i`` is kind ``i % 6``."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SAMPLE_RATE)
    t = torch.arange(n, dtype=torch.float64) / SAMPLE_RATE
    out = torch.zeros(rows, n, dtype=torch.float64)

    def rand(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand(1, generator=g, dtype=torch.float64))

    for r in range(rows):
        kind = r % 6
        if kind == 0:
            continue  # silence
        if kind == 1:
            out[r] = 0.01 * torch.randn(n, generator=g, dtype=torch.float64)
        elif kind in (2, 3):  # voiced, syllables
            f0 = rand(90, 140) if kind == 2 else rand(170, 260)
            freq = f0 * (1 + 0.05 * torch.sin(2 * torch.pi * rand(4, 7) * t))
            phase = 2 * torch.pi * torch.cumsum(freq, 0) / SAMPLE_RATE
            voiced = sum((0.5 / h) * torch.sin(h * phase) for h in range(1, 6))
            envelope = torch.sin(torch.pi * rand(2.5, 4.5) * t).abs() ** 2
            out[r] = 0.6 * voiced * envelope + 0.02 * torch.randn(n, generator=g, dtype=torch.float64)
        elif kind == 4:  # chirp
            f_lo, f_hi = rand(100, 400), rand(1000, 4000)
            freq = f_lo + (f_hi - f_lo) * t / seconds
            out[r] = 0.4 * torch.sin(2 * torch.pi * torch.cumsum(freq, 0) / SAMPLE_RATE)
        else:  # noise bursts
            gate = (torch.rand(n // FRAME_SAMPLES + 1, generator=g) > 0.5).double()
            gate = gate.repeat_interleave(FRAME_SAMPLES)[:n]
            out[r] = 0.3 * torch.randn(n, generator=g, dtype=torch.float64) * gate
    return out.clamp(-1, 1).float()


def _nearest(vectors: Tensor, book: Tensor) -> Tensor:
    return torch.cdist(vectors, book).argmin(dim=1)


@torch.no_grad()
def _listening_mimi(mimi_config: dict[str, Any], seed: int) -> Any:
    """A random Mimi (upstream ``MimiModel``, 8 codebooks) that listens.

    A random Mimi maps every input to the same codes and decodes any code to its biases' pattern. Here each
    residual level's codebook is drawn from the encoder's latents (and their residuals) of varied audio, the
    convolutions' biases are zeroed (silence → zero latent → silence), the quantizer's output projections are
    fitted (least squares) to map the quantized latents back to the encoder's latents, and the last convolution is
    scaled to a speech-like level."""
    loaders = upstream_loaders()
    g = torch.Generator().manual_seed(seed)
    mimi = loaders.get_mimi(None, copy.deepcopy(mimi_config))
    for m in mimi.modules():  # no biases: silence encodes to a zero latent and a zero latent decodes to silence
        if isinstance(m, nn.Conv1d | nn.ConvTranspose1d) and m.bias is not None:
            m.bias.zero_()
    audio = probe_audio(12, 4.0, seed)[:, None]
    latent = mimi.encode_to_latent(audio, quantize=False)  # (B, D, T) at 12.5 Hz
    frames = latent.transpose(1, 2).reshape(-1, latent.shape[1])
    # a continuous cloud around the probe latents (more points than codes, so no level memorises its data and the
    # residuals shrink level by level): each point a probe latent moved part way towards another, plus noise
    n = 8 * frames.shape[0]
    i, j = torch.randint(frames.shape[0], (2, n), generator=g)
    cloud = frames[i] + 0.5 * torch.rand(n, 1, generator=g) * (frames[j] - frames[i])
    cloud = cloud + 0.1 * frames.std(dim=0) * torch.randn(n, frames.shape[1], generator=g)
    state = {k: v.detach().clone() for k, v in mimi.state_dict().items()}
    q = mimi.quantizer
    bins = q.rvq_first.bins
    runtime_levels = 8  # fit the output projections for the codebooks a Moshi stream uses
    quantized: list[Tensor] = []
    for name, rvq, used in (("rvq_first", q.rvq_first, 1), ("rvq_rest", q.rvq_rest, runtime_levels - 1)):
        residual = cloud @ rvq.input_proj.weight[:, :, 0].T
        total = torch.zeros_like(residual)
        for level in range(rvq.max_n_q):
            # data points moved by noise of their own spread: no point sits on a code, so residuals shrink
            # gradually (as with a trained RVQ) instead of vanishing for the sampled points
            pick = torch.randperm(residual.shape[0], generator=g)[:bins]
            book = residual[pick] + 0.5 * residual.std(dim=0) * torch.randn(bins, residual.shape[1], generator=g)
            prefix = f"quantizer.{name}.vq.layers.{level}._codebook."
            state[prefix + "embedding_sum"] = book
            state[prefix + "cluster_usage"] = torch.ones(bins)
            state[prefix + "_initialized"] = torch.ones(1)
            chosen = book[_nearest(residual, book)]
            if level < used:
                total = total + chosen
            residual = residual - chosen
        quantized.append(total)
    # decoded latent = W_first q_first + W_rest q_rest: fit both (ridge) to reproduce the encoder's latents (the
    # latent of silence is zero without biases: silence decodes to near silence, the decoder follows the codes)
    x = torch.cat(quantized, dim=1).double()
    y = cloud.double()
    ridge = 1e-3 * x.pow(2).mean() * torch.eye(x.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(x.T @ x + ridge, x.T @ y).float()  # (2*dimension, D)
    d_q = q.rvq_first.dimension
    state["quantizer.rvq_first.output_proj.weight"] = w[:d_q].T.contiguous()[:, :, None]
    state["quantizer.rvq_rest.output_proj.weight"] = w[d_q:].T.contiguous()[:, :, None]
    listening = loaders.get_mimi(None, copy.deepcopy(mimi_config), num_codebooks=runtime_levels)
    listening.load_state_dict(state)
    # speech-like output level: the decoder is linear in its last convolution now that its biases are zero
    last = [m for m in listening.decoder.modules() if isinstance(m, nn.Conv1d)][-1]
    speech = audio[2:4]
    rms = listening.decode(listening.encode(speech)).pow(2).mean().sqrt()
    last.weight.mul_(0.08 / rms.clamp(min=1e-8))
    return listening


def _train_tokenizer(path: Path, vocab: int, seed: int, family: FamilyName) -> None:
    """A SentencePiece model trained on generated text, with Moshi's special ids (0 unk, 1 bos, 2 eos, 3 pad)."""
    import sentencepiece as spm

    r = random.Random(seed)
    syllables = ["ka", "to", "mi", "re", "su", "no", "la", "be", "di", "po", "shi", "an", "el", "or", "um", "ya"]
    syllables += ["ve", "qu", "zo", "ni", "the", "and", "ou", "ch", "ai", "er", "es", "il", "on", "ment"]
    words = ["".join(r.choice(syllables) for _ in range(r.randint(1, 3))) for _ in range(600)]
    lines = [" ".join(r.choice(words) for _ in range(r.randint(3, 14))) for _ in range(3000)]
    if family == "personaplex":
        lines += [f"<system> {line} <system>" for line in lines[:200]]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=vocab,
        model_type="unigram",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        num_threads=1,
        minloglevel=2,
    )
    path.write_bytes(buf.getvalue())


@torch.no_grad()
def _voice_prompt(lm: Any, voice_codes: Tensor, sine_codes: Tensor) -> VoicePrompt:
    """What PersonaPlex's generator records while a voice prompt plays (``save_voice_prompt_embeddings``): each
    step the agent stream is forced to the voice's codes, the user stream to a sine's, text to padding; the
    summed input embeddings of every step after the first, and the token ring buffer at the end."""
    n_q, delays = lm.n_q, list(lm.delays)
    per_stream = n_q // 2
    ct = max(delays) + 3
    initial = [lm.text_card] + [lm.card] * n_q
    cache = torch.full((n_q + 1, ct), -2, dtype=torch.long)  # -2: not generated yet
    steps: list[Tensor] = []
    for offset in range(voice_codes.shape[1]):
        for q in range(per_stream):
            cache[1 + q, (offset + delays[1 + q]) % ct] = voice_codes[q, offset]
            cache[1 + per_stream + q, (offset + delays[1 + per_stream + q]) % ct] = sine_codes[q]
        cache[0, (offset + delays[0]) % ct] = PERSONAPLEX_PROMPT_TEXT_TOKEN
        for k, delay in enumerate(delays):
            if offset <= delay:
                cache[k, offset % ct] = initial[k]
        if offset == 0:
            cache[:, 0] = torch.tensor(initial)
            continue
        tokens = cache[:, (offset - 1) % ct]
        emb = lm.text_emb(tokens[:1].view(1, 1))
        for k in range(n_q):
            emb = emb + lm.emb[k](tokens[1 + k : 2 + k].view(1, 1))
        steps.append(emb)  # (1, 1, dim)
    return VoicePrompt(embeddings=torch.stack(steps, dim=0), cache=cache[None].clone())


def _voice_audio(name: str, seconds: float, seed: int) -> Tensor:
    """A speech-like prompt for one voice: pitch by the name's F/M, timbre and rhythm by name and seed."""
    g = torch.Generator().manual_seed(seed * 1000 + sum(ord(c) * (i + 1) for i, c in enumerate(name)))
    n = int(seconds * SAMPLE_RATE)
    t = torch.arange(n, dtype=torch.float64) / SAMPLE_RATE
    u = torch.rand(4, generator=g, dtype=torch.float64)
    f0 = float(200 + 60 * u[0]) if name[3] == "F" else float(95 + 40 * u[0])
    freq = f0 * (1 + 0.06 * torch.sin(2 * torch.pi * (3 + 3 * u[1]) * t))
    phase = 2 * torch.pi * torch.cumsum(freq, 0) / SAMPLE_RATE
    tilt = 0.5 + u[2]
    voiced = sum(torch.sin(h * phase) / h**tilt for h in range(1, 8))
    envelope = torch.sin(torch.pi * (2.5 + 2 * u[3]) * t).abs() ** 1.5
    noise = 0.02 * torch.randn(n, generator=g, dtype=torch.float64)
    return (0.35 * voiced * envelope + noise).clamp(-1, 1).float()


def _write_tgz(directory: Path, files: list[Path], target: Path) -> None:
    """A reproducible ``voices.tgz`` (fixed times and owners) holding ``voices/NAME.pt``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            data = path.read_bytes()
            info = tarfile.TarInfo(str(path.relative_to(directory)))
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    with target.open("wb") as f, gzip.GzipFile(filename="", fileobj=f, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())


def init_checkpoint(family: FamilyName, out: Path, seed: int) -> Path:
    """Write a tiny random ``family`` checkpoint to ``out`` (created; must be empty) in that family's published
    layout, with a Mimi that listens; the same seed writes the same bytes. Returns ``out``."""
    if family not in MOSHI_FAMILIES:
        raise ModelError(f"unknown Moshi family {family!r}; choose one of {', '.join(MOSHI_FAMILIES)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"{out} exists and is not an empty directory")
    config = _tiny_config(family)
    loaders = upstream_loaders()
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]), _no_compile():
        torch.manual_seed(seed)
        mimi = _listening_mimi(_TINY_MIMI_CONFIG, seed)
        torch.manual_seed(seed + 1)
        lm_kwargs = {k: v for k, v in config.items() if k not in _LOADER_KEYS}
        lm = loaders.get_moshi_lm(None, lm_kwargs=copy.deepcopy(lm_kwargs), device="cpu", dtype=torch.float32)
        lm_state = {k: v.to(torch.bfloat16) for k, v in published_state_dict(lm).items()}  # published: bf16
    (out / _TINY_MIMI_CONFIG_NAME).write_text(json.dumps(_TINY_MIMI_CONFIG, indent=2) + "\n")
    _save_safetensors(published_state_dict(mimi), out / config["mimi_name"])  # float32, as upstream keeps Mimi
    _save_safetensors(lm_state, out / config["moshi_name"])
    _train_tokenizer(out / config["tokenizer_name"], config["text_card"], seed, family)
    if family == "personaplex":
        _write_voices(out, lm.to(torch.bfloat16), mimi, seed)
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return out


@torch.no_grad()
def _write_voices(out: Path, lm: Any, mimi: Any, seed: int) -> None:
    """``voices/NAME.pt`` for every published voice name, and ``voices.tgz`` holding them (as NVIDIA ships);
    ``lm`` holds the weights as written (bf16), so the embeddings are those the loaded LM computes."""
    per_stream = lm.n_q // 2
    mimi.set_num_codebooks(per_stream)
    with _no_compile():
        prompts = torch.stack([_voice_audio(name, 2.0, seed) for name in PERSONAPLEX_VOICES])[:, None]
        voice_codes = mimi.encode(prompts)  # (V, per_stream, frames)
        t = torch.arange(SAMPLE_RATE) / SAMPLE_RATE
        sine = (0.5 * torch.sin(2 * torch.pi * 440.0 * t))[None, None]  # PersonaPlex's "silent" user sine
        sine_codes = mimi.encode(sine)[0, :, -1]  # the steady-state frame
    (out / VOICES_DIR).mkdir()
    files = []
    for name, codes in zip(PERSONAPLEX_VOICES, voice_codes, strict=True):
        prompt = _voice_prompt(lm, codes, sine_codes)
        path = out / VOICES_DIR / f"{name}.pt"
        torch.save({"embeddings": prompt.embeddings.detach().clone(), "cache": prompt.cache}, path)
        files.append(path)
    _write_tgz(out, files, out / VOICES_TGZ)


def family_name(value: str) -> FamilyName:
    """``value`` as a Moshi family name, or ``ModelError`` listing the choices."""
    if value not in MOSHI_FAMILIES:
        raise ModelError(f"unknown Moshi family {value!r}; choose one of {', '.join(MOSHI_FAMILIES)}")
    return value
