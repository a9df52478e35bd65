"""Which CPU ops make a row's result depend on the other rows of its batch? (evidence for model/invariant.py)

    python bench/probes/batch_invariance_probe.py

For each op on the model's real shapes, one row is computed alone and at several positions inside batches
of 2..64 rows of other data; the op is invariant when every result is ``torch.equal`` to the solo one.
Then the matrix product is scanned over its row count M: which M give another per-row result than M = 320
(the 64-session step). Measured 2026-11-29, torch 2.13 CPU, 2 cores: the per-row result of a matrix
product differs for M in 1-3 with one thread and M in 1-3, 5-7, 9-11 with two (then a 5-row solo step
breaks the linear layers); rfft, RMSNorm, softmax and SDPA are invariant; a grouped expert GEMM breaks
(its group sizes come from the other rows) unless every group is padded to >= 12 rows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Op = Callable[[torch.Tensor], torch.Tensor]


def invariant(op: Op, make_row: Callable[[], torch.Tensor], sizes: tuple[int, ...] = (2, 3, 8, 17, 63, 64)) -> bool:
    """Whether ``op``'s result for one row is the same alone and at any position among ``sizes`` rows."""
    row = make_row()
    ref = op(row)
    for n in sizes:
        for at in {0, n // 2, n - 1}:
            rows = [make_row() for _ in range(n - 1)]
            rows.insert(at, row)
            if not torch.equal(op(torch.cat(rows))[at : at + 1], ref):
                return False
    return True


def main() -> None:
    torch.manual_seed(0)
    d, frames, ring = 256, 5, 325
    w = torch.randn(512, d) * 0.06
    mel = torch.rand(321, 40)
    experts = torch.randn(8, d, 512) * 0.06

    def grouped(x: torch.Tensor) -> torch.Tensor:  # expert chosen by the data: the group sizes vary
        flat = x.reshape(-1, d)
        e = (flat[:, 0].abs() * 1000).long() % 8
        order = torch.argsort(e, stable=True)
        offs = torch.cumsum(torch.bincount(e, minlength=8), 0).int()
        y = torch._grouped_mm(flat[order], experts, offs=offs)
        return torch.empty_like(y).index_copy_(0, order, y).reshape(x.shape[0], frames, -1)

    def sdpa(x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        q, k, v = x[:, :1280].view(B, 2, 10, 64), x[:, 1280:42880].view(B, 2, ring, 64), x[:, 42880:84480]
        mask = x[:, 84480:].view(B, 1, 10, ring) > 0.3
        return F.scaled_dot_product_attention(q, k, v.reshape(B, 2, ring, 64), attn_mask=mask).flatten(1)

    def frame() -> torch.Tensor:
        return torch.randn(1, frames, d)

    ops: dict[str, tuple[Op, Callable[[], torch.Tensor]]] = {
        "linear 256->512": (lambda x: F.linear(x, w), frame),
        "rfft(640)": (lambda x: torch.fft.rfft(x, dim=-1), lambda: torch.randn(1, frames, 640)),
        "power spectrum @ mel": (lambda x: x @ mel, lambda: torch.rand(1, frames, 321)),
        "rmsnorm": (lambda x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6), frame),
        "softmax(1024)": (lambda x: x.softmax(-1), lambda: torch.randn(1, frames, 1024)),
        "sdpa over the ring": (sdpa, lambda: torch.rand(1, 1280 + 4 * ring * 64 + 10 * ring)),
        "grouped expert GEMM": (grouped, frame),
    }
    for name, (op, make) in ops.items():
        print(f"{name:24s} {'invariant' if invariant(op, make) else 'BREAKS'}")
    r = torch.randn(1, d)

    def row_of(m: int, at: int) -> torch.Tensor:
        x = torch.randn(m, d)
        x[at] = r
        return F.linear(x, w)[at]

    base = row_of(320, 100)
    bad = [m for m in range(1, 400) if not all(torch.equal(row_of(m, at), base) for at in {0, m // 2, m - 1})]
    print(f"linear: row counts M whose per-row result differs from M=320: {bad}")


if __name__ == "__main__":
    main()
