"""Feasibility of ``torch.compile`` (inductor, CPU) for the streaming step: step CPU time compiled vs eager.

    python bench/model_step.py --compile [--batches 16,32,64] [--threads 1] [--repeats 12]

What is compiled is ``DuplexModel._substep`` (one 200 ms chunk = one sub-step) with ``dynamic=False``, so
each row count is its own graph (the buckets an engine would pad cohorts to). Two things of the model
cannot be traced as they stand, and are bridged here for the measurement only, not in the model:

- ``torch._grouped_mm`` has no CPU fake-tensor rule in torch 2.13 (its meta function demands bf16), so the
  routed experts run as one opaque custom op (``duplex_bench::routed_experts``) whose fake returns
  ``empty_like(x)``: the graph keeps the router, the shared expert and everything around the experts.
- ``invariant.enabled()`` reads a ``ContextVar``, which dynamo cannot trace (a graph break in every
  ``Linear``); the default (not batch-invariant) ``linear``/``matmul`` are swapped in while this runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from duplex.model import invariant, moe
from duplex.model.model import DuplexModel, StepOutput
from duplex.model.state import StreamState

_EXPERTS: dict[int, moe.Experts] = {}
"""The model's expert modules by layer, for the custom op (which can take tensors and scalars only)."""
_EAGER_FORWARD = moe.Experts.forward


@torch.library.custom_op("duplex_bench::routed_experts", mutates_args=())
def routed_experts(x: Tensor, experts: Tensor, weights: Tensor, layer: int) -> Tensor:
    """Layer ``layer``'s routed-expert output for tokens x (N, d) under a top-k routing, eagerly."""
    out: Tensor = _EAGER_FORWARD(_EXPERTS[layer], x, moe.Routing(experts, weights, x.new_zeros(())))
    return out


@routed_experts.register_fake
def _(x: Tensor, experts: Tensor, weights: Tensor, layer: int) -> Tensor:
    return torch.empty_like(x)


@contextmanager
def traceable(model: DuplexModel) -> Iterator[None]:
    """Make ``model``'s step traceable as described in the module docstring, for the duration."""
    layer_of = {}
    for i, block in enumerate(model.layers):
        assert block.moe.experts is not None
        _EXPERTS[i] = block.moe.experts
        layer_of[id(block.moe.experts)] = i

    def forward(self: moe.Experts, x: Tensor, routing: moe.Routing) -> Tensor:
        out: Tensor = routed_experts(x, routing.experts, routing.weights, layer_of[id(self)])
        return out

    saved = (moe.Experts.forward, invariant.linear, invariant.matmul)
    moe.Experts.forward = forward
    invariant.linear = lambda x, w, b=None: F.linear(x, w, b)
    invariant.matmul = lambda x, w: x @ w
    try:
        yield
    finally:
        moe.Experts.forward, invariant.linear, invariant.matmul = saved


SubStep = Callable[..., StepOutput]


def compare(
    model: DuplexModel, batches: list[int], repeats: int, deep_state: Callable[[DuplexModel, int], StreamState]
) -> None:
    """Per row count: compile time, then eager and compiled steps alternating (step thread CPU time p50)."""
    F_ = model.cfg.frames_per_chunk(200)
    with traceable(model), torch.no_grad():
        compiled: SubStep = torch.compile(model._substep, dynamic=False)
        for n in batches:
            frames = model._frames(torch.randn(n, F_ * model.cfg.frame_samples) * 0.1)
            states = {"eager": deep_state(model, n), "compiled": deep_state(model, n)}
            fns: dict[str, SubStep] = {"eager": model._substep, "compiled": compiled}
            t0 = time.perf_counter()
            compiled(states["compiled"], slice(0, n), None, frames, None, None, None)
            compile_s = time.perf_counter() - t0
            fns["eager"](states["eager"], slice(0, n), None, frames, None, None, None)
            times: dict[str, list[float]] = {"eager": [], "compiled": []}
            for i in range(repeats + 2):
                for k in ("eager", "compiled") if i % 2 else ("compiled", "eager"):
                    t = time.thread_time()
                    fns[k](states[k], slice(0, n), None, frames, None, None, None)
                    if i >= 2:  # warm-up
                        times[k].append((time.thread_time() - t) * 1e3)
            diff = max(
                float((a - b).abs().max())
                for a, b in zip(
                    (*states["eager"].k, *states["eager"].v),
                    (*states["compiled"].k, *states["compiled"].v),
                    strict=True,
                )
            )
            e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
            print(
                f"{n:3d} rows: compile {compile_s:5.1f} s; step CPU p50 eager {e:6.1f} ms, compiled {c:6.1f} ms: "
                f"eager/compiled ×{e / c:.2f}; max |Δ| of the caches {diff:.1e}",
                flush=True,
            )
