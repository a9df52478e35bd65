from __future__ import annotations

import pytest
import torch

from duplex.model.config import ModelConfig
from duplex.model.moe import Experts, MoeImpl, dispatch, route


@pytest.mark.parametrize("impl", ["loop", "bmm", "grouped"])
def test_impls_agree_with_reference(tiny: ModelConfig, impl: MoeImpl) -> None:
    torch.manual_seed(1)
    experts = Experts(tiny, impl=impl)
    x = torch.randn(97, tiny.d_model)
    routing = route(torch.randn(97, tiny.n_experts) * 3, tiny.top_k)
    # reference: every token through its experts one by one
    ref = torch.zeros_like(x)
    for n in range(x.shape[0]):
        for j in range(tiny.top_k):
            e = int(routing.experts[n, j])
            gate, up = (x[n] @ experts.w13[e]).split(tiny.expert_hidden)
            ref[n] += routing.weights[n, j] * ((torch.nn.functional.silu(gate) * up) @ experts.w2[e])
    torch.testing.assert_close(experts(x, routing), ref, rtol=1e-4, atol=1e-5)


def test_dropless_under_total_imbalance(tiny: ModelConfig) -> None:
    """Every token routed to the same two experts still gets both: no capacity limit drops any."""
    torch.manual_seed(2)
    experts = Experts(tiny)
    x = torch.randn(64, tiny.d_model)
    logits = torch.full((64, tiny.n_experts), -10.0)
    logits[:, 3] = 5.0
    logits[:, 5] = 4.0
    routing = route(logits, tiny.top_k)
    assert set(routing.experts.flatten().tolist()) == {3, 5}
    out = experts(x, routing)
    assert (out.abs().sum(-1) > 0).all()
    # one token alone gives the same answer as inside the crowded batch
    alone = experts(x[:1], route(logits[:1], tiny.top_k))
    torch.testing.assert_close(alone, out[:1], rtol=1e-5, atol=1e-6)


def test_aux_loss_prefers_balance(tiny: ModelConfig) -> None:
    balanced = route(torch.zeros(800, tiny.n_experts) + torch.randn(800, tiny.n_experts) * 0.01, tiny.top_k)
    skewed_logits = torch.zeros(800, tiny.n_experts)
    skewed_logits[:, 0] = 6.0
    skewed = route(skewed_logits, tiny.top_k)
    assert float(balanced.aux_loss) == pytest.approx(1.0, abs=0.05)
    assert float(skewed.aux_loss) > 2.0


def test_weights_renormalised(tiny: ModelConfig) -> None:
    r = route(torch.randn(10, tiny.n_experts), tiny.top_k)
    torch.testing.assert_close(r.weights.sum(-1), torch.ones(10))


def test_expert_slice_contributes_only_its_experts(tiny: ModelConfig) -> None:
    torch.manual_seed(3)
    full = Experts(tiny)
    x = torch.randn(50, tiny.d_model)
    routing = route(torch.randn(50, tiny.n_experts), tiny.top_k)
    parts = []
    for first in range(0, tiny.n_experts, 2):
        part = Experts(tiny, first, 2)
        part.w13.data.copy_(full.w13[first : first + 2])
        part.w2.data.copy_(full.w2[first : first + 2])
        parts.append(part(x, routing))
    torch.testing.assert_close(sum(parts), full(x, routing), rtol=1e-5, atol=1e-6)


def test_unsharded_dispatch_skips_the_filter_but_not_an_assignment(tiny: ModelConfig) -> None:
    """The unsharded fast path (no range filter) sorts exactly what the filtering path does."""
    routing = route(torch.randn(83, tiny.n_experts) * 2, tiny.top_k)
    fast = dispatch(routing, 0, tiny.n_experts, holds_all=True)
    filtered = dispatch(routing, 0, tiny.n_experts)
    for field in ("token_ids", "weights", "counts", "local_experts", "assignment"):
        assert torch.equal(getattr(fast, field), getattr(filtered, field)), field
    assert int(fast.counts.sum()) == 83 * tiny.top_k


def test_streaming_routing_without_aux_routes_identically(tiny: ModelConfig) -> None:
    logits = torch.randn(40, tiny.n_experts)
    with_aux, without = route(logits, tiny.top_k), route(logits, tiny.top_k, with_aux=False)
    assert torch.equal(with_aux.experts, without.experts) and torch.equal(with_aux.weights, without.weights)
    assert float(with_aux.aux_loss) > 0 and float(without.aux_loss) == 0
