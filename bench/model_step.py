"""Step latency of the tiny model per 200 ms chunk on CPU, by batch size, and the MoE execution strategies.

    python bench/model_step.py [--batches 1,8,32,64,128] [--repeats 30] [--write]
    python bench/model_step.py --batch-invariant [--batches 16,64] [--repeats 40] [--write]
    python bench/model_step.py --profile [--batches 16,64] [--threads 1]
    python bench/model_step.py --against REV [--batches 16,64] [--threads 1] [--repeats 20]
    python bench/model_step.py --compile [--batches 16,32,64] [--threads 1] [--repeats 12]

Each session is put an hour deep (positions ~90 000, ring cache full) so attention runs over the whole
window, as in steady state. "step" is the model; "decode" the codec turning its codes into audio.
``--batch-invariant`` times ``step(batch_invariant=True)`` against the default, interleaved step by step
in one run (the machines are shared: compare the ratio, not the absolutes). ``--profile`` prints where a
full-cache step spends its time (torch.profiler, top ops by self CPU time). ``--against REV`` times this
tree's step against git revision REV's ``model/`` (same weights, same state), alternating step by step and
counting the step thread's CPU time, which other processes on a shared machine inflate far less than wall
time: read the old/new ratio. ``--compile`` times ``torch.compile``'s step against eager
(``probes/compiled_step.py``).
"""

from __future__ import annotations

import argparse
import importlib
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

from duplex.model.codec import Codec
from duplex.model.config import get_preset
from duplex.model.model import DuplexModel
from duplex.model.moe import Experts, MoeImpl
from duplex.model.state import StreamState

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_result

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


CATEGORIES = {
    "routed experts (grouped GEMMs)": ("aten::_grouped_mm",),
    "attention (SDPA over the ring)": ("aten::_scaled_dot_product_flash_attention_for_cpu",),
    "dense GEMMs (projections, shared expert, heads, embeddings)": ("aten::mm", "aten::addmm"),
}
"""Profiler ops each share is read from: the routed experts' total (their inner ``mm`` calls included),
SDPA's total, and the ``mm``/``addmm`` self time left once the experts' inner calls are taken out."""


def profile_steps(model: DuplexModel, batch: int, repeats: int, invariant: bool = False) -> str:
    """torch.profiler table of ``repeats`` full-cache steps at ``batch`` sessions, and the share of the
    step's op time in each of ``CATEGORIES`` (the rest: elementwise, indexing, routing, rotary, norms)."""
    F = model.cfg.frames_per_chunk(CHUNK_MS)
    st = deep_state(model, batch)
    audio = torch.randn(batch, F * model.cfg.frame_samples) * 0.1
    for _ in range(3):
        model.step(st, audio, batch_invariant=invariant)
    with torch.profiler.profile() as prof:
        for _ in range(repeats):
            model.step(st, audio, batch_invariant=invariant)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    by_name = {e.key: e for e in events}
    experts = by_name["aten::_grouped_mm"].cpu_time_total if "aten::_grouped_mm" in by_name else 0.0
    attention = sum(by_name[k].cpu_time_total for k in CATEGORIES["attention (SDPA over the ring)"] if k in by_name)
    gemm_self = sum(by_name[k].self_cpu_time_total for k in ("aten::mm", "aten::addmm") if k in by_name)
    expert_self = experts - (by_name["aten::_grouped_mm"].self_cpu_time_total if experts else 0.0)
    shares = {
        "routed experts (grouped GEMMs)": experts,
        "attention (SDPA over the ring)": attention,
        "dense GEMMs (projections, shared expert, heads, embeddings)": gemm_self - expert_self,
    }
    calls = sum(e.count for e in events if e.self_cpu_time_total > 0)
    lines = [f"{name}: {t / total:.0%}" for name, t in shares.items()]
    rest = 1 - sum(shares.values()) / total
    lines.append(f"everything else (elementwise, indexing, routing, rotary, norms): {rest:.0%}")
    lines.append(f"op time per step {total / repeats / 1e3:.1f} ms, {calls / repeats:.0f} op calls per step")
    table: str = events.table(sort_by="self_cpu_time_total", row_limit=15)
    return table + "\n" + "\n".join(lines)


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
        table = [
            "| sessions | default step p50 ms | batch-invariant step p50 ms | cost |",
            "|---|---|---|---|",
            *(f"| {b} | {f:.1f} | {i:.1f} | {r - 1:+.0%} |" for b, f, i, r in rows),
        ]
        write_result(
            "batch_invariance_cost",
            "Batch-invariance cost (tiny, CPU)",
            "\n".join(table),
            f"`step(batch_invariant=True)` against the default, full {model.cfg.window}-frame window, 200 ms chunks, "
            "the two variants alternating step by step in one run (read the ratio; absolutes carry the shared load).",
        )


def load_model_package(rev: str, into: Path) -> ModuleType:
    """Import git revision ``rev``'s ``model/`` package as ``model_at_rev`` (from a ``git archive`` in ``into``)."""
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "archive", rev, "model"], cwd=root, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "model").rename(into / "model_at_rev")
    sys.path.insert(0, str(into))
    return importlib.import_module("model_at_rev.model")


def against_main(model: DuplexModel, rev: str, batches: list[int], repeats: int) -> None:
    """Step CPU time of this tree against ``rev``'s, interleaved; checks the two states stay bit-identical."""
    with tempfile.TemporaryDirectory() as tmp:
        old_pkg = load_model_package(rev, Path(tmp))
        old_cfg = importlib.import_module("model_at_rev.config").ModelConfig(**model.cfg.model_dump())
        old = old_pkg.DuplexModel(old_cfg).eval()
        old.load_state_dict(model.state_dict())
        F = model.cfg.frames_per_chunk(CHUNK_MS)
        for b in batches:
            for inv in (False, True):
                states = {"old": deep_state(model, b), "new": deep_state(model, b)}
                models = {"old": old, "new": model}
                audio = torch.randn(b, F * model.cfg.frame_samples) * 0.1
                times: dict[str, list[float]] = {"old": [], "new": []}
                for i in range(repeats + 2):
                    for k in ("old", "new") if i % 2 else ("new", "old"):
                        t0 = time.thread_time()
                        models[k].step(states[k], audio, batch_invariant=inv)
                        if i >= 2:  # warm-up
                            times[k].append((time.thread_time() - t0) * 1e3)
                same = all(
                    torch.equal(x, y)
                    for x, y in zip(
                        (*states["old"].k, *states["old"].v, states["old"].feedback),
                        (*states["new"].k, *states["new"].v, states["new"].feedback),
                        strict=True,
                    )
                )
                o, n = statistics.median(times["old"]), statistics.median(times["new"])
                print(
                    f"{b:3d} rows batch_invariant={inv!s:5}: {rev} {o:6.1f} ms, this tree {n:6.1f} ms (step CPU "
                    f"p50): old/new ×{o / n:.2f}; caches and outputs bit-identical: {same}",
                    flush=True,
                )


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
    ap.add_argument("--write", action="store_true", help="write bench/results/ (and so docs/benchmarks.md)")
    ap.add_argument("--batch-invariant", action="store_true", help="cost of step(batch_invariant=True)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler tables of full-cache steps")
    ap.add_argument("--against", metavar="REV", help="A/B this tree's step against git revision REV's model/")
    ap.add_argument("--compile", action="store_true", help="torch.compile'd step vs eager (probes/compiled_step.py)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default; the engine uses 1)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    model = DuplexModel(cfg).eval()
    batches = [int(x) for x in args.batches.split(",")]
    if args.batch_invariant:
        invariance_main(model, batches, args.repeats, args.write)
        return
    if args.compile:
        from probes.compiled_step import compare

        compare(model, batches, args.repeats, deep_state)
        return
    if args.against:
        against_main(model, args.against, batches, args.repeats)
        return
    if args.profile:
        for b in batches:
            for inv in (False, True):
                print(f"--- {b} sessions, full cache, {args.repeats} steps, batch_invariant={inv}")
                print(profile_steps(model, b, args.repeats, inv))
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
        moe = [
            "| strategy | step p50 ms | step p90 ms | max abs diff |",
            "|---|---|---|---|",
            *(f"| {i} | {p50:.1f} | {p90:.1f} | {e:.1e} |" for i, p50, p90, e in impl_rows),
        ]
        write_result(
            "model_step_moe",
            "MoE execution strategies (tiny, CPU)",
            "\n".join(moe),
            "MoE execution on the real step shape (64 sessions × 5 frames, tiny), max |Δ| vs the loop.",
        )
        sweep = [
            "| sessions | step p50 ms | step p90 ms | codec decode p50 ms | step+decode p50 ms | share of chunk |",
            "|---|---|---|---|---|---|",
            *(f"| {b} | {s:.1f} | {s90:.1f} | {d:.1f} | {t:.1f} | {t / CHUNK_MS:.0%} |" for b, s, s90, d, t in rows),
        ]
        write_result(
            "model_step",
            "Model step (tiny, CPU)",
            "\n".join(sweep),
            f"Batch sweep with `{best}` (sessions an hour deep, full {cfg.window}-frame window), per 200 ms chunk."
            f"\n\n**Largest batch within 25 % of the chunk ({budget:.0f} ms): {largest} sessions** (target ≥ 64).",
        )


if __name__ == "__main__":
    main()
