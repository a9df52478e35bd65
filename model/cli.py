"""``duplex model …``: inspect presets, plan shard groups, train and evaluate; write tiny Moshi-family checkpoints."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from .config import ModelConfig, ModelError, get_preset
from .planner import GIB, count_params, plan
from .scoring import accuracy_rows

if TYPE_CHECKING:
    from duplex.loadtest.live_eval import LiveRun

    from .actions import ActionCountMetrics
    from .data import Conversation
    from .evaluate import Metrics
    from .timespeak import TimeSpeakMetrics

app = typer.Typer(help="Model presets, sizes, shard plans and checkpoints.", no_args_is_help=True)
console = Console()


def _preset(name: str) -> ModelConfig:
    try:
        return get_preset(name)
    except ModelError as e:
        raise typer.BadParameter(str(e), param_hint="--preset") from None


@app.command()
def info(
    preset: Annotated[str, typer.Option(help="Preset name, e.g. tiny or tml-interaction-small.")] = "tiny",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Layers, experts, top-k, total and active parameters of a preset (computed analytically)."""
    cfg = _preset(preset)
    pc = count_params(cfg)
    info = {
        "preset": cfg.name,
        "layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "heads": cfg.n_heads,
        "kv_heads": cfg.n_kv_heads,
        "experts": cfg.n_experts,
        "top_k": cfg.top_k,
        "expert_hidden": cfg.expert_hidden,
        "shared_expert_hidden": cfg.shared_expert_hidden,
        "window_frames": cfg.window,
        "frame_ms": cfg.frame_ms,
        "total_params": pc.total,
        "active_params": pc.active,
        "dense_params": pc.dense,
        "dtype": cfg.dtype,
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    table = Table(title=f"duplex model {cfg.name}")
    table.add_column("field")
    table.add_column("value", justify="right")
    for k, v in info.items():
        table.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    console.print(table)


@app.command("plan")
def plan_cmd(
    preset: Annotated[str, typer.Option(help="Preset name.")] = "tiny",
    gpu_memory_gib: Annotated[float, typer.Option(help="Memory of one GPU in GiB.")] = 80.0,
    sessions: Annotated[int, typer.Option(help="Concurrent sessions per replica (KV caches on rank 0).")] = 1,
    headroom: Annotated[float, typer.Option(help="Fraction of each GPU kept free for activations.")] = 0.1,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="A Moshi-family checkpoint directory: plan sessions per GPU from its config.json."),
    ] = None,
    family: Annotated[
        str, typer.Option(help="duplex (the preset's shard plan), or moshi: the published Moshi-7B shape.")
    ] = "duplex",
    context: Annotated[
        int | None, typer.Option(help="Moshi family: frames of attention window (default: the config's).")
    ] = None,
    cfg_coef: Annotated[
        float, typer.Option(help="Hibiki: classifier-free guidance; above 1 a session is two LM rows.")
    ] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Duplex: the smallest expert-parallel shard count whose per-shard memory fits the GPU. Moshi family:
    how many full-window sessions one GPU holds (bfloat16 weights + a KV cache per session)."""
    if checkpoint is not None or family != "duplex":
        _plan_moshi(checkpoint, family, gpu_memory_gib, context, headroom, as_json, cfg_coef)
        return
    cfg = _preset(preset)
    try:
        p = plan(cfg, gpu_memory_gib, sessions, headroom)
    except ModelError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(p.model_dump_json(indent=2))
        return
    console.print(
        f"[bold]{cfg.name}[/]: {p.shards} shard(s) × {p.experts_per_shard} experts; rank 0 needs "
        f"{p.bytes_per_shard / GIB:.2f} GiB (weights {p.weight_bytes_per_shard[0] / GIB:.2f} + KV "
        f"{p.kv_bytes / GIB:.2f}) + {p.headroom_bytes / GIB:.2f} GiB headroom of {gpu_memory_gib} GiB"
    )


def _plan_moshi(
    checkpoint: Path | None,
    family: str,
    gpu_memory_gib: float,
    context: int | None,
    headroom: float,
    as_json: bool,
    cfg_coef: float = 1.0,
) -> None:
    from .moshi.layout import detect
    from .moshi.plan import describe, plan_moshi, read_configs

    try:
        if checkpoint is not None:
            lm, mimi = read_configs(checkpoint)
        elif family == "moshi":
            lm, mimi = None, None
        else:
            raise ModelError(f"--family {family!r}: plan duplex or moshi (or pass --checkpoint DIR)")
        if cfg_coef < 1.0:
            raise ModelError(f"--cfg-coef {cfg_coef}: 1 (no guidance) or more")
        if cfg_coef != 1.0 and (checkpoint is None or detect(checkpoint).family != "hibiki"):
            raise ModelError("--cfg-coef applies to a Hibiki checkpoint (--checkpoint DIR, model_type: hibiki)")
        rows = 2 if cfg_coef != 1.0 else 1
        p = plan_moshi(lm, mimi, gpu_memory_gib, context=context, headroom=headroom, lm_rows_per_session=rows)
    except ModelError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(p.model_dump_json(indent=2))
        return
    name = checkpoint.name if checkpoint is not None else "moshi-7b"
    console.print(f"[bold]{name}[/]: {describe(p)}")


@app.command()
def train(
    corpus: Annotated[Path, typer.Option(help="Corpus directory from `duplex corpus make`.")],
    out: Annotated[Path, typer.Option(help="Checkpoint to write (.safetensors).")],
    preset: Annotated[str, typer.Option(help="Model shape: a preset of `duplex model presets`.")] = "tiny",
    minutes: Annotated[float, typer.Option(help="Wall-clock cap in minutes.")] = 60.0,
    steps: Annotated[int, typer.Option(help="Optimizer steps (the schedule spans them).")] = 3000,
    batch: Annotated[int, typer.Option(help="Crops per step.")] = 8,
    crop_s: Annotated[float, typer.Option(help="Crop length in seconds.")] = 24.0,
    eval_every: Annotated[int, typer.Option(help="Validate every N steps.")] = 250,
    seed: Annotated[int, typer.Option(help="Seed: same seed and steps, same checkpoint.")] = 0,
    init: Annotated[
        Path | None, typer.Option(help="Fine-tune: start from this checkpoint's weights (same preset).")
    ] = None,
) -> None:
    """Train the tiny reference model on CPU (resumes from <out>.state.pt when present)."""
    from .train import TrainSettings
    from .train import train as run

    if not (corpus / "manifest.json").is_file():
        raise typer.BadParameter(f"{corpus} has no manifest.json: not a corpus", param_hint="--corpus")
    _preset(preset)
    if init is not None and not init.is_file():
        raise typer.BadParameter(f"{init}: no such checkpoint", param_hint="--init")
    try:
        settings = TrainSettings(
            corpus=corpus,
            out=out,
            preset=preset,
            minutes=minutes,
            steps=steps,
            batch=batch,
            crop_s=crop_s,
            eval_every=eval_every,
            seed=seed,
            init=init,
        )
        result = run(settings, log=console.print)
    except ModelError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    console.print(
        f"trained {result['steps']} steps in {result['minutes']:.1f} min; best validation score "
        f"{result['best_score']:.3f}; checkpoint {out}"
    )


TASKS = ("turns", "timespeak", "action-count")
BASELINES = {"turns": ("vad", "oracle"), "timespeak": ("cascade", "oracle"), "action-count": ("cascade", "oracle")}
TABLE_KEYS = (
    "tor",
    "latency_p50",
    "latency_p95",
    "latency_mean",
    "false_takeover",
    "interrupts_user",
    "overlap",
    "barge_in_stop_p50",
    "barge_in_within_chunk",
    "barge_ins_evaluated",
    "backchannel_rate",
)


@app.command("eval")
def eval_cmd(
    corpus: Annotated[Path, typer.Option(help="Corpus directory.")],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Checkpoint (.safetensors) to evaluate (default: the shipped one); with --live and no --address, "
            "the one `duplex up` serves."
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="A split of the corpus: train, validation, test or any other.")] = "test",
    task: Annotated[
        str,
        typer.Option(
            help="What to evaluate: turns (turn-taking), timespeak (timed requests: the split's conversations "
            "that have them) or action-count (count questions about a video clip: the conversations that have them)."
        ),
    ] = "turns",
    live: Annotated[
        bool, typer.Option("--live", help="Stream the split in real time through a server, scored as heard.")
    ] = False,
    address: Annotated[
        str | None, typer.Option(help="With --live: HOST:PORT of a running server (default: start `duplex up`).")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="With --live: conversations held at once.")] = 8,
    api_key: Annotated[
        str, typer.Option(help="With --live --address: the server's API key (or $DUPLEX_API_KEY).")
    ] = os.environ.get("DUPLEX_API_KEY", ""),
    limit: Annotated[int | None, typer.Option(help="Evaluate only the split's first N conversations.")] = None,
    baseline: Annotated[
        list[str],
        typer.Option(
            help="Also score: vad (silero-vad server VAD; turns), cascade (VAD + turn-based: no timer for "
            "timespeak, a frame-difference motion counter for action-count), oracle (the target track itself)."
        ),
    ] = [],  # noqa: B006
    chunk_ms: Annotated[int, typer.Option(help="Serving chunk size.")] = 200,
    as_json: Annotated[Path | None, typer.Option("--json", help="Write all metrics to this JSON file.")] = None,
) -> None:
    """Turn-taking metrics through the real streaming path, scored on output audio (FD-bench style); with
    --live, through a running server at live-microphone pace, the model's audio placed as it was heard."""
    _check_eval_flags(task, baseline, live, address, concurrency, limit)
    if task == "action-count":
        _eval_action_count(corpus, checkpoint, split, live, limit, baseline, chunk_ms, as_json)
        return
    if task == "timespeak":
        _eval_timespeak(
            corpus, checkpoint, split, live, address, concurrency, api_key, limit, baseline, chunk_ms, as_json
        )
        return
    try:
        convs = _eval_conversations(corpus, split, limit)
        if live:
            ours, about = _eval_live(convs, address, checkpoint, chunk_ms, concurrency, api_key)
        else:
            ours, about = _eval_offline(convs, checkpoint, chunk_ms), {}
    except _eval_errors() as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    results = [ours, *_baselines(baseline, convs, chunk_ms)]
    _print_eval(results, f"turn-taking on {corpus} ({split}, {len(convs)} conversations{', live' if live else ''})")
    if as_json is not None:
        doc = {"split": split, "corpus": str(corpus), "checkpoint": str(checkpoint or _shipped()), "live": live}
        as_json.write_text(json.dumps({**doc, **about, "systems": [r.summary() for r in results]}, indent=2))


def _check_eval_flags(
    task: str, baseline: list[str], live: bool, address: str | None, concurrency: int, limit: int | None
) -> None:
    if task not in TASKS:
        raise typer.BadParameter(f"unknown task {task!r}; choose {', '.join(TASKS)}", param_hint="--task")
    unknown = [b for b in baseline if b not in BASELINES[task]]
    if unknown:
        choose = " or ".join(BASELINES[task])
        raise typer.BadParameter(
            f"unknown baseline(s) {unknown} for --task {task}; choose {choose}", param_hint="--baseline"
        )
    if address is not None and not live:
        raise typer.BadParameter("only with --live (the offline evaluation needs no server)", param_hint="--address")
    if concurrency < 1:
        raise typer.BadParameter(f"must be at least 1, got {concurrency}", param_hint="--concurrency")
    if limit is not None and limit < 1:
        raise typer.BadParameter(f"must be at least 1, got {limit}", param_hint="--limit")


def _eval_errors() -> tuple[type[Exception], ...]:
    """The errors an evaluation reports as a message: a bad corpus or checkpoint, a server that failed."""
    from duplex.loadtest.live_eval import LiveEvalError
    from duplex.loadtest.local import LocalUpError

    return (ModelError, LiveEvalError, LocalUpError)


def _shipped() -> Path:
    from .runtime import SHIPPED

    return SHIPPED / "tiny.safetensors"


def _eval_conversations(corpus: Path, split: str, limit: int | None) -> list[Conversation]:
    from .data import load_split

    return load_split(corpus, split)[:limit]


def _eval_offline(convs: list[Conversation], checkpoint: Path | None, chunk_ms: int) -> Metrics:
    from . import checkpoint as ckpt
    from .codec import Codec
    from .evaluate import run_model, score
    from .model import DuplexModel

    model = ckpt.load(checkpoint or _shipped())
    if not isinstance(model, DuplexModel):
        raise ModelError(f"{checkpoint}: not a duplex reference checkpoint")
    return score("duplex", convs, run_model(model.eval(), Codec(model.cfg), convs, chunk_ms), chunk_ms)


def _run_live(
    convs: list[Conversation],
    address: str | None,
    checkpoint: Path | None,
    chunk_ms: int,
    concurrency: int,
    api_key: str,
) -> tuple[LiveRun, dict[str, object]]:
    """The conversations streamed live (through ``address``, or a ``duplex up`` of ``checkpoint`` started
    here), and what the JSON report says of the run."""
    from dataclasses import asdict

    from duplex.loadtest.live_eval import describe, run_live

    if address is None and checkpoint is not None and not checkpoint.exists():
        raise ModelError(f"--checkpoint {checkpoint}: no such file or directory")
    metadata = [("authorization", f"Bearer {api_key}")] if api_key and address is not None else []
    run = run_live(convs, address, checkpoint, chunk_ms, concurrency, metadata)
    console.print(f"live: {describe(run.delivery)}")
    return run, {"address": address or "duplex up", "concurrency": concurrency, "delivery": asdict(run.delivery)}


def _eval_live(
    convs: list[Conversation],
    address: str | None,
    checkpoint: Path | None,
    chunk_ms: int,
    concurrency: int,
    api_key: str,
) -> tuple[Metrics, dict[str, object]]:
    from duplex.loadtest.live_eval import score_live

    run, about = _run_live(convs, address, checkpoint, chunk_ms, concurrency, api_key)
    return score_live("duplex (live)", convs, run), about


def _eval_timespeak(
    corpus: Path,
    checkpoint: Path | None,
    split: str,
    live: bool,
    address: str | None,
    concurrency: int,
    api_key: str,
    limit: int | None,
    baseline: list[str],
    chunk_ms: int,
    as_json: Path | None,
) -> None:
    """``duplex model eval --task timespeak``: the split's conversations with timed requests, scored by the
    TimeSpeak scorer (offline, or live as a listener got them), with the cascade peer and the oracle."""
    from .data import load_split
    from .timespeak_eval import oracle_said, run_cascade, score_timespeak, timed_conversations

    about: dict[str, object] = {}
    try:
        convs = timed_conversations(load_split(corpus, split))[:limit]
        if not convs:
            raise ModelError(f"split {split!r} of {corpus} has no timed requests (make it with --task timespeak)")
        if live:
            ours, about = _timespeak_live(convs, address, checkpoint, chunk_ms, concurrency, api_key)
        else:
            ours = _timespeak_offline(convs, checkpoint, chunk_ms)
    except _eval_errors() as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    results = [ours]
    if "cascade" in baseline:
        results.append(run_cascade(convs))
    if "oracle" in baseline:
        results.append(score_timespeak("target track (oracle)", convs, [oracle_said(c) for c in convs]))
    where = f"{split}, {len(convs)} conversations{', live' if live else ''}"
    _print_eval(
        results,
        f"TimeSpeak on {corpus} ({where})",
        TIMESPEAK_KEYS,
        (("by_form", "accuracy form"), ("by_channel", "accuracy channel"), ("by_n", "accuracy n")),
        "requests",
    )
    if as_json is not None:
        doc = {"task": "timespeak", "split": split, "corpus": str(corpus), "live": live}
        doc["checkpoint"] = str(checkpoint or _shipped())
        as_json.write_text(json.dumps({**doc, **about, "systems": [r.summary() for r in results]}, indent=2))


def _timespeak_offline(convs: list[Conversation], checkpoint: Path | None, chunk_ms: int) -> TimeSpeakMetrics:
    from . import checkpoint as ckpt
    from .codec import Codec
    from .model import DuplexModel
    from .timespeak_eval import evaluate_offline

    model = ckpt.load(checkpoint or _shipped())
    if not isinstance(model, DuplexModel):
        raise ModelError(f"{checkpoint}: not a duplex reference checkpoint")
    return evaluate_offline(model.eval(), Codec(model.cfg), convs, chunk_ms)


def _timespeak_live(
    convs: list[Conversation],
    address: str | None,
    checkpoint: Path | None,
    chunk_ms: int,
    concurrency: int,
    api_key: str,
) -> tuple[TimeSpeakMetrics, dict[str, object]]:
    from duplex.loadtest.live_eval import score_timespeak_live

    run, about = _run_live(convs, address, checkpoint, chunk_ms, concurrency, api_key)
    return score_timespeak_live("duplex (live)", convs, run), about


def _eval_action_count(
    corpus: Path,
    checkpoint: Path | None,
    split: str,
    live: bool,
    limit: int | None,
    baseline: list[str],
    chunk_ms: int,
    as_json: Path | None,
) -> None:
    """``duplex model eval --task action-count``: the split's conversations with a count question, scored by the
    action-count scorer offline (video fed per chunk as the engine feeds it), with the cascade peer and the
    oracle."""
    from . import checkpoint as ckpt
    from .actions_eval import action_conversations, evaluate_offline, run_cascade, score_actions
    from .codec import Codec
    from .data import load_split
    from .model import DuplexModel
    from .timespeak_eval import oracle_said

    if live:
        raise typer.BadParameter("--task action-count is evaluated offline (the live runner streams no video)")
    try:
        convs = action_conversations(load_split(corpus, split))[:limit]
        if not convs:
            raise ModelError(f"split {split!r} of {corpus} has no count questions (make it with --task action-count)")
        model = ckpt.load(checkpoint or _shipped())
        if not isinstance(model, DuplexModel):
            raise ModelError(f"{checkpoint}: not a duplex reference checkpoint")
        if not model.cfg.video_size:
            raise ModelError(f"{checkpoint or _shipped()}: the model takes no video (video_size 0)")
        results = [evaluate_offline(model.eval(), Codec(model.cfg), convs, chunk_ms)]
    except _eval_errors() as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if "cascade" in baseline:
        results.append(run_cascade(convs))
    if "oracle" in baseline:
        results.append(score_actions("target track (oracle)", convs, [oracle_said(c) for c in convs]))
    _print_eval(
        results,
        f"action count on {corpus} ({split}, {len(convs)} conversations)",
        ("questions", "accuracy", "answered", "off_by_one", "latency_p50"),
        (("by_kind", "accuracy kind"), ("by_channel", "accuracy channel"), ("by_count", "accuracy count")),
        "questions",
    )
    if as_json is not None:
        doc = {"task": "action-count", "split": split, "corpus": str(corpus), "live": False}
        doc["checkpoint"] = str(checkpoint or _shipped())
        as_json.write_text(json.dumps({**doc, "systems": [r.summary() for r in results]}, indent=2))


@app.command("count-score")
def count_score(
    timeline: Annotated[Path, typer.Option(help="A `duplex talk --timeline` file.")],
    count: Annotated[int, typer.Option(help="The right answer: how many times the actor did it.")],
    end: Annotated[float, typer.Option(help="When the question ended, seconds on the timeline's axis.")],
    as_json: Annotated[Path | None, typer.Option("--json", help="Write the score to this JSON file.")] = None,
) -> None:
    """Score one count question ("How many times did it jump?") against the model's text in a `duplex talk`
    timeline (the action-count scorer: the first utterance within 5 s of the question's end holds exactly the
    count and no other number)."""
    from dataclasses import asdict

    from .actions import Question, score_question
    from .timespeak import timeline_pieces, utterances

    if count < 0:
        raise typer.BadParameter(f"must be 0 or more, got {count}", param_hint="--count")
    try:
        said = utterances(timeline_pieces(json.loads(timeline.read_text())))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise typer.BadParameter(f"{timeline}: not a `duplex talk` timeline ({e})", param_hint="--timeline") from None
    s = score_question(Question("?", count, "?", end, end), said)
    for u in said:
        console.print(f"  {u.t:7.2f} s  {u.text!r}")
    if s.answer is None:
        console.print("not correct: no answer within 5 s of the question's end")
    else:
        verdict = "correct" if s.correct else "not correct"
        console.print(f"{verdict}: answered {s.answer!r} {s.latency:.2f} s after the question (numbers {list(s.said)})")
    if as_json is not None:
        as_json.write_text(json.dumps({**asdict(s), "correct": s.correct}, indent=2))


TIMESPEAK_KEYS = (
    "requests",
    "accuracy",
    "due",
    "hits",
    "wrong",
    "missing",
    "extra",
    "timing_error_abs_p50",
    "timing_error_abs_p95",
    "timing_error_mean",
    "audio_at_due",
)


@app.command("timespeak-score")
def timespeak_score(
    timeline: Annotated[Path, typer.Option(help="A `duplex talk --timeline` file.")],
    request: Annotated[str, typer.Option(help="What was asked, e.g. 'Say now every three seconds.'")],
    end: Annotated[float, typer.Option(help="When the request ended, seconds on the timeline's axis.")],
    stop: Annotated[
        float | None, typer.Option(help="When 'stop' was said (an 'every' request is due until then).")
    ] = None,
    as_json: Annotated[Path | None, typer.Option("--json", help="Write the score to this JSON file.")] = None,
) -> None:
    """Score one timed request against the model's text in a `duplex talk` timeline (the TimeSpeak scorer: the
    right word within ±0.5 s of every due moment, no other TimeSpeak word after the request)."""
    from dataclasses import asdict

    from .timespeak import parse_request, score_request, timeline_pieces, utterances

    try:
        doc = json.loads(timeline.read_text())
        said = utterances(timeline_pieces(doc))
        until = max([float(e["t"]) for e in doc["events"]], default=end) + 1.0
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise typer.BadParameter(f"{timeline}: not a `duplex talk` timeline ({e})", param_hint="--timeline") from None
    try:
        req = parse_request(request, end, until, stop)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--request") from None
    s = score_request(req, said)
    console.print(f"due at {', '.join(f'{d:.2f}' for d in req.due)} s: {req.word!r} ({req.form}, N = {req.n})")
    for u in said:
        console.print(f"  {u.t:7.2f} s  {u.text!r}" + ("  (a TimeSpeak word)" if u.word else ""))
    verdict = "correct" if s.correct else "not correct"
    console.print(f"{verdict}: {s.hits} on time, {s.wrong} wrong word, {s.missing} missing, {s.extra} extra")
    if as_json is not None:
        as_json.write_text(json.dumps({**asdict(s), "correct": s.correct}, indent=2))


def _baselines(baseline: list[str], convs: list[Conversation], chunk_ms: int) -> list[Metrics]:
    from .evaluate import run_vad_baseline, score

    results = []
    if "vad" in baseline:
        results.append(score("silero-vad server VAD", convs, run_vad_baseline(convs), chunk_ms))
    if "oracle" in baseline:
        results.append(score("target track (oracle)", convs, [c.model.numpy() for c in convs], chunk_ms))
    return results


def _print_eval(
    results: Sequence[Metrics | TimeSpeakMetrics | ActionCountMetrics],
    title: str,
    keys: Sequence[str] = TABLE_KEYS,
    groups: Sequence[tuple[str, str]] = (),
    count: str = "",
) -> None:
    """A table of the systems' figures: ``keys``, then the accuracy by each of ``groups`` (``accuracy_rows``)."""
    table = Table(title=title)
    table.add_column("metric")
    for r in results:
        table.add_column(r.system, justify="right")
    for k in keys:
        table.add_row(k, *[_fmt(getattr(r, k)) for r in results])
    for row in accuracy_rows(results, groups, count):
        table.add_row(*row)
    console.print(table)


def _fmt(v: object) -> str:
    return "—" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


@app.command("init")
def init_cmd(
    family: Annotated[str, typer.Option(help="Moshi family: moshi, personaplex or hibiki.")],
    out: Annotated[Path, typer.Option(help="Directory to write (created; must be empty).")],
    seed: Annotated[int, typer.Option(help="Seed: same seed, same files.")] = 0,
) -> None:
    """Write a tiny random Moshi-family checkpoint in the family's published layout (docs/moshi.md)."""
    from .moshi.tiny import family_name, init_checkpoint

    try:
        name = family_name(family)
    except ModelError as e:
        raise typer.BadParameter(str(e), param_hint="--family") from None
    try:
        path = init_checkpoint(name, out, seed)
    except ModelError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    console.print(f"wrote a tiny random {name} checkpoint (seed {seed}) to {path}")
