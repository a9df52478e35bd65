"""Loading a Moshi-family checkpoint directory (``layout.detect``'s answer) with the upstream ``moshi`` loaders,
local paths only (nothing is ever downloaded): the LM, Mimi and text tokenizer in eval mode, and PersonaPlex's voice
prompts, each checked against the LM so that a mismatch is named before anything is served."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import ModelError
from ..family import FamilyName
from .layout import Layout, checkpoint_error, detect, read_json
from .upstream import upstream_loaders


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
        raise checkpoint_error(d, f"mimi weights {layout.mimi_weights.name!r} do not load: {_short(e)}") from e
    mimi.set_num_codebooks(layout.mimi_codebooks)  # upstream sets max(dep_q, n_q - dep_q): 16 for PersonaPlex
    try:
        lm = info.get_moshi(device=device, dtype=dtype)
    except Exception as e:
        raise checkpoint_error(
            d, f"LM weights {layout.moshi_weights.name!r} do not fit the LM's shape: {_short(e)}"
        ) from e
    try:
        tokenizer = info.get_text_tokenizer()
    except Exception as e:
        raise checkpoint_error(
            d, f"text tokenizer {layout.tokenizer.name!r} is not a SentencePiece model: {_short(e)}"
        ) from e
    if tokenizer.vocab_size() != lm.text_card:
        raise checkpoint_error(
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


def load_voice_prompt(path: Path, dim: int | None = None, num_codebooks: int | None = None) -> VoicePrompt:
    """Read a PersonaPlex voice prompt (``voices/NAME.pt``) and check its shapes against the LM when given."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"voice prompt {path}: not a readable torch file ({_short(e)})") from e
    if not isinstance(state, dict) or not {"embeddings", "cache"} <= state.keys():
        raise ModelError(f"voice prompt {path}: expected a dict with 'embeddings' and 'cache'")
    emb, cache = state["embeddings"], state["cache"]
    _check_prompt_embeddings(path, emb, dim)
    _check_prompt_cache(path, cache, num_codebooks)
    return VoicePrompt(embeddings=emb, cache=cache)


def _check_prompt_embeddings(path: Path, emb: Any, dim: int | None) -> None:
    if not isinstance(emb, Tensor) or emb.dim() != 4 or emb.shape[1:3] != (1, 1) or emb.shape[0] == 0:
        raise ModelError(f"voice prompt {path}: 'embeddings' must be (T, 1, 1, dim), got {getattr(emb, 'shape', emb)}")
    if dim is not None and emb.shape[3] != dim:
        raise ModelError(f"voice prompt {path}: embeddings have dim {emb.shape[3]}, the LM has {dim}")


def _check_prompt_cache(path: Path, cache: Any, num_codebooks: int | None) -> None:
    if not isinstance(cache, Tensor) or cache.dim() != 3 or cache.dtype != torch.long or cache.shape[0] != 1:
        raise ModelError(f"voice prompt {path}: 'cache' must be (1, K, CT) long, got {getattr(cache, 'shape', cache)}")
    if num_codebooks is not None and cache.shape[1] != num_codebooks:
        raise ModelError(f"voice prompt {path}: cache has {cache.shape[1]} streams, the LM has {num_codebooks}")


def _hf_snapshot_name(directory: Path) -> str | None:
    """``org/name`` for a Hugging Face cache snapshot (``models--org--name/snapshots/<revision>``)."""
    parts = directory.resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/")
    return None


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
            raise checkpoint_error(d, f"upstream could not read the checkpoint: {_short(e)}") from e
    # no LM arguments in config.json (or no config.json): the published 7B shape, as upstream assumes
    mimi_config = None if layout.mimi_config_path is None else read_json(d, layout.mimi_config_path)
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
