"""The agenda: the model's timer tokens for timed speech — labels, read-back while streaming, training inputs."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from duplex.model import checkpoint
from duplex.model.config import ModelConfig, ModelError, get_preset
from duplex.model.data import Conversation, Targets, agenda_targets
from duplex.model.model import DuplexModel, decide, delay
from duplex.model.timespeak import WORDS
from duplex.model.train import AGENDA_CHANGE_WEIGHT, Example, agenda_loss, load_init, make_batch

Speechy = Callable[..., torch.Tensor]
TIMED = get_preset("tiny-timed")


def test_the_timed_preset_counts_in_feedback_delays() -> None:
    assert TIMED.agenda_unit_ms == TIMED.frame_ms * TIMED.feedback_delay_frames == 200
    assert TIMED.agenda_classes == (13, 31, 151)  # 12 words + none; periods 0..30 s; 0..150 counts of 0.2 s
    assert get_preset("tiny").agenda_classes == ()


def _randomised(cfg: ModelConfig, seed: int) -> DuplexModel:
    """A model whose agenda weights are not zero, so the agenda takes part in every output."""
    torch.manual_seed(seed)
    model = DuplexModel(cfg).eval()
    with torch.no_grad():
        for p in (*model.inputs.own_agenda.parameters(), *model.agenda_heads.parameters()):
            p.normal_(0, 0.5)
    return model


def test_step_reads_back_its_agenda_as_forward_is_taught(speechy: Speechy) -> None:
    model = _randomised(TIMED, 1)
    frames = TIMED.window + 40
    audio = speechy(2, frames, TIMED, seed=3)
    state = model.new_state(2)
    S = TIMED.frame_samples * 5
    outs = [model.step(state, audio[:, i : i + S]) for i in range(0, audio.shape[1], S)]
    agenda = torch.cat([o.agenda for o in outs], 1)
    assert agenda.shape == (2, frames, 3)
    assert len(torch.unique(agenda[..., 2])) > 3  # the countdown head really varies
    D = TIMED.feedback_delay_frames
    codes, text, control = (
        torch.cat([getattr(o, f) for o in outs], 1) for f in ("audio_codes", "text_tokens", "control")
    )
    own_agenda = torch.stack([delay(agenda[..., i], D, 0) for i in range(3)], dim=-1)
    with torch.no_grad():
        full = model(
            audio,
            delay(codes, D, TIMED.audio_codes),
            delay(text, D, TIMED.pad_token),
            delay(control, D, TIMED.control_classes),
            own_agenda=own_agenda,
        )
    assert torch.equal(torch.stack([x.argmax(-1) for x in full.agenda], dim=-1), agenda)
    a, t, c = decide(TIMED, full.audio, full.text, full.control)
    assert torch.equal(a, codes) and torch.equal(t, text) and torch.equal(c, control)
    # the last D frames' agenda tokens are what the state holds to read back
    last = state.feedback[:, 3:, :]
    for f in range(frames - D, frames):
        assert torch.equal(last[:, :, f % D], agenda[:, f])


def test_the_read_back_agenda_changes_what_the_model_does(speechy: Speechy) -> None:
    model = _randomised(TIMED, 2)
    audio = speechy(1, 10, TIMED, seed=5)
    base = model.step(model.new_state(1), audio).control_probs
    state = model.new_state(1)
    state.feedback[0, 3:] = torch.tensor([4, 3, 12])[:, None]  # "right" every 3 s, due in 2.4 s
    assert not torch.allclose(model.step(state, audio).control_probs, base)


def _conversation(events: list[dict[str, Any]], seconds: float) -> Conversation:
    n = int(seconds * 16000) // 640 * 640
    return Conversation("c", "train", torch.zeros(n), torch.zeros(n), events)


def _request(word: str, form: str, n: int, end: float, due: list[float], stop: float | None) -> dict[str, Any]:
    doc = {"type": "timed_request", "start": end - 1.5, "end": end, "word": word, "form": form, "n": n, "due": due}
    return doc | {"stop": stop}


def test_agenda_labels_of_a_once_request() -> None:
    conv = _conversation([_request("go", "once", 3, 2.0, [5.0], None)], 8.0)
    a = agenda_targets(conv, TIMED)
    assert a is not None and a.shape == (200, 3)
    # frame f is centred at (f + 0.5) * 40 ms: frames 50..124 lie in [2.0, 5.0)
    assert (a[:50] == 0).all() and (a[125:] == 0).all()
    assert (a[50:125, 0] == WORDS.index("go") + 1).all() and (a[50:125, 1] == 0).all()
    assert a[50, 2] == 14 and a[124, 2] == 0  # floor((5.0 - 2.02) / 0.2), floor((5.0 - 4.98) / 0.2)
    # one count less every feedback delay: what the model reads back is always one more than it writes
    assert torch.equal(a[55:125, 2], a[50:120, 2] - 1)


def test_agenda_labels_of_an_every_request_until_its_stop_is_said() -> None:
    events = [
        _request("left", "every", 2, 1.0, [3.0, 5.0], 5.8),
        {"type": "user_turn", "start": 5.8, "end": 6.5},
    ]
    a = agenda_targets(_conversation(events, 9.0), TIMED)
    assert a is not None
    on = slice(25, 162)  # centres in [1.0, 6.5)
    assert (a[on, 0] == WORDS.index("left") + 1).all() and (a[on, 1] == 2).all()
    assert (a[:25] == 0).all() and (a[162:] == 0).all()
    # the due moment at 3.0 s passes between frames 74 and 75: the count wraps to a full period
    assert a[74, 2] == 0 and a[75, 2] == 9  # floor((5.0 - 3.02) / 0.2)
    assert a[124, 2] == 0 and a[125, 2] == 9  # and at 5.0 s towards the 7.0 s that the stop cancels


def test_agenda_labels_refuse_what_they_cannot_hold() -> None:
    with pytest.raises(ModelError, match="longer than agenda_max_s=30"):
        agenda_targets(_conversation([_request("up", "once", 40, 1.0, [41.0], None)], 2.0), TIMED)
    lost = [_request("up", "every", 2, 1.0, [3.0], 3.5)]
    with pytest.raises(ModelError, match="no user turn or typed text starts at the stop"):
        agenda_targets(_conversation(lost, 5.0), TIMED)
    assert agenda_targets(_conversation([], 1.0), get_preset("tiny")) is None


def test_a_crop_reads_back_the_agenda_from_before_it_starts() -> None:
    T, D = 60, TIMED.feedback_delay_frames
    agenda = torch.zeros(T, 3, dtype=torch.long)
    agenda[:, 2] = torch.arange(T)
    t = Targets(
        torch.zeros(T, dtype=torch.long), torch.zeros(T, dtype=torch.long), torch.full((T,), 256), torch.ones(T)
    )
    t.agenda = agenda
    ex = Example(torch.zeros(T * 640, dtype=torch.int16), t)
    batch = make_batch([ex], random.Random(4), 3, 40, 640, D)
    for row in range(3):
        start = int(batch["agenda"][row, 0, 2])
        assert torch.equal(batch["agenda"][row, :, 2], torch.arange(start, start + 40))
        expected = torch.arange(start - D, start + 40 - D).clamp(min=0) * (torch.arange(start - D, start + 40 - D) >= 0)
        assert torch.equal(batch["agenda_in"][row, :, 2], expected)


def test_the_agenda_loss_weighs_the_frames_of_change() -> None:
    read_back = torch.tensor([[[1, 0, 5], [1, 0, 5], [0, 0, 0]]])
    target = torch.tensor([[[1, 0, 4], [2, 0, 4], [3, 2, 9]]])  # follows; a new word; a new request
    logits = tuple(torch.zeros(1, 3, n) for n in TIMED.agenda_classes)
    for i, x in enumerate(logits):
        x[0, 0, target[0, 0, i]] = 1e4  # frame 0 right for sure; frames 1 and 2 uniform
    ce = sum(torch.log(torch.tensor(float(n))) for n in TIMED.agenda_classes)
    got = agenda_loss(logits, target, read_back, torch.ones(1, 3))
    W = AGENDA_CHANGE_WEIGHT
    torch.testing.assert_close(got, ce * 2 * W / (3 * (1 + 2 * W)))
    masked = agenda_loss(logits, target, read_back, torch.tensor([[0.0, 1.0, 0.0]]))
    torch.testing.assert_close(masked, ce / 3)


TEXT_ROWS = ("inputs.own_text.weight", "inputs.text_in.weight", "text_head.weight")


def _grown(small: DuplexModel, cfg: ModelConfig, tmp_path: Path) -> dict[str, torch.Tensor]:
    """A ``cfg`` model fine-tuned from ``small``'s checkpoint: its state, every tensor of ``small`` in it unchanged
    (a text table grown for word tokens: its first rows)."""
    checkpoint.save(small, tmp_path / "small.safetensors")
    model = DuplexModel(cfg)
    load_init(model, tmp_path / "small.safetensors")
    mine: dict[str, torch.Tensor] = model.state_dict()
    for name, value in small.state_dict().items():
        grown = name in TEXT_ROWS and small.cfg.text_vocab < cfg.text_vocab
        assert mine[name].shape == value.shape or grown, name
        assert torch.equal(mine[name][: value.shape[0]], value), name
    return mine


def test_a_checkpoint_without_an_agenda_starts_an_agenda_model(tmp_path: Path) -> None:
    plain = DuplexModel(get_preset("tiny"))
    mine = _grown(plain, TIMED, tmp_path)
    agenda = [k for k in mine if "agenda" in k]
    assert len(agenda) == 6 and all((mine[k] == 0).all() for k in agenda)
    checkpoint.save(DuplexModel(TIMED), tmp_path / "timed.safetensors")
    with pytest.raises(ModelError, match="does not match"):
        load_init(DuplexModel(get_preset("tiny")), tmp_path / "timed.safetensors")


TALLY = TIMED.model_copy(update={"name": "tiny-timed-tally", "agenda_tally": 15})


def test_the_tally_counts_the_actions_finished_until_the_count_is_answered() -> None:
    assert TALLY.agenda_classes == (13, 31, 151, 16)
    events = [
        {"type": "action", "start": 1.0, "end": 1.4, "kind": "jump"},
        {"type": "action", "start": 2.0, "end": 2.6, "kind": "jump"},
        {"type": "model_turn", "start": 4.0, "end": 4.8, "kind": "count_answer"},
    ]
    a = agenda_targets(_conversation(events, 6.0), TALLY)
    assert a is not None and a.shape == (150, 4)
    assert (a[:35, 3] == 0).all() and (a[35:65, 3] == 1).all() and (a[65:120, 3] == 2).all()
    assert (a[120:, 3] == 0).all() and (a[:, :3] == 0).all()
    with pytest.raises(ValueError, match="agenda_tally needs an agenda"):
        ModelConfig(agenda_tally=4)


def test_a_crop_carries_its_clip_frames_at_their_rows_and_frames() -> None:
    T = 60
    t = Targets(
        torch.zeros(T, dtype=torch.long), torch.zeros(T, dtype=torch.long), torch.full((T,), 256), torch.ones(T)
    )
    frames = torch.arange(12, dtype=torch.uint8)[:, None, None, None].expand(12, 3, 32, 32).contiguous()
    ex = Example(torch.zeros(T * 640, dtype=torch.int16), t, None, (frames, torch.arange(0, 60, 5)))
    batch = make_batch([ex], random.Random(9), 3, 20, 640, 5)
    rows, at = batch["video_at"][:, 0], batch["video_at"][:, 1]
    assert sorted(set(rows.tolist())) == [0, 1, 2] and ((at >= 0) & (at < 20)).all()
    # frame k was made with value k and sits at model frame 5k: in the crop at 5k - start
    values = (batch["video"][:, 0, 0, 0] * 255).round().long()
    for r in range(3):
        mine = rows == r
        starts = values[mine] * 5 - at[mine]
        assert len(set(starts.tolist())) == 1  # one crop start per row, the frames in order
        assert mine.sum() == 4  # 20 frames hold 4 chunks' frames


def test_a_timer_checkpoint_starts_a_model_with_a_tally(tmp_path: Path) -> None:
    mine = _grown(DuplexModel(TIMED), TALLY, tmp_path)
    assert (mine["agenda_heads.3.weight"] == 0).all() and (mine["inputs.own_agenda.3.weight"] == 0).all()
