"""Growing a trained checkpoint's text vocabulary (fine-tuning it into a model with word tokens).

The new tokens start where they change nothing: each new row of the text head copies the row of the token it
stands in for (a word's first byte; PAD for an id that is no word) and the head's bias puts it ``WORD_MARGIN``
logits below that token, so it is never the argmax and the grown model decides exactly as the old one did; its
read-back embedding copies the same row (the model reads back a word token as the first letter it used to
write there), and its typed-text embedding row is zero (typed text is always bytes). Training then only has to
lift the word tokens past the letters they copy.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import ModelConfig

WORD_MARGIN = 8.0
"""Logits a grown token starts below the token it copies."""


def grows_text(src: ModelConfig, cfg: ModelConfig) -> bool:
    """Whether a ``src`` checkpoint's text vocabulary is a part of ``cfg``'s that ``grow_text`` completes: its
    word tokens a prefix of ``cfg``'s and no id past them."""
    exact = src.text_vocab == src.first_word_token + src.text_words
    return exact and src.text_words <= cfg.text_words and src.text_vocab < cfg.text_vocab


def _source(cfg: ModelConfig, token: int) -> int:
    word = cfg.token_word(token)
    return word.encode()[0] if word is not None else cfg.pad_token


def grow_text(state: dict[str, Tensor], src: ModelConfig, cfg: ModelConfig) -> dict[str, Tensor]:
    """The state dict of a ``src`` model with the text vocabulary of ``cfg`` (see the module doc); the other
    tensors are ``state``'s own."""
    n = src.text_vocab
    rows = torch.tensor([_source(cfg, t) for t in range(n, cfg.text_vocab)])
    out = dict(state)
    head = state["text_head.weight"]
    bias = state.get("text_head.bias", head.new_zeros(n))
    out["text_head.weight"] = torch.cat([head, head[rows]])
    out["text_head.bias"] = torch.cat([bias, bias[rows] - WORD_MARGIN])
    own = state["inputs.own_text.weight"]
    out["inputs.own_text.weight"] = torch.cat([own, own[rows]])
    typed = state.get("inputs.text_in.weight")
    if typed is not None:
        out["inputs.text_in.weight"] = torch.cat([typed, typed.new_zeros(len(rows), typed.shape[1])])
    return out
