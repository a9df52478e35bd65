"""Batch-invariant kernels for upstream code: ``F.linear`` and ``torch.cdist`` pad rows only on the thread inside
``invariant_kernels``, only while it is inside, and torch's own functions are back afterwards, however threads
overlap."""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from duplex.model import invariant
from duplex.model.moshi import kernels

CPU = torch.device("cpu")
TORCH_LINEAR = torch._C._nn.linear
TORCH_CDIST = torch.cdist


def test_linear_and_cdist_are_padded_inside_and_torchs_own_after() -> None:
    x, w, b = torch.randn(3, 8), torch.randn(5, 8), torch.randn(5)
    codebook = torch.randn(1, 7, 8)
    with kernels.invariant_kernels(True, CPU):
        assert F.linear is not TORCH_LINEAR and torch.cdist is not TORCH_CDIST
        assert not torch._C._get_mkldnn_enabled()
        out = F.linear(x, w, b)
        dists = torch.cdist(x[None], codebook)
    assert F.linear is TORCH_LINEAR and torch.cdist is TORCH_CDIST
    padded = torch.zeros(invariant.MIN_GEMM_ROWS, 8)
    padded[:3] = x
    assert torch.equal(out, TORCH_LINEAR(padded, w, b)[:3])
    assert torch.equal(dists, TORCH_CDIST(padded[None], codebook)[:, :3])


def test_off_or_another_device_changes_nothing() -> None:
    for on, device in ((False, CPU), (True, torch.device("meta"))):
        with kernels.invariant_kernels(on, device):
            assert F.linear is TORCH_LINEAR and torch.cdist is TORCH_CDIST


def test_another_thread_gets_torchs_kernels_and_the_last_one_out_restores_them() -> None:
    inside, leave = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def stepper() -> None:
        with kernels.invariant_kernels(True, CPU):
            inside.set()
            leave.wait()

    t = threading.Thread(target=stepper)
    t.start()
    assert inside.wait(10)
    # this thread is outside: the wrapper is installed, but it pads nothing here
    x, w = torch.randn(2, 4), torch.randn(3, 4)
    assert F.linear is not TORCH_LINEAR
    seen["padding"] = kernels._padding.get()
    seen["out"] = F.linear(x, w)
    with kernels.invariant_kernels(True, CPU):  # both threads inside, then the other one leaves first
        leave.set()
        t.join(10)
        assert not t.is_alive()
        assert F.linear is not TORCH_LINEAR and kernels._padding.get()
    assert seen["padding"] is False
    assert isinstance(seen["out"], torch.Tensor) and torch.equal(seen["out"], TORCH_LINEAR(x, w))
    assert F.linear is TORCH_LINEAR and torch.cdist is TORCH_CDIST
