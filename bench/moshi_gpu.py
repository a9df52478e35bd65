"""Moshi-7B sessions per GPU: random weights of the published 7B shape in bfloat16, stepped through the engine's
own ``MoshiServed`` (upstream ``LMGen`` with its CUDA graphs, Mimi encode and decode), by batch size.

    python bench/moshi_gpu.py [--batches 8,16,24,32,40,48] [--frames 40] [--json OUT.json]
    python bench/moshi_gpu.py --shape tiny --device cpu --batches 1,2 --frames 3     # smoke run, no GPU

Every session's KV ring is preallocated at the full 3000-frame window (upstream's ring cache attends over the
whole ring whatever its fill), so a fresh session costs what a full-window one does. One frame is 80 ms: a batch
is real-time while its step p99 stays under 80 ms. Memory is read from the allocator: weights after loading,
then the peak with B sessions streaming, so "per session" is (peak − weights) / B against the plan's figure
(``duplex model plan --family moshi``). Prints one table row per batch, then the largest real-time batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from duplex.model.moshi.checkpoint import MoshiCheckpoint
from duplex.model.moshi.plan import GIB, plan_moshi
from duplex.model.moshi.served import MoshiServed
from duplex.model.moshi.upstream import no_compile, upstream_lm_kwargs, upstream_loaders

PERIOD_MS = 80.0
WARMUP = 8
TINY = dict(dim=64, num_heads=4, num_layers=2, depformer_dim=32, depformer_dim_feedforward=64, depformer_num_heads=2)


class NoText:
    """The benchmark never decodes text (a random LM's words mean nothing)."""

    def encode(self, text: str) -> list[int]:
        return []


def random_7b(device: torch.device, dtype: torch.dtype, shape: str) -> MoshiCheckpoint:
    loaders = upstream_loaders()
    args: dict[str, Any] = upstream_lm_kwargs() | (TINY if shape == "tiny" else {})
    torch.manual_seed(0)
    lm = loaders.get_moshi_lm(None, lm_kwargs=args, device=device, dtype=dtype).eval()
    mimi = loaders.get_mimi(None, device=device).eval()
    return MoshiCheckpoint(family="moshi", name=f"moshi-{shape}-random", lm=lm, mimi=mimi, text_tokenizer=NoText())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batch(served: MoshiServed, batch: int, frames: int, device: torch.device) -> dict[str, float]:
    S = served.format.frame_samples
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    state = served.new_slots(batch)
    g = torch.Generator(device="cpu").manual_seed(batch)
    audio = (0.1 * torch.randn(WARMUP + frames, batch, S, generator=g)).to(device)  # never zeros
    times = []
    for i in range(WARMUP + frames):
        sync(device)
        t0 = time.perf_counter()
        served.step(state, audio[i], rows=slice(0, batch))
        sync(device)
        if i >= WARMUP:
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    del state
    return {
        "batch": batch,
        "step_p50_ms": statistics.median(times),
        "step_p99_ms": times[min(len(times) - 1, round(0.99 * (len(times) - 1)))],
        "peak_bytes": peak,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="8,16,24,32,40,48")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shape", choices=("7b", "tiny"), default="7b")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with no_compile() if device.type == "cpu" else torch.no_grad():
        ckpt = random_7b(device, dtype, args.shape)
    weights = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    served = MoshiServed(ckpt, temperature=0.8, top_k=250, device=device)  # sampling, as deployed
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 0
    plan = plan_moshi(None, gpu_memory_gib=max(total / GIB, 1.0), dtype=dtype) if args.shape == "7b" else None
    rows = []
    print(f"{name}: weights {weights / GIB:.2f} GiB of {total / GIB:.1f} GiB", flush=True)
    print("| sessions | step p50 ms | step p99 ms | peak GiB | GiB per session | real-time |")
    print("|---|---|---|---|---|---|")
    for batch in [int(b) for b in args.batches.split(",")]:
        try:
            r = time_batch(served, batch, args.frames, device)
        except torch.OutOfMemoryError:
            print(f"| {batch} | out of memory | | | | no |", flush=True)
            break
        per = (r["peak_bytes"] - weights) / batch / GIB
        r["realtime"] = r["step_p99_ms"] <= PERIOD_MS
        rows.append(r)
        print(
            f"| {batch} | {r['step_p50_ms']:.1f} | {r['step_p99_ms']:.1f} | {r['peak_bytes'] / GIB:.1f} | "
            f"{per:.3f} | {'yes' if r['realtime'] else 'no'} |",
            flush=True,
        )
    best = max((r["batch"] for r in rows if r["realtime"]), default=0)
    planned = f"; the plan fits {plan.sessions} ({plan.session_bytes / GIB:.3f} GiB each)" if plan else ""
    print(f"real-time sessions (step p99 ≤ {PERIOD_MS:.0f} ms): {best}{planned}")
    if args.json is not None:
        args.json.write_text(json.dumps({"device": name, "weights_bytes": weights, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
