"""Batch-invariant execution: a row's results do not depend on the other rows stepped with it.

Why a session's outputs could depend on its neighbours at all: the math of every op is row-wise, but the
CPU kernels are not. Measured on the 2-core machines here (torch 2.13 CPU, probe in
``bench/batch_invariance_probe.py``), a row is bit-identical alone and among others for the elementwise ops,
RMSNorm, softmax, rfft, embedding lookups, ``scaled_dot_product_attention`` (each batch element is its own
problem) and the codec — and NOT for matrix products: ``X @ W`` takes a small-M kernel with another
reduction order when X has few rows (1–3 with one thread; 1–3, 5–7 and 9–11 with two), and gives one and
the same result per row for every M >= 12 (checked up to 700), at any row index. So a session stepped
alone (5 frames = 5 rows) rounds differently than the same session inside a batch of 16 (80 rows); and a
MoE expert's GEMM has as many rows as tokens routed to it, a count the other sessions decide.

The fix is the cheapest one that makes every GEMM's row count irrelevant: pad each product to at least
``MIN_GEMM_ROWS`` rows (zeros, sliced off after) — dense layers when the whole step has fewer rows, and
each expert's group in the MoE's grouped GEMM. At 16+ sessions the dense layers already have 80+ rows, so
the cost is mostly the padding of lightly-loaded experts. Routed contributions are summed in the token's
own top-k order, never in an order set by the batch.

The switch is a context variable, set by ``DuplexModel.step(batch_invariant=True)`` for the duration of
one step, so the layers need no extra argument and the teacher-forced ``forward`` is untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch.nn.functional as F
from torch import Tensor

MIN_GEMM_ROWS = 16
"""Least rows of any matrix product in batch-invariant mode. The measured small-M kernels end below 12
rows; 16 keeps a margin above them. It was 32: padding a lightly-loaded expert to 32 rows cost ~10 % of a
16-session step, and every output is bit-identical either way, because each row's result is one and the
same for every M >= 12 (see docs/benchmarks.md, "Model step profile and cheaper full-window steps")."""

_enabled: ContextVar[bool] = ContextVar("duplex_batch_invariant", default=False)


@contextmanager
def batch_invariant(on: bool = True) -> Iterator[None]:
    """Run the enclosed model code batch-invariantly (``on``) or with the fastest kernels (``not on``)."""
    token = _enabled.set(on)
    try:
        yield
    finally:
        _enabled.reset(token)


def enabled() -> bool:
    """Whether the current step runs batch-invariantly."""
    return _enabled.get()


def padded_rows(rows: int) -> int:
    """Rows a product of ``rows`` rows is computed with in batch-invariant mode (0 stays 0)."""
    return max(rows, MIN_GEMM_ROWS) if rows else 0


def _pad_rows(x2d: Tensor) -> Tensor:
    padded = x2d.new_zeros(MIN_GEMM_ROWS, x2d.shape[1])
    padded[: x2d.shape[0]] = x2d
    return padded


torch_linear = F.linear
"""torch's own ``F.linear`` (a builtin), held here: ``duplex.model.moshi.kernels`` swaps ``F.linear`` itself."""


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear`` over the last dim of x (..., in) → (..., out), row-count independent when enabled."""
    if not _enabled.get():
        return torch_linear(x, weight, bias)
    return padded_linear(x, weight, bias)


def padded_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear`` computed with at least ``MIN_GEMM_ROWS`` rows (zero rows sliced off after), always."""
    rows = x.reshape(-1, x.shape[-1])
    n = rows.shape[0]
    if n >= MIN_GEMM_ROWS or n == 0:
        return torch_linear(x, weight, bias)
    return torch_linear(_pad_rows(rows), weight, bias)[:n].reshape(*x.shape[:-1], weight.shape[0])


def matmul(x: Tensor, w: Tensor) -> Tensor:
    """``x @ w`` for x (..., k) and a matrix w (k, m), row-count independent when enabled."""
    rows = x.reshape(-1, x.shape[-1])
    n = rows.shape[0]
    if not _enabled.get() or n >= MIN_GEMM_ROWS or n == 0:
        return x @ w
    return (_pad_rows(rows) @ w)[:n].reshape(*x.shape[:-1], w.shape[1])
