"""Batch-invariant CPU kernels for upstream ``moshi`` code, which this project does not edit.

A row's results must not depend on the rows stepped with it (``duplex.model.invariant``): on CPU that takes
oneDNN (mkldnn) off — its convolutions pick their algorithm by batch size, the native ones compute each batch
element alone — and at least ``invariant.MIN_GEMM_ROWS`` rows in every matrix product. Upstream's matrix
products are ``F.linear`` (``nn.Linear`` and the gating's direct calls) and the quantizer's ``torch.cdist`` (a
GEMM against the codebook), both looked up as module attributes at call time. Inside ``invariant_kernels``
those two attributes are row-padding wrappers, and they pad only on a thread inside the context (a context
variable): another thread calling ``F.linear`` meanwhile gets torch's own kernel. Every other op runs
untouched, with no Python in between — a ``TorchFunctionMode`` would give the same results but intercepts
every op of the step (about 3500 per frame for a small checkpoint), which cost half the step at 4 rows.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import invariant

_cdist = torch.cdist
"""torch's own ``torch.cdist``, held while the attribute is swapped."""
_padding: ContextVar[bool] = ContextVar("duplex_moshi_row_padding", default=False)
"""Whether this thread is inside ``invariant_kernels``."""
_lock = threading.Lock()
_users = 0
"""Threads inside ``invariant_kernels`` (the attributes are swapped while it is above 0)."""


def _linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    if _padding.get():
        return invariant.padded_linear(input, weight, bias)
    return invariant.torch_linear(input, weight, bias)


def _padded_cdist(x1: Tensor, x2: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    n = x1.shape[-2]
    if not _padding.get() or n == 0 or n >= invariant.MIN_GEMM_ROWS:
        return _cdist(x1, x2, *args, **kwargs)
    padded = x1.new_zeros(*x1.shape[:-2], invariant.MIN_GEMM_ROWS, x1.shape[-1])
    padded[..., :n, :] = x1
    return _cdist(padded, x2, *args, **kwargs)[..., :n, :]


@contextmanager
def _swapped() -> Iterator[None]:
    """``F.linear`` and ``torch.cdist`` are the padding wrappers while any thread is inside."""
    global _users
    with _lock:
        if _users == 0:
            F.linear = _linear
            torch.cdist = _padded_cdist
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                F.linear = invariant.torch_linear
                torch.cdist = _cdist


@contextmanager
def invariant_kernels(on: bool, device: torch.device) -> Iterator[None]:
    """Batch-invariant execution of upstream code for the duration (CPU only; ``on`` False or another device:
    nothing changes)."""
    if not on or device.type != "cpu":
        yield
        return
    was = torch._C._get_mkldnn_enabled()  # (not mkldnn.flags(): that also sets oneDNN TF32 and warns)
    torch._C._set_mkldnn_enabled(False)
    token = _padding.set(True)
    try:
        with _swapped():
            yield
    finally:
        _padding.reset(token)
        torch._C._set_mkldnn_enabled(was)
