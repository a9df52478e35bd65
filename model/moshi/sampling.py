"""Per-session sampling on upstream's ``LMGen``, which holds one temperature and one top-k for all its rows.

Each slot has its own ``RowSampling`` (the engine's settings unless the session asked for its own). A step whose
rows all sample as the engine does runs upstream as is. Otherwise, for the step's duration, the name
``sample_token`` that upstream's ``LMGen`` calls (in ``moshi.models.lm``) is a ``RowSampler``: only that call is
replaced, the rest of the step is upstream's. The sampler takes every row's greedy token (``argmax``, as
upstream's greedy branch), then, per group of rows with the same sampled settings, upstream's own
``sample_token`` on those rows' logits. A greedy row's token is its own logits' argmax whatever shares its step,
so it equals itself alone; sampled rows draw from the process's torch generator (no per-session seed). Text
is sampled with the row's temperature and upstream's text top-k; audio with its temperature and top-k.
``LMGen``'s ``on_text_logits_hook`` (called just before the text is sampled) tells the sampler which call is
the text's; every other call in a step is one audio codebook's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import moshi.models.lm as upstream_lm
import torch
from moshi.utils.sampling import sample_token
from torch import Tensor

from ..config import ModelError

UPSTREAM_NAME = "sample_token"
"""The name ``moshi.models.lm`` calls for every token ``LMGen`` samples (text, then each audio codebook)."""
MAX_TEMPERATURE = 5.0
"""The highest temperature a session may ask for (beyond it the model's output is noise)."""


@dataclass(frozen=True)
class RowSampling:
    """How one row samples its text and audio tokens."""

    temperature: float
    """0 = greedy (argmax); otherwise the temperature of text and audio."""
    top_k: int
    """Top-k of audio sampling (text: ``top_k_text`` of the model)."""


def check_sampling(temperature: float | None, top_k: int | None, default: RowSampling, card: int) -> RowSampling:
    """A session's settings over the engine's ``default`` (None = the default's); ``ModelError`` whose message
    starts with the field (``temperature``, ``top_k``) otherwise."""
    if temperature is not None and not (math.isfinite(temperature) and 0.0 <= temperature <= MAX_TEMPERATURE):
        raise ModelError(f"temperature {temperature}: must be from 0 (greedy) to {MAX_TEMPERATURE}")
    if top_k is not None and not 1 <= top_k <= card:
        raise ModelError(f"top_k {top_k}: must be from 1 to the model's {card} audio codes")
    return RowSampling(
        default.temperature if temperature is None else float(temperature),
        default.top_k if top_k is None else int(top_k),
    )


class RowSampler:
    """Stands in for upstream's ``sample_token`` during one step of rows with these settings."""

    def __init__(self, rows: Sequence[RowSampling], top_k_text: int) -> None:
        self.rows, self.top_k_text = list(rows), top_k_text
        self._text_next = False
        groups: dict[RowSampling, list[int]] = {}
        for i, s in enumerate(self.rows):
            if s.temperature > 0:
                groups.setdefault(s, []).append(i)
        self.groups = groups
        """Sampled settings → the rows that use them (greedy rows are in none)."""
        self._index: dict[RowSampling, Tensor] = {}

    def text_next(self, text_logits: Tensor) -> None:
        """``LMGen.on_text_logits_hook``: the next sampling call is the text's."""
        self._text_next = True

    def __call__(
        self, logits: Tensor, use_sampling: bool = False, temp: float = 1.0, top_k: int = 0, top_p: float = 0.0
    ) -> Tensor:
        """Upstream's signature; the row settings replace ``use_sampling``, ``temp`` and ``top_k``."""
        text, self._text_next = self._text_next, False
        if logits.shape[0] != len(self.rows):
            raise RuntimeError(f"sampling {logits.shape[0]} rows with settings for {len(self.rows)}")
        out = torch.argmax(logits, dim=-1)
        for s, rows in self.groups.items():
            index = self._index.get(s)
            if index is None or index.device != logits.device:
                index = self._index[s] = torch.tensor(rows, dtype=torch.long, device=logits.device)
            k = self.top_k_text if text else s.top_k
            out[index] = sample_token(logits[index], True, s.temperature, k, top_p)
        return out


@contextmanager
def row_sampling(gen: Any, rows: Sequence[RowSampling], default: RowSampling, top_k_text: int) -> Iterator[None]:
    """Step ``gen`` (an upstream ``LMGen`` built with ``default``'s settings) with each row's own settings."""
    if all(s == default for s in rows):
        yield
        return
    sampler = RowSampler(rows, top_k_text)
    hook = gen.on_text_logits_hook
    if hook is not None:
        raise RuntimeError("LMGen.on_text_logits_hook is already set")
    gen.on_text_logits_hook = sampler.text_next
    setattr(upstream_lm, UPSTREAM_NAME, sampler)
    try:
        yield
    finally:
        setattr(upstream_lm, UPSTREAM_NAME, sample_token)
        gen.on_text_logits_hook = None
