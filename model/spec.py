"""Where a served model comes from: the spec shared by ``duplex engine`` flags, the CRD and Helm values."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FamilyChoice = Literal["auto", "duplex", "moshi", "personaplex", "hibiki"]


class ModelSource(BaseModel):
    """Which weights to serve, of which model family, in what precision and with which sampling."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    family: FamilyChoice = "auto"
    """Model family. ``auto``: a directory ``uri`` is a Moshi-family checkpoint (Moshi, PersonaPlex or Hibiki,
    told apart by its files), anything else this repository's ``duplex`` model. Naming the family makes a
    checkpoint of another family an error."""
    preset: str = "tiny"
    """Architecture preset of the ``duplex`` family (``duplex model info --preset NAME``); must match the
    checkpoint's embedded config."""
    uri: str | None = None
    """Checkpoint path inside the pod: a ``.safetensors`` file (``duplex``) or a directory holding a local
    snapshot of a Moshi-family repository (``config.json``, LM and Mimi weights, text tokenizer). Empty = the
    shipped reference checkpoint, or random weights (with a warning) when none ships."""
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    """Moshi family: sampling temperature for text and audio (0 = greedy); empty = the checkpoint's
    ``lm_gen_config``, else upstream's defaults. The ``duplex`` family always decides greedily."""
    top_k: int | None = Field(None, ge=1, le=4096)
    """Moshi family: top-k of audio-token sampling; empty = the checkpoint's ``lm_gen_config``, else upstream's
    default."""
    cfg_coef: float | None = Field(None, ge=1.0, le=10.0)
    """Hibiki: classifier-free guidance coefficient (1 = none; Kyutai suggests 3: the translated voice keeps
    closer to the speaker's). Above 1 every session runs as two LM rows, twice the LM's compute and KV cache;
    empty = the checkpoint's ``lm_gen_config``, else 1."""
    voice: str = Field("", max_length=64)
    """PersonaPlex: the default voice of every session, a name of the checkpoint's ``voices/`` (``NATF2``);
    empty = no voice prompt. Other families refuse it."""
    persona: str = Field("", max_length=4096)
    """PersonaPlex: the default ``<system>`` persona of every session (a session's instructions replace it);
    empty = none. Other families refuse it."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weight and activation dtype (bfloat16 on GPUs)."""
    seed: int = Field(0, ge=0)
    """Seed for random weights when no checkpoint is given."""
