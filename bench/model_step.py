"""Step latency of the tiny model per 200 ms chunk on CPU, by batch size, and the MoE execution strategies.

    python bench/model_step.py [--batches 1,8,32,64,128] [--repeats 30] [--write]
    python bench/model_step.py --batch-invariant [--batches 16,64] [--repeats 40] [--write]
    python bench/model_step.py --profile [--batches 16,48,64]

Each session is put an hour deep (positions ~90 000, ring cache full) so attention runs over the whole
window, as in steady state. "step" is the model; "decode" the codec turning its codes into audio.
``--batch-invariant`` times ``step(batch_invariant=True)`` against the default, interleaved step by step
in one run (the machines are shared: compare the ratio, not the absolutes). ``--profile`` prints where a
full-cache step spends its time (torch.profiler, top ops by self CPU time).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from duplex.model.codec import Codec
from duplex.model.config import get_preset
from duplex.model.model import DuplexModel
from duplex.model.moe import Experts, MoeImpl
from duplex.model.state import StreamState

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import command, machine, write_section

CHUNK_MS = 200


def deep_state(model: DuplexModel, batch: int) -> StreamState:
    """Sessions an hour in (position 90 000) with a full ring of (random, deterministic) keys and values."""
    st = model.new_state(batch)
    R, now = model.cfg.cache_len, 90_000
    st.next_pos[:] = now
    slot = torch.arange(R)
    st.ring_pos[:] = now - R + (slot - (now - R)) % R  # entry i holds the position p in [now-R, now) with p % R == i
    g = torch.Generator().manual_seed(0)
    for t in (*st.k, *st.v):
        t.copy_(torch.randn(t.shape, generator=g) * 0.5)
    return st


def time_step(model: DuplexModel, codec: Codec, batch: int, repeats: int) -> tuple[list[float], list[float]]:
    F = model.cfg.frames_per_chunk(CHUNK_MS)
    st, cs = deep_state(model, batch), codec.new_state(batch)
    audio = torch.randn(batch, F * model.cfg.frame_samples) * 0.1
    steps, decodes = [], []
    for i in range(repeats + 3):
        t0 = time.perf_counter()
        out = model.step(st, audio)
        t1 = time.perf_counter()
        codec.decode(out.audio_codes, cs)
        t2 = time.perf_counter()
        if i >= 3:  # warm-up
            steps.append((t1 - t0) * 1e3)
            decodes.append((t2 - t1) * 1e3)
    return steps, decodes


def time_invariance(model: DuplexModel, batch: int, repeats: int) -> tuple[list[float], list[float]]:
    """Step ms without and with ``batch_invariant``, alternating every step so load hits both alike."""
    F = model.cfg.frames_per_chunk(CHUNK_MS)
    states = {False: deep_state(model, batch), True: deep_state(model, batch)}
    audio = torch.randn(batch, F * model.cfg.frame_samples) * 0.1
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(repeats + 2):
        for flag in (False, True) if i % 2 else (True, False):
            t0 = time.perf_counter()
            model.step(states[flag], audio, batch_invariant=flag)
            if i >= 2:  # warm-up
                times[flag].append((time.perf_counter() - t0) * 1e3)
    return times[False], times[True]


def profile_steps(model: DuplexModel, batch: int, repeats: int) -> str:
    """torch.profiler table of ``repeats`` full-cache steps at ``batch`` sessions."""
    F = model.cfg.frames_per_chunk(CHUNK_MS)
    st = deep_state(model, batch)
    audio = torch.randn(batch, F * model.cfg.frame_samples) * 0.1
    for _ in range(3):
        model.step(st, audio)
    with torch.profiler.profile() as prof:
        for _ in range(repeats):
            model.step(st, audio)
    table: str = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    return table


def invariance_main(model: DuplexModel, batches: list[int], repeats: int, write: bool) -> None:
    rows = []
    for b in batches:
        fast, inv = time_invariance(model, b, repeats)
        ratio = statistics.median(inv) / statistics.median(fast)
        rows.append((b, statistics.median(fast), statistics.median(inv), ratio))
        print(
            f"batch {b:4d}: step p50 {rows[-1][1]:6.1f} ms default, {rows[-1][2]:6.1f} ms batch-invariant: ×{ratio:.2f}"
        )
    if write:
        body = [
            f"Command: `{command()}`  ",
            f"Machine: {machine()}  ",
            f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            "",
            "`step(batch_invariant=True)` against the default, full 320-frame window, 200 ms chunks, the two",
            "variants alternating step by step in one run (read the ratio; the absolutes carry the shared load):",
            "",
            "| sessions | default step p50 ms | batch-invariant step p50 ms | cost |",
            "|---|---|---|---|",
        ]
        body += [f"| {b} | {f:.1f} | {i:.1f} | {r - 1:+.0%} |" for b, f, i, r in rows]
        write_section("Batch-invariance cost (tiny, CPU)", "\n".join(body))


def set_impl(model: DuplexModel, impl: MoeImpl) -> None:
    for m in model.modules():
        if isinstance(m, Experts):
            m.impl = impl


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,8,32,64,96,128")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    ap.add_argument("--batch-invariant", action="store_true", help="cost of step(batch_invariant=True)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler tables of full-cache steps")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    model = DuplexModel(cfg).eval()
    batches = [int(x) for x in args.batches.split(",")]
    if args.batch_invariant:
        invariance_main(model, batches, args.repeats, args.write)
        return
    if args.profile:
        for b in batches:
            print(f"--- {b} sessions, full cache, {args.repeats} steps")
            print(profile_steps(model, b, args.repeats))
        return
    codec = Codec(cfg)
    budget = 0.25 * CHUNK_MS

    # 1. MoE strategies on the real step shape (64 sessions × 5 frames), exactness checked on the way
    impl_rows = []
    F = cfg.frames_per_chunk(CHUNK_MS)
    audio = torch.randn(64, F * cfg.frame_samples) * 0.1
    ref = None
    for impl in ("loop", "bmm", "grouped"):
        set_impl(model, impl)  # type: ignore[arg-type]
        probs = model.step(deep_state(model, 64), audio).control_probs
        ref = probs if ref is None else ref
        err = float((probs - ref).abs().max())
        steps, _ = time_step(model, codec, 64, args.repeats)
        impl_rows.append((impl, statistics.median(steps), pct(steps, 0.9), err))
        print(
            f"moe {impl:8s} step p50 {statistics.median(steps):6.1f} ms  p90 {pct(steps, 0.9):6.1f}  max|Δ| {err:.1e}"
        )
    best = min(impl_rows, key=lambda r: r[1])[0]
    set_impl(model, best)  # type: ignore[arg-type]

    # 2. batch sweep with the fastest exact strategy
    rows = []
    for b in batches:
        steps, decodes = time_step(model, codec, b, args.repeats)
        total = [s + d for s, d in zip(steps, decodes, strict=True)]
        rows.append(
            (b, statistics.median(steps), pct(steps, 0.9), statistics.median(decodes), statistics.median(total))
        )
        print(
            f"batch {b:4d}: step p50 {rows[-1][1]:6.1f} ms p90 {rows[-1][2]:6.1f}  decode {rows[-1][3]:5.1f}  "
            f"total {rows[-1][4]:6.1f} ms ({rows[-1][4] / CHUNK_MS:.0%} of chunk)"
        )
    fits = [r[0] for r in rows if r[4] <= budget]
    largest = max(fits) if fits else 0
    print(f"largest batch within 25% of a {CHUNK_MS} ms chunk ({budget:.0f} ms, step+decode p50): {largest}")

    if args.write:
        body = [
            f"Command: `{command()}`  ",
            f"Machine: {machine()}  ",
            f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            "",
            "MoE execution on the real step shape (64 sessions × 5 frames, tiny), max |Δ| vs the loop:",
            "",
            "| strategy | step p50 ms | step p90 ms | max abs diff |",
            "|---|---|---|---|",
        ]
        body += [f"| {i} | {p50:.1f} | {p90:.1f} | {e:.1e} |" for i, p50, p90, e in impl_rows]
        body += [
            "",
            f"Batch sweep with `{best}` (sessions an hour deep, full {cfg.window}-frame window), per 200 ms chunk:",
            "",
            "| sessions | step p50 ms | step p90 ms | codec decode p50 ms | step+decode p50 ms | share of chunk |",
            "|---|---|---|---|---|---|",
        ]
        body += [f"| {b} | {s:.1f} | {s90:.1f} | {d:.1f} | {t:.1f} | {t / CHUNK_MS:.0%} |" for b, s, s90, d, t in rows]
        body += ["", f"**Largest batch within 25 % of the chunk ({budget:.0f} ms): {largest} sessions** (target ≥ 64)."]
        write_section("Model step (tiny, CPU)", "\n".join(body))


if __name__ == "__main__":
    main()
