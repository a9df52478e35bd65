"""Moshi-family checkpoint directories as users have them: a local snapshot of a Hugging Face repository in
Kyutai's layout (``config.json``, LM weights, Mimi weights, SentencePiece text tokenizer; PersonaPlex voices).

``detect`` reads a directory and says which family it holds and where each file is (a ``Layout``), or raises
``ModelError`` naming the missing file or key; it reads only JSON and file names, never weights.

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

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ModelError
from ..family import FamilyName
from .upstream import upstream_lm_kwargs

MOSHI_FAMILIES: tuple[FamilyName, ...] = ("moshi", "personaplex", "hibiki")
"""The families this package reads and writes."""

CONFIG_NAME = "config.json"
# upstream's defaults (moshi/models/loaders.py) for a repository without config.json or without the name keys
DEFAULT_MOSHI_NAME = "model.safetensors"
DEFAULT_MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
DEFAULT_TOKENIZER_NAME = "tokenizer_spm_32k_3.model"
VOICES_DIR = "voices"
VOICES_TGZ = "voices.tgz"

PERSONAPLEX_VOICES = (
    *(f"NATF{i}" for i in range(4)),
    *(f"NATM{i}" for i in range(4)),
    *(f"VARF{i}" for i in range(5)),
    *(f"VARM{i}" for i in range(5)),
)
"""The voice prompts NVIDIA ships (README "Voices")."""

LOADER_KEYS = (
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
"""config.json keys that are not LM arguments (upstream ``CheckpointInfo.from_hf_repo`` pops them)."""
PUBLISHED_MIMI_BINS = 2048
PUBLISHED_MIMI_LEVELS = 32
"""The published Mimi: codebook size and residual levels (used when no ``mimi_config_name`` says otherwise)."""

_LM_REQUIRED = ("dim", "text_card", "n_q", "dep_q", "card", "num_heads", "num_layers", "delays")
"""LM arguments without a usable upstream default: a config.json with LM arguments must name them all."""
_LM_POSITIVE = ("dim", "text_card", "card", "num_heads", "num_layers")
"""LM arguments besides ``n_q`` and ``dep_q`` that must be positive integers."""
_MIMI_CONFIG_REQUIRED = ("sample_rate", "channels", "frame_rate", "seanet", "quantizer", "transformer")
_SERVED_MODEL_TYPES = ("moshi", "personaplex", "hibiki")


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


def checkpoint_error(directory: Path, message: str) -> ModelError:
    """The error for a checkpoint directory: ``checkpoint DIR: message``."""
    return ModelError(f"checkpoint {directory}: {message}")


def read_json(directory: Path, path: Path) -> dict[str, Any]:
    """A JSON object file of the checkpoint in ``directory``, or ``ModelError`` saying why not."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise checkpoint_error(directory, f"{path.name} is not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise checkpoint_error(directory, f"{path.name} must hold a JSON object, got {type(data).__name__}")
    return data


def detect(directory: Path) -> Layout:
    """Which Moshi-family checkpoint ``directory`` holds, and where its files are.

    Family: ``model_type: hibiki`` → Hibiki; a ``voices/`` folder (or ``voices.tgz``), ``model_type:
    personaplex`` or ``dep_q == n_q`` → PersonaPlex; otherwise Moshi. Raises ``ModelError`` naming the missing
    file or key, or saying the directory is not a Moshi-family checkpoint at all."""
    directory = Path(directory)
    if not directory.is_dir():
        raise checkpoint_error(directory, "not a directory")
    config_path = directory / CONFIG_NAME
    has_config = config_path.is_file()
    config = read_json(directory, config_path) if has_config else _no_config(directory)
    model_type = _model_type(directory, config)
    family = _family(directory, config, model_type)
    lm_config = _lm_config(directory, config, family)

    moshi_weights = _resolve(directory, config, has_config, "moshi_name", DEFAULT_MOSHI_NAME, "LM weights")
    mimi_weights = _resolve(directory, config, has_config, "mimi_name", DEFAULT_MIMI_NAME, "mimi weights")
    tokenizer = _resolve(directory, config, has_config, "tokenizer_name", DEFAULT_TOKENIZER_NAME, "text tokenizer")
    mimi_config_path, mimi_bins, mimi_levels = _mimi_quantizer(directory, config)
    lora_weights = None
    if config.get("lora_name"):
        lora_weights = _resolve(directory, config, True, "lora_name", "", "LoRA weights")

    n_q, dep_q, card = _lm_shape(lm_config)
    if card != mimi_bins:
        raise checkpoint_error(
            directory, f"config.json card ({card}) differs from the Mimi codebook size ({mimi_bins})"
        )
    voices: dict[str, Path] = {}
    if family == "personaplex":
        voices = _personaplex_voices(directory, n_q, dep_q)
        mimi_codebooks = n_q // 2
    else:
        mimi_codebooks = max(dep_q, n_q - dep_q)
    if mimi_codebooks > mimi_levels:
        raise checkpoint_error(
            directory, f"the LM reads {mimi_codebooks} codebooks per stream; the Mimi has {mimi_levels}"
        )
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
# detect's steps, in the order it checks


def _no_config(directory: Path) -> dict[str, Any]:
    """The (empty) config of a directory without config.json, if its published weights say it is a checkpoint."""
    if not (directory / DEFAULT_MOSHI_NAME).is_file() and not (directory / DEFAULT_MIMI_NAME).is_file():
        raise checkpoint_error(
            directory,
            f"not a Moshi-family checkpoint: no {CONFIG_NAME} and no {DEFAULT_MOSHI_NAME} "
            "(expected a snapshot of e.g. kyutai/moshiko-pytorch-bf16, nvidia/personaplex-7b-v1 or "
            "kyutai/hibiki-1b-pytorch-bf16)",
        )
    return {}


def _model_type(directory: Path, config: dict[str, Any]) -> str:
    """config.json's ``model_type`` (upstream's default ``moshi`` when absent), if it is one served here."""
    model_type = config.get("model_type", "moshi")
    if model_type not in _SERVED_MODEL_TYPES:
        raise checkpoint_error(
            directory, f"config.json model_type {model_type!r} is not served here (moshi, personaplex or hibiki)"
        )
    return model_type


def _family(directory: Path, config: dict[str, Any], model_type: str) -> FamilyName:
    """Hibiki by ``model_type``; PersonaPlex by ``model_type``, its voices or ``dep_q == n_q``; else Moshi."""
    if model_type == "hibiki":
        return "hibiki"
    if (
        model_type == "personaplex"
        or (directory / VOICES_DIR).is_dir()
        or (directory / VOICES_TGZ).is_file()
        or (isinstance(config.get("n_q"), int) and config.get("dep_q") == config.get("n_q"))
    ):
        return "personaplex"
    return "moshi"


def _lm_config(directory: Path, config: dict[str, Any], family: FamilyName) -> dict[str, Any] | None:
    """The LM's arguments from config.json, checked; None when config.json carries none (published 7B shape)."""
    if not any(k in config for k in _LM_REQUIRED):
        if family == "hibiki":
            raise checkpoint_error(directory, "config.json has no 'dim': Hibiki's LM shape must be given")
        if family == "personaplex":
            return {**upstream_lm_kwargs(), "dep_q": 16}  # NVIDIA's loader: Moshi 7B with 16 depformer steps
        return None
    _check_lm_arguments(directory, config)
    return {k: v for k, v in config.items() if k not in LOADER_KEYS}


def _check_lm_arguments(directory: Path, config: dict[str, Any]) -> None:
    """Every required LM argument present, the integers positive, ``dep_q <= n_q``, the delays well formed."""
    for key in _LM_REQUIRED:
        if key not in config:
            raise checkpoint_error(directory, f"config.json has no {key!r}")
    n_q = _int_key(directory, config, "n_q")
    dep_q = _int_key(directory, config, "dep_q")
    for key in _LM_POSITIVE:
        _int_key(directory, config, key)
    if dep_q > n_q:
        raise checkpoint_error(directory, f"config.json dep_q ({dep_q}) exceeds n_q ({n_q})")
    _check_delays(directory, config["delays"], n_q)


def _check_delays(directory: Path, delays: Any, n_q: int) -> None:
    """One non-negative integer delay per stream: the text stream and ``n_q`` audio codebooks."""
    if not isinstance(delays, list) or not all(isinstance(d, int) and d >= 0 for d in delays):
        raise checkpoint_error(
            directory, f"config.json 'delays' must be a list of non-negative integers, got {delays!r}"
        )
    if len(delays) != n_q + 1:
        raise checkpoint_error(
            directory, f"config.json 'delays' has {len(delays)} entries; n_q + 1 = {n_q + 1} expected"
        )


def _int_key(directory: Path, config: dict[str, Any], key: str) -> int:
    value = config[key]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise checkpoint_error(directory, f"config.json {key!r} must be a positive integer, got {value!r}")
    return value


def _resolve(directory: Path, config: dict[str, Any], has_config: bool, key: str, default: str, what: str) -> Path:
    """The file config.json names under ``key`` (upstream's ``default`` when the key is absent)."""
    name = config.get(key)
    if name is None:
        path = directory / default
        if path.is_file():
            return path
        if has_config:
            raise checkpoint_error(
                directory, f"config.json has no {key!r} and the default {what} {default!r} is not there"
            )
        raise checkpoint_error(directory, f"{what} {default!r} not found")
    if not isinstance(name, str) or not name:
        raise checkpoint_error(directory, f"config.json {key!r} must be a file name, got {name!r}")
    if name.startswith("hf://"):
        raise checkpoint_error(
            directory,
            f"config.json {key!r} = {name!r} points at the model hub; nothing is downloaded here: put the file in "
            "the directory and name it",
        )
    path = directory / name.removeprefix("file://")
    if not path.is_file():
        raise checkpoint_error(directory, f"{what} {name!r} (config.json {key}) not found")
    return path


def _mimi_quantizer(directory: Path, config: dict[str, Any]) -> tuple[Path | None, Any, Any]:
    """(mimi config path, codebook size, residual levels): from ``mimi_config_name`` when config.json names one,
    else the published Mimi's."""
    if config.get("mimi_config_name") is None:
        return None, PUBLISHED_MIMI_BINS, PUBLISHED_MIMI_LEVELS
    path = _resolve(directory, config, True, "mimi_config_name", "", "mimi config")
    mimi_config = read_json(directory, path)
    for key in _MIMI_CONFIG_REQUIRED:
        if key not in mimi_config:
            raise checkpoint_error(directory, f"mimi config {path.name!r} has no {key!r}")
    quantizer = mimi_config["quantizer"]
    if not isinstance(quantizer, dict) or "bins" not in quantizer or "n_q" not in quantizer:
        raise checkpoint_error(directory, f"mimi config {path.name!r}: 'quantizer' needs 'bins' and 'n_q'")
    return path, quantizer["bins"], quantizer["n_q"]


def _lm_shape(lm_config: dict[str, Any] | None) -> tuple[int, int, int]:
    """(n_q, dep_q, card) of the LM; upstream's built-in Moshi 7B when config.json gives no LM arguments."""
    if lm_config is None:
        return 16, 8, PUBLISHED_MIMI_BINS
    return lm_config["n_q"], lm_config["dep_q"], lm_config["card"]


def _personaplex_voices(directory: Path, n_q: int, dep_q: int) -> dict[str, Path]:
    """PersonaPlex's voice prompts by name, checked: its depformer writes both streams, its voices are unpacked."""
    if dep_q != n_q:
        raise checkpoint_error(
            directory,
            f"PersonaPlex predicts both streams in its depformer (dep_q == n_q); config.json has dep_q {dep_q}, "
            f"n_q {n_q}",
        )
    voices_dir = directory / VOICES_DIR
    if not voices_dir.is_dir():
        if (directory / VOICES_TGZ).is_file():
            raise checkpoint_error(
                directory,
                f"PersonaPlex voice prompts are still packed in {VOICES_TGZ}: extract it "
                f"(tar -xzf {VOICES_TGZ}) so that {VOICES_DIR}/NAME.pt exist",
            )
        raise checkpoint_error(directory, f"PersonaPlex voice prompts {VOICES_DIR}/*.pt not found")
    voices = {p.stem: p for p in sorted(voices_dir.glob("*.pt"))}
    if not voices:
        raise checkpoint_error(directory, f"{VOICES_DIR}/ holds no voice prompt (*.pt)")
    return voices
