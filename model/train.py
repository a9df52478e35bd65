"""Training the reference checkpoint on CPU: teacher forcing on corpus conversations.

The model reads the user track and its own target outputs delayed by ``feedback_delay_frames`` (exactly
what ``step`` feeds back while serving) and learns to produce the target model track: floor control,
codec codes and the words. Deterministic for a seed and a step count; resumable (``--resume``) from the
state file written next to the checkpoint; the best checkpoint by a streaming validation score is kept.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor

from . import checkpoint
from .codec import Codec
from .config import ModelConfig, ModelError, get_preset
from .data import Conversation, Targets, load_conversation, load_split, split_ids, targets, video_input
from .evaluate import Metrics, score, stream_model
from .family import Floor
from .grow import grow_text, grows_text
from .model import DuplexModel, delay
from .timespeak_eval import said_offline, score_timespeak


class TrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    corpus: Path
    """Corpus directory written by ``duplex corpus make``."""
    out: Path
    """Checkpoint to write (the best by validation); ``<out>.state.pt`` holds the resumable state."""
    preset: str = "tiny"
    """Model preset."""
    steps: int = Field(3000, ge=1)
    """Optimizer steps; the learning-rate schedule spans them (determinism is per seed and step count)."""
    minutes: float = Field(60.0, gt=0)
    """Wall-clock cap: training stops early (keeping the best checkpoint) when it is reached."""
    batch: int = Field(8, ge=1)
    """Crops per step."""
    crop_s: float = Field(24.0, gt=1)
    """Length of each training crop in seconds."""
    lr: float = Field(2e-3, gt=0)
    """Peak AdamW learning rate (cosine decay to 10 %, 150-step warm-up)."""
    weight_decay: float = Field(0.05, ge=0)
    feedback_dropout: float = Field(0.1, ge=0, lt=1)
    """Share of own-output feedback frames replaced by BOS, so the model does not over-trust its past."""
    session_steps: int | None = Field(None, ge=1)
    """Stop this session after this many steps (the schedule still spans ``steps``); resume later."""
    eval_every: int = Field(250, ge=1)
    """Validate (streaming, on the validation split) every this many steps."""
    seed: int = 0
    threads: int = Field(2, ge=1)
    """torch CPU threads."""
    init: Path | None = None
    """Start from this checkpoint's weights (of the same preset) instead of random ones: fine-tuning."""


CLEAN_SHARE = 0.25
"""Share of training crops that use the dry user track with a faint hiss instead of the noisy mix."""
CLASS_WEIGHT = torch.tensor([1.0, 1.0, 3.0, 3.0])  # listen, speak, backchannel, yield


@dataclass
class Example:
    user: Tensor
    """(T*S,) int16 microphone track (half the memory of float32; hours of audio stay resident)."""
    t: Targets
    clean: Tensor | None = None
    """(T*S,) int16 dry user speech: sometimes trained on instead, so a noiseless microphone is no surprise."""
    video: tuple[Tensor, Tensor] | None = None
    """(uint8 frames (K, 3, V, V), model frame of each (K,)): ``video_input`` kept as bytes."""


def _int16(x: Tensor) -> Tensor:
    return (x * 32768).round().clamp(-32768, 32767).to(torch.int16)


def to_example(c: Conversation, cfg: ModelConfig, codec: Codec) -> Example:
    clean = None if c.user_clean is None else _int16(c.user_clean)
    video = video_input(c, cfg)
    kept = None if video is None else ((video[0] * 255).round().to(torch.uint8), video[1])
    return Example(_int16(c.user), targets(c, cfg, codec), clean, kept)


def prepare(corpus: Path, split: str, cfg: ModelConfig, codec: Codec, progress: Progress) -> list[Example]:
    """Labels for a split, one conversation at a time (the float tracks are dropped as we go)."""
    ids = split_ids(corpus, split)
    task = progress.add_task(f"labels ({split})", total=len(ids), info="")
    out = []
    for cid in ids:
        out.append(to_example(load_conversation(corpus / cid, clean=True), cfg, codec))
        progress.advance(task)
    return out


def _crop(x: Tensor, start: int, n: int, frames: int, fill: float) -> Tensor:
    """x[start:start+n] padded with ``fill`` to ``frames``."""
    return torch.cat([x[start : start + n], torch.full((frames - n,), fill, dtype=x.dtype)])


def make_batch(
    examples: list[Example],
    rng: random.Random,
    size: int,
    frames: int,
    S: int,
    delay_frames: int = 5,
    agenda_classes: tuple[int, ...] = (),
) -> dict[str, Tensor]:
    """``size`` random crops of ``frames``. With an agenda, ``agenda_in`` is its targets ``delay_frames`` late,
    taken from before the crop where it starts (a countdown begun before the crop is read back as it was), and,
    given ``agenda_classes``, a span of it is sometimes read back wrong (``corrupt_agenda``)."""
    audio, control, codes, text, weight = [], [], [], [], []
    typed: list[Tensor | None] = []
    agenda: list[Tensor] = []
    agenda_in: list[Tensor] = []
    video: list[Tensor] = []
    video_at: list[Tensor] = []
    for row in range(size):
        ex = examples[rng.randrange(len(examples))]
        T = ex.t.control.shape[0]
        n = min(frames, T)
        start = rng.randrange(0, T - n + 1)
        gain = 10 ** (rng.uniform(-6, 6) / 20)
        a = torch.zeros(frames * S)
        if ex.clean is not None and rng.random() < CLEAN_SHARE:  # a quiet microphone: dry speech, faint hiss
            hiss = 10 ** (rng.uniform(-90, -50) / 20)
            noise = torch.randn(n * S, generator=torch.Generator().manual_seed(rng.randrange(2**31))) * hiss
            a[: n * S] = (ex.clean[start * S : (start + n) * S].float() * (gain / 32768) + noise).clamp(-1, 1)
        else:
            a[: n * S] = (ex.user[start * S : (start + n) * S].float() * (gain / 32768)).clamp(-1, 1)
        audio.append(a)
        control.append(_crop(ex.t.control, start, n, frames, 0))
        codes.append(_crop(ex.t.audio, start, n, frames, 0))
        text.append(_crop(ex.t.text, start, n, frames, 256))
        weight.append(_crop(ex.t.weight, start, n, frames, 0.0))
        typed.append(None if ex.t.text_in is None else ex.t.text_in[start : start + n])
        if ex.video is not None:
            inside = (ex.video[1] >= start) & (ex.video[1] < start + n)
            video.append(ex.video[0][inside])
            at = ex.video[1][inside] - start
            video_at.append(torch.stack([torch.full_like(at, row), at], dim=1))
        if ex.t.agenda is not None:
            padded = torch.cat([torch.zeros(delay_frames, ex.t.agenda.shape[1], dtype=torch.long), ex.t.agenda])
            agenda.append(_crop_rows(ex.t.agenda[start : start + n], frames))
            read_back = _crop_rows(padded[start : start + n], frames)
            if agenda_classes and rng.random() < AGENDA_NOISE:
                corrupt_agenda(read_back, agenda[-1], rng, agenda_classes, delay_frames)
            agenda_in.append(read_back)
    batch = {
        "audio": torch.stack(audio),
        "control": torch.stack(control),
        "codes": torch.stack(codes),
        "text": torch.stack(text),
        "weight": torch.stack(weight),
    }
    if agenda:
        batch["agenda"], batch["agenda_in"] = torch.stack(agenda), torch.stack(agenda_in)
    if video:  # frames of clips in this batch (action counting), each at its (row, frame)
        batch["video"], batch["video_at"] = torch.cat(video).float() / 255.0, torch.cat(video_at)
    slots = next((x.shape[1] for x in typed if x is not None), 0)
    if slots:  # typed text in this batch (TimeSpeak): PAD elsewhere, the engine's layout
        batch["text_in"] = torch.full((size, frames, slots), 256, dtype=torch.long)
        for i, x in enumerate(typed):
            if x is not None:
                batch["text_in"][i, : x.shape[0]] = x
    return batch


AGENDA_NOISE = 0.8
"""Share of training crops whose agenda is read back wrong over a span (``corrupt_agenda``)."""
AGENDA_NOISE_FRAMES = (3, 60)
"""Length range of that span, in frames: always shorter than the attention window."""


def corrupt_agenda(
    read_back: Tensor, target: Tensor, rng: random.Random, classes: tuple[int, ...], delay_frames: int
) -> None:
    """Overwrite a span of ``read_back`` (frames, A) in place with a made-up agenda (a random word and period,
    a random countdown going down one per ``delay_frames``, a random tally), most of the time over a frame where
    the true agenda changes (a request just heard, a due moment, a stop, an action seen). Teacher forcing alone
    only ever reads back the right agenda, so a model trained that way copies whatever it once wrote; with this
    it learns to correct a wrong read-back from what it hears, reads and sees, and from the agenda it read back
    before the span."""
    frames = read_back.shape[0]
    length = rng.randint(*AGENDA_NOISE_FRAMES)
    kept = [0, 1, *range(3, target.shape[1])]  # every token but the countdown, which changes each unit
    changes = (target[1:, kept] != target[:-1, kept]).any(-1).nonzero().flatten().tolist()
    if changes and rng.random() < 0.7:
        at = changes[rng.randrange(len(changes))] + 1 - rng.randrange(length)
    else:
        at = rng.randrange(frames)
    at = max(0, min(at, frames - 1))
    span = slice(at, min(frames, at + length))
    offsets = torch.arange(span.stop - span.start)
    read_back[span, 0] = rng.randrange(classes[0])
    read_back[span, 1] = rng.randrange(classes[1])
    read_back[span, 2] = (rng.randrange(classes[2]) - offsets // delay_frames).clamp(min=0)
    for i in range(3, len(classes)):
        read_back[span, i] = rng.randrange(classes[i])


def _crop_rows(x: Tensor, frames: int) -> Tensor:
    """(n, k) rows padded with zeros (an empty agenda) to (frames, k)."""
    return torch.cat([x, torch.zeros(frames - x.shape[0], x.shape[1], dtype=x.dtype)])


AGENDA_LOSS_WEIGHT = 0.5
AGENDA_CHANGE_WEIGHT = 5.0
"""Loss weight of the frames where the agenda does not follow from what is read back (a request heard, a due
moment passed, a stop): the recognitions, where the rest of the countdown is bookkeeping."""


def agenda_loss(logits: tuple[Tensor, ...], target: Tensor, read_back: Tensor, mask: Tensor) -> Tensor:
    """Cross-entropy of the agenda heads over ``mask``ed frames, frames of change weighted up."""
    kept = [0, 1, *range(3, target.shape[-1])]
    follows = (target[..., kept] == read_back[..., kept]).all(-1) & (target[..., 2] == (read_back[..., 2] - 1).clamp(0))
    w = mask * torch.where(follows, 1.0, AGENDA_CHANGE_WEIGHT)
    parts = [
        (F.cross_entropy(x.transpose(1, 2), target[..., i], reduction="none") * w).sum() for i, x in enumerate(logits)
    ]
    return torch.stack(parts).sum() / (len(parts) * w.sum().clamp(min=1))


def loss_fn(
    model: DuplexModel, b: dict[str, Tensor], gen: torch.Generator, dropout: float
) -> tuple[Tensor, dict[str, float]]:
    cfg = model.cfg
    D = cfg.feedback_delay_frames
    own = [
        delay(b["codes"], D, cfg.audio_codes),
        delay(b["text"], D, cfg.pad_token),
        delay(b["control"], D, cfg.control_classes),
    ]
    if dropout:
        drop = torch.rand(b["control"].shape, generator=gen) < dropout
        own = [
            torch.where(drop, torch.full_like(x, bos), x)
            for x, bos in zip(own, (cfg.audio_codes, cfg.pad_token, cfg.control_classes), strict=True)
        ]
    own_agenda = b.get("agenda_in")
    if own_agenda is not None and dropout:
        own_agenda = torch.where(drop[..., None], torch.zeros_like(own_agenda), own_agenda)
    out = model(
        b["audio"],
        *own,
        text_in=b.get("text_in"),
        video=b.get("video"),
        video_at=b.get("video_at"),
        own_agenda=own_agenda,
    )
    w = b["weight"] * CLASS_WEIGHT[b["control"]]
    ctrl = (F.cross_entropy(out.control.transpose(1, 2), b["control"], reduction="none") * w).sum() / w.sum()
    speaking = ((b["control"] == Floor.SPEAK) | (b["control"] == Floor.BACKCHANNEL)).float() * (b["weight"] > 0)
    aud = (
        F.cross_entropy(out.audio.transpose(1, 2), b["codes"], reduction="none") * speaking
    ).sum() / speaking.sum().clamp(min=1)
    tw = torch.where(b["text"] == cfg.pad_token, 0.1, 1.0) * (b["weight"] > 0)
    txt = (F.cross_entropy(out.text.transpose(1, 2), b["text"], reduction="none") * tw).sum() / tw.sum()
    total = ctrl + 0.5 * aud + 0.3 * txt + cfg.router_aux_loss_coef * out.aux_loss
    parts = {"loss": total, "control": ctrl, "audio": aud, "text": txt}
    if out.agenda and "agenda" in b:
        agd = agenda_loss(out.agenda, b["agenda"], b["agenda_in"], (b["weight"] > 0).float())
        total = total + AGENDA_LOSS_WEIGHT * agd
        parts |= {"loss": total, "agenda": agd}
    return total, {k: float(v.detach()) for k, v in parts.items()}


def validation_score(m: Metrics) -> float:
    """One number to keep the best checkpoint by: take turns, quickly, without talking over the user."""
    latency = m.latency_p50 if m.latency_p50 is not None else 3.0
    # barge-ins only count in proportion to how many could be judged (the model was speaking at the time)
    judged = m.barge_ins_evaluated / m.barge_ins if m.barge_ins else 0.0
    barge = (m.barge_in_within_chunk or 0.0) * judged
    return m.tor - 2.0 * m.false_takeover - m.interrupts_user - m.overlap - latency + 0.5 * barge


def _validate(
    s: TrainSettings,
    model: DuplexModel,
    codec: Codec,
    val_convs: list[Conversation],
    step: int,
    parts: dict[str, float],
    history: list[dict[str, Any]],
    log: Callable[[str], None],
) -> float:
    """Stream the validation split through the real step path, score it, log it and append it to ``history``."""
    model.eval()
    tracks, texts = stream_model(model, codec, val_convs)
    m = score("duplex", val_convs, tracks)
    model.train()
    v = validation_score(m)
    summary: dict[str, Any] = m.summary()
    timed = [k for k, c in enumerate(val_convs) if any(e["type"] == "timed_request" for e in c.events)]
    if model.cfg.agenda_classes and timed:  # an agenda model is also kept for its timed speech
        said = [said_offline(texts[k], model.cfg, 0.2) for k in timed]
        ts = score_timespeak("duplex", [val_convs[k] for k in timed], said)
        summary["timespeak_accuracy"] = ts.accuracy
        v += ts.accuracy
    history.append({"step": step, **parts, "val_score": v, **summary, "validation": summary})
    shown = {k: (round(x, 3) if isinstance(x, float) else x) for k, x in summary.items()}
    log(f"step {step}: {json.dumps(shown)} score {v:.3f}")
    return v


def load_init(model: DuplexModel, path: Path) -> None:
    """Start from ``path``'s weights (fine-tuning). A checkpoint whose agenda is a part of the model's (none, or
    the timer without the tally), of the same shape otherwise, starts the larger agenda: the new agenda weights
    stay as built (zero: no input, undecided). One whose text vocabulary lacks some of the model's word tokens
    gets them grown (``grow.grow_text``: the grown model decides exactly as the checkpoint's)."""
    cfg = model.cfg
    src = checkpoint.read_config(path)
    keep: dict[str, Any] = {}
    if src.agenda_classes == cfg.agenda_classes[: len(src.agenda_classes)]:
        keep |= {k: getattr(src, k) for k in ("agenda_words", "agenda_max_s", "agenda_tally")}
    grows = grows_text(src, cfg)
    if grows:
        keep |= {"text_vocab": src.text_vocab, "text_words": src.text_words}
    state = checkpoint.load(path, expected=cfg.model_copy(update=keep)).state_dict()
    result = model.load_state_dict(grow_text(state, src, cfg) if grows else state, strict=False)
    missing = [k for k in result.missing_keys if "agenda" not in k]
    if missing or result.unexpected_keys:
        raise ModelError(f"{path} does not fit the {cfg.name!r} model: {missing or result.unexpected_keys}")


def train(s: TrainSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    rng = random.Random(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    cfg = get_preset(s.preset)
    codec = Codec(cfg)
    model = DuplexModel(cfg)
    if s.init is not None:
        load_init(model, s.init)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.95))
    state_path = s.out.with_suffix(".state.pt")
    step, best, history = 0, -math.inf, []
    if state_path.exists():
        st = torch.load(state_path, weights_only=False)
        if st["settings"]["seed"] != s.seed or st["settings"]["preset"] != s.preset:
            raise ModelError(f"{state_path} was written with another seed/preset; delete it to start afresh")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, best, history = st["step"], st["best"], st["history"]
        rng.setstate(st["rng"])
        gen.set_state(st["gen"])
        log(f"resumed from {state_path} at step {step}")
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    t0 = time.monotonic()
    with Progress(*columns) as progress:
        train_ex = prepare(s.corpus, "train", cfg, codec, progress)
        val_convs = load_split(s.corpus, "validation")
        frames = int(s.crop_s * 1000 / cfg.frame_ms)
        task = progress.add_task("training", total=s.steps, completed=step, info="")
        model.train()
        stop_at = s.steps if s.session_steps is None else min(s.steps, step + s.session_steps)
        while step < stop_at:
            if (time.monotonic() - t0) / 60 > s.minutes:
                log(f"time cap of {s.minutes} min reached at step {step}")
                break
            frac = step / s.steps
            lr = s.lr * min(1.0, (step + 1) / 150) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
            for g in opt.param_groups:
                g["lr"] = lr
            batch = make_batch(
                train_ex, rng, s.batch, frames, cfg.frame_samples, cfg.feedback_delay_frames, cfg.agenda_classes
            )
            loss, parts = loss_fn(model, batch, gen, s.feedback_dropout)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            progress.update(task, advance=1, info=f"loss {parts['loss']:.3f} ctl {parts['control']:.3f}")
            if not progress.console.is_terminal and step % 25 == 0:  # a log file gets a line now and then
                agenda = f" agenda {parts['agenda']:.3f}" if "agenda" in parts else ""
                log(
                    f"step {step}/{s.steps} {time.monotonic() - t0:.0f}s loss {parts['loss']:.3f} "
                    f"control {parts['control']:.3f} audio {parts['audio']:.3f} text {parts['text']:.3f}{agenda}"
                )
            if step % s.eval_every == 0 or step == s.steps:
                v = _validate(s, model, codec, val_convs, step, parts, history, log)
                if v > best:
                    best = v
                    meta = {
                        "train_settings": s.model_dump_json(),
                        "step": str(step),
                        "validation": json.dumps(history[-1]["validation"]),
                    }
                    checkpoint.save(model, s.out, metadata=meta, dtype=torch.bfloat16)
                state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "best": best}
                state |= {"history": history, "rng": rng.getstate(), "gen": gen.get_state()}
                torch.save({**state, "settings": s.model_dump(mode="json")}, state_path)
    return {"steps": step, "best_score": best, "history": history, "minutes": (time.monotonic() - t0) / 60}
