"""PersonaPlex prompt prefill on this CPU: how long a session's voice + persona prefill takes, and its longest
piece — the most a step of the other sessions waits for it.

    python bench/personaplex_prefill.py [--checkpoint DIR] [--voice NATF2] [--repeats 5] [--threads 0] [--write]

Without ``--checkpoint`` a small random one is written with ``duplex model init --family personaplex`` (seed 0) in
a temporary folder. For personas of growing length the prompt is prefilled into a fresh slot through
``MoshiServed.prefill_start`` / ``prefill_piece`` — the engine's path: a one-row staging block, the forced
positions as transformer chunks (``PREFILL_CHUNK``), one piece each, then a last piece with the frame after as
one ``LMGen`` step and the row copied into its slot; the engine runs the pieces between the other sessions'
steps, so its longest piece is what a step of theirs may wait — and, for comparison, with one prompt position
per forward (as NVIDIA's generator runs it); the last column is one ordinary one-row frame step. ``--write``
puts the table into bench/results/personaplex_prefill.json and docs/benchmarks.md ("PersonaPlex prompt prefill
on CPU").
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from report import write_result

from duplex.model.moshi import prompt as prompt_module
from duplex.model.moshi.checkpoint import load_checkpoint
from duplex.model.moshi.served import MoshiServed
from duplex.model.moshi.tiny import init_checkpoint

SENTENCE = "You enjoy having a good conversation and you like to talk about books. "


def prefill_ms(
    served: MoshiServed, prompt: prompt_module.SessionPrompt, repeats: int, chunk: int
) -> tuple[float, float, int]:
    """Median of the whole prefill and of its longest piece (ms), and the number of pieces."""
    prompt_module.PREFILL_CHUNK = chunk
    times, longest, pieces = [], [], 0
    for _ in range(repeats + 1):  # the first run warms up
        state = served.new_slots(1)
        t0 = time.perf_counter()
        job = served.prefill_start(state, 0, prompt)
        each = []
        done = False
        while not done:
            t = time.perf_counter()
            done = served.prefill_piece(state, job, 0)
            each.append((time.perf_counter() - t) * 1e3)
        times.append((time.perf_counter() - t0) * 1e3)
        longest.append(max(each))
        pieces = len(each)
    return statistics.median(times[1:]), statistics.median(longest[1:]), pieces


def step_ms(served: MoshiServed, repeats: int) -> float:
    state = served.new_slots(1)
    audio = 0.1 * torch.randn(1, served.format.frame_samples, generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(repeats + 3):
        t0 = time.perf_counter()
        served.step(state, audio, slice(0, 1))
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[3:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--voice", default="NATF2")
    ap.add_argument("--sentences", default="0,4,16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    chunk = prompt_module.PREFILL_CHUNK
    with tempfile.TemporaryDirectory() as tmp:
        path = args.checkpoint or init_checkpoint("personaplex", Path(tmp) / "personaplex-small", seed=0)
        served = MoshiServed(load_checkpoint(path), temperature=0.0)
        one_step = step_ms(served, args.repeats)
        rows = []
        for n in [int(s) for s in args.sentences.split(",")]:
            prompt = served.session_prompt(args.voice, SENTENCE * n)
            persona = 0 if not n else prompt.steps - served.session_prompt(args.voice, "").steps
            chunked, piece, pieces = prefill_ms(served, prompt, args.repeats, chunk)
            stepwise, _, _ = prefill_ms(served, prompt, args.repeats, 1)
            rows.append(
                f"| {persona} | {prompt.model_steps} | {pieces} | {chunked:.1f} | {piece:.1f} | {stepwise:.1f} "
                f"| {one_step:.1f} |"
            )
            print(rows[-1], flush=True)
        prompt_module.PREFILL_CHUNK = chunk
    table = "\n".join(
        [
            f"| persona tokens (with its tags) | prompt model steps | pieces | prefill p50 (ms), {chunk}-position "
            "chunks | longest piece p50 (ms): the most another session's step waits | prefill p50 (ms), one "
            "position a forward | one-row frame step p50 (ms) |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    if args.write:
        write_result(
            "personaplex_prefill",
            "PersonaPlex prompt prefill on CPU",
            table,
            f"Prefill of voice {args.voice} and personas of growing length into a fresh slot of a small random "
            f"PersonaPlex-layout checkpoint (`duplex model init --family personaplex`, float32, greedy), median of "
            f"{args.repeats} after one warm-up; the step thread runs nothing else meanwhile. The prompt's model "
            "steps are the voice's, 2 × 6 silence frames, the persona's tokens (with its `<system>` tags) and the "
            "frame after. The engine runs the pieces (one transformer chunk each, the last one the frame after) "
            "in the step thread's idle turns, so another session's step waits for one piece at most.",
        )


if __name__ == "__main__":
    main()
