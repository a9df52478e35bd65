"""Expert parallelism across the ranks of one replica (torch.distributed: gloo on CPU, nccl on GPU).

Rank 0 runs everything dense (embeddings, attention, routers, shared experts, heads) and its own slice
of experts. For every MoE layer it broadcasts the layer's tokens and their routing to all ranks; each rank
runs the experts it holds on the tokens routed to them, and a sum-reduce onto rank 0 assembles the layer
output. Ranks > 0 hold only their experts' weights and loop in ``serve_experts`` until rank 0 stops them.

Per layer and step the traffic is one broadcast of (N, d) activations + (N, k) routing and one reduce of
(N, d): 320 tokens × 192 dims for 64 sessions of the tiny model, ~250 KB each way.
"""

from __future__ import annotations

import datetime as dt
import logging

import torch
import torch.distributed as dist
from torch import Tensor

from .model import DuplexModel, ExpertShard
from .moe import Experts, Routing

log = logging.getLogger(__name__)

_RUN, _STOP = 1, 0


def init_group(rank: int, world_size: int, leader: str, backend: str = "auto", timeout_s: float = 300.0) -> str:
    """Join the replica's process group at ``leader`` (HOST:PORT of rank 0's rendezvous). Returns the backend."""
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(
        backend,
        init_method=f"tcp://{leader}",
        rank=rank,
        world_size=world_size,
        timeout=dt.timedelta(seconds=timeout_s),
    )
    return backend


class ExpertGroup:
    """Rank 0's handle on the shard group: the ``runner`` every MoE layer of the model delegates to."""

    def __init__(self, model: DuplexModel) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.local: list[Experts] = []
        for block in model.layers:
            experts = block.moe.experts
            assert experts is not None, "rank 0 must hold a slice of the experts"
            self.local.append(experts)
            block.moe.runner = self.run
        self.stopped = False

    def run(self, layer: int, x: Tensor, routing: Routing) -> Tensor:
        header = torch.tensor([_RUN, layer, x.shape[0], routing.experts.shape[1]], dtype=torch.long, device=self.device)
        dist.broadcast(header, src=0)
        x = x.contiguous()
        dist.broadcast(x, src=0)
        dist.broadcast(routing.experts.contiguous(), src=0)
        dist.broadcast(routing.weights.contiguous(), src=0)
        y = self.local[layer](x, routing)
        dist.reduce(y, dst=0, op=dist.ReduceOp.SUM)
        return y

    def stop(self) -> None:
        """Release the other ranks from ``serve_experts`` (idempotent)."""
        if not self.stopped:
            dist.broadcast(torch.tensor([_STOP, 0, 0, 0], dtype=torch.long, device=self.device), src=0)
            # wait until every rank has the stop: a rank 0 that exits while a peer still reads from it makes
            # gloo abort that peer (SIGABRT)
            dist.barrier()
            self.stopped = True
            for block in self.model.layers:
                block.moe.runner = None


@torch.no_grad()
def serve_experts(shard: ExpertShard) -> int:
    """Loop on rank > 0: answer rank 0's MoE requests until it says stop. Returns the requests served."""
    p = next(shard.parameters())
    device, dtype, d = p.device, p.dtype, shard.cfg.d_model
    served = 0
    while True:
        header = torch.empty(4, dtype=torch.long, device=device)
        dist.broadcast(header, src=0)
        cmd, layer, n, k = header.tolist()
        if cmd == _STOP:
            dist.barrier()  # pairs with ExpertGroup.stop
            return served
        x = torch.empty(n, d, dtype=dtype, device=device)
        experts = torch.empty(n, k, dtype=torch.long, device=device)
        weights = torch.empty(n, k, dtype=dtype, device=device)
        dist.broadcast(x, src=0)
        dist.broadcast(experts, src=0)
        dist.broadcast(weights, src=0)
        y = shard.experts(layer)(x, Routing(experts, weights, x.new_zeros(())))
        dist.reduce(y, dst=0, op=dist.ReduceOp.SUM)
        served += 1
