"""Word tokens: one text token per TimeSpeak word (``ModelConfig.text_words``) — the config, the labels of timed
words, decoding (served text and offline scoring), growing a checkpoint's vocabulary, stepping and training."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from duplex.model import checkpoint
from duplex.model.codec import Codec
from duplex.model.config import ModelConfig, ModelError, get_preset
from duplex.model.corpus import make_corpus
from duplex.model.data import Conversation, load_split, targets
from duplex.model.family_duplex import ByteTextDecoder, DuplexServed
from duplex.model.grow import WORD_MARGIN
from duplex.model.model import DuplexModel, decide, delay
from duplex.model.timespeak import WORDS, frame_pieces, utterances
from duplex.model.timespeak_eval import said_offline, score_timespeak
from duplex.model.train import TrainSettings, load_init, train

Speechy = Callable[..., torch.Tensor]
TIMED = get_preset("tiny-timed")
TINY = get_preset("tiny")
EOT, PAD = TIMED.eot_token, TIMED.pad_token


def test_the_timed_preset_has_a_token_for_each_word_and_tiny_none() -> None:
    assert TIMED.text_words == 12 and TIMED.text_vocab == 272
    assert TIMED.word_tokens == {260 + k: w for k, w in enumerate(WORDS)}
    assert TIMED.word_token("red") == 267 and TIMED.token_word(267) == "red"
    assert TIMED.word_token("stop") is None and TIMED.token_word(259) is None and TIMED.token_word(272) is None
    assert TINY.text_words == 0 and TINY.text_vocab == 260 and TINY.word_tokens == {}
    assert TINY.word_token("red") is None and TINY.token_word(267) is None
    few = ModelConfig(text_words=3, text_vocab=263)
    assert few.word_tokens == {260: "now", 261: "go", 262: "left"} and few.word_token("right") is None


def test_a_vocabulary_too_small_for_the_word_tokens_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"text_vocab \(271\) is too small for text_words=12.*at least 272"):
        ModelConfig(text_words=12, text_vocab=271)
    with pytest.raises(ValidationError, match=r"text_vocab \(260\) is too small for text_words=1"):
        ModelConfig.from_json(json.dumps(TINY.model_dump() | {"text_words": 1}))  # as a checkpoint's config
    with pytest.raises(ValidationError, match="text_words"):
        ModelConfig(text_words=13, text_vocab=300)  # there are twelve words
    assert ModelConfig(text_words=12, text_vocab=300).text_vocab == 300  # larger is allowed


def _conversation(events: list[dict[str, Any]], seconds: float) -> Conversation:
    n = int(seconds * 16000) // 640 * 640
    return Conversation("c", "train", torch.zeros(n), torch.zeros(n), events)


def _said(word: str, start: float, kind: str = "timed_word") -> dict[str, Any]:
    """A model turn of the corpus's shape: one word from ``start``."""
    end = start + 0.35
    return {
        "type": kind,
        "start": start,
        "end": end,
        "word": word,
        "words": [{"word": word, "start": start, "end": end}],
    }


def _request(word: str, form: str, n: int, end: float, due: list[float], stop: float | None) -> dict[str, Any]:
    doc = {"type": "timed_request", "start": end - 1.5, "end": end, "word": word, "form": form, "n": n, "due": due}
    return doc | {"stop": stop, "request": 0, "channel": "spoken", "window_end": 20.0}


def _text(events: list[dict[str, Any]], seconds: float, cfg: ModelConfig) -> list[int]:
    conv = _conversation(events, seconds)
    return [int(v) for v in targets(conv, cfg, Codec(cfg)).text]


def test_a_once_request_labels_its_word_as_one_token_then_eot() -> None:
    events = [_request("go", "once", 3, 2.0, [5.0], None), _said("Okay.", 2.2, "model_turn"), _said("go", 5.0)]
    text = _text(events, 8.0, TIMED)
    assert text[125:127] == [TIMED.word_token("go"), EOT]  # frame int(5.0 / 0.04) = 125, then the end of text
    assert text[55:61] == [*b"Okay.", EOT]  # other text stays bytes
    assert [f for f, v in enumerate(text) if v != PAD] == [*range(55, 61), 125, 126]
    # without word tokens the same turn is its bytes, as before
    assert _text(events, 8.0, TINY)[125:128] == [*b"go", EOT]


def test_an_every_request_labels_each_due_word_at_the_frame_its_speech_starts() -> None:
    events = [
        _request("left", "every", 2, 1.0, [3.0, 5.0], 5.8),
        _said("left", 3.01),
        _said("left", 5.02),
        {"type": "user_turn", "start": 5.8, "end": 6.5, "text": "Stop."},
    ]
    text = _text(events, 9.0, TIMED)
    left = TIMED.word_token("left")
    assert [(f, v) for f, v in enumerate(text) if v != PAD] == [(75, left), (76, EOT), (125, left), (126, EOT)]
    # a model with tokens for only the first two words lays "left" out as bytes
    few = ModelConfig(**(TINY.model_dump() | {"text_words": 2, "text_vocab": 262}))
    assert _text(events, 9.0, few)[75:80] == [*b"left", EOT]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("words") / "c"
    make_corpus(out, 5, seed=1, min_duration_s=15, max_duration_s=22, task="timespeak")
    return out


def _all(corpus: Path) -> list[Conversation]:
    return [c for split in ("train", "validation", "test", "heldout") for c in load_split(corpus, split)]


def test_corpus_labels_put_each_timed_word_token_where_its_bytes_started(corpus: Path) -> None:
    words = 0
    for conv in _all(corpus):
        mine, plain = targets(conv, TIMED, Codec(TIMED)).text, targets(conv, TINY, Codec(TINY)).text
        said = [e for e in conv.events if e["type"] == "timed_word"]
        words += len(said)
        for e in said:
            f = int(e["start"] / 0.04)
            assert mine[f] == TIMED.word_token(e["word"]) and mine[f + 1] == EOT
            n = len(e["word"])
            assert bytes(plain[f : f + n].tolist()) == e["word"].encode() and plain[f + n] == EOT
            plain[f : f + n + 1] = mine[f : f + n + 1]  # the byte layout of that turn, replaced by the token's
        assert torch.equal(mine, plain)  # and nothing else differs
        assert int((mine >= TIMED.first_word_token).sum()) == len(said)
    assert words >= 5


def test_word_tokens_decode_to_their_words_when_served_and_when_scored(corpus: Path) -> None:
    served = DuplexServed(DuplexModel(TIMED)).text_decoder()
    assert served.feed([PAD, TIMED.word_token("red") or 0]) == ("red", False)
    assert served.feed([EOT, PAD]) == ("", True)
    split = "é".encode()
    assert served.feed([*b"ok ", split[0]]) == ("ok ", False)
    assert served.feed([split[1], TIMED.word_token("go") or 0, *b"!", EOT]) == ("égo!", True)
    assert served.feed([split[0], TIMED.word_token("up") or 0]) == ("\ufffdup", False)  # a broken character
    # a model without word tokens has no words to decode: ids past its vocabulary are not text
    assert DuplexServed(DuplexModel(TINY)).text_decoder().feed([267, EOT]) == ("", True)
    assert ByteTextDecoder(EOT).feed([*b"hi", 267]) == ("hi", False)
    # offline: the frames of a word token read as the word, at the token's frame
    pieces = frame_pieces([PAD, 264, EOT, PAD, *b"ok", EOT], 0.04, 0.2, words=TIMED.word_tokens)
    assert [(u.t, u.text, u.word) for u in utterances(pieces)] == [(0.24, "breathe", "breathe"), (0.36, "ok", None)]
    # the labels of every conversation, scored as the model's output: every request is said right
    convs = [c for c in _all(corpus) if any(e["type"] == "timed_request" for e in c.events)]
    said = [said_offline(targets(c, TIMED, Codec(TIMED)).text.numpy(), TIMED, 0.0) for c in convs]
    assert score_timespeak("labels", convs, said).accuracy == 1.0


def _stepped(model: DuplexModel, audio: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Step ``audio`` through the model in 200 ms chunks: codes, text, control, control probabilities."""
    state = model.new_state(audio.shape[0])
    S = model.cfg.frame_samples * 5
    outs = [model.step(state, audio[:, i : i + S]) for i in range(0, audio.shape[1], S)]
    fields = ("audio_codes", "text_tokens", "control", "control_probs")
    return tuple(torch.cat([getattr(o, f) for o in outs], 1) for f in fields)


def test_a_grown_vocabulary_decides_exactly_as_the_checkpoint_did(tmp_path: Path, speechy: Speechy) -> None:
    torch.manual_seed(11)
    old = DuplexModel(TINY).eval()
    checkpoint.save(old, tmp_path / "tiny.safetensors")
    grown = DuplexModel(TIMED).eval()
    load_init(grown, tmp_path / "tiny.safetensors")
    state = grown.state_dict()
    first = [w.encode()[0] for w in WORDS]
    assert torch.equal(state["text_head.weight"][260:], old.text_head.weight[first])
    assert (state["text_head.bias"][:260] == 0).all() and (state["text_head.bias"][260:] == -WORD_MARGIN).all()
    assert torch.equal(state["inputs.own_text.weight"][260:], old.inputs.own_text.weight[first])
    assert (state["inputs.text_in.weight"][260:] == 0).all()
    audio = speechy(2, 200, TINY, seed=4)
    with torch.no_grad():
        was, now = _stepped(old, audio), _stepped(grown, audio)
    for a, b in zip(was, now, strict=True):
        assert torch.equal(a, b)
    assert bool(torch.isin(was[1], torch.tensor(first)).any())  # a word's first letter was chosen: the margin held
    # the text logits: the old ones unchanged, each new one its letter's less the margin
    D = TINY.feedback_delay_frames
    codes, text, control, _ = was
    inputs = (audio, delay(codes, D, TINY.audio_codes), delay(text, D, PAD), delay(control, D, TINY.control_classes))
    with torch.no_grad():
        a, b = old(*inputs).text, grown(*inputs).text
    torch.testing.assert_close(b[..., :260], a)
    torch.testing.assert_close(b[..., 260:], a[..., first] - WORD_MARGIN)
    # the grown checkpoint fits a model with word tokens only, and a vocabulary that is no prefix is refused
    checkpoint.save(grown, tmp_path / "grown.safetensors")
    again = DuplexModel(TIMED)
    load_init(again, tmp_path / "grown.safetensors")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in grown.state_dict().items())
    with pytest.raises(ModelError, match="text_vocab: checkpoint 272 vs expected 260"):
        load_init(DuplexModel(TINY), tmp_path / "grown.safetensors")
    checkpoint.save(DuplexModel(TINY.model_copy(update={"text_vocab": 300})), tmp_path / "wide.safetensors")
    with pytest.raises(ModelError, match="text_vocab: checkpoint 300 vs expected 272"):
        load_init(DuplexModel(TIMED), tmp_path / "wide.safetensors")


def test_a_word_token_written_is_read_back_as_teacher_forcing_feeds_it(speechy: Speechy) -> None:
    torch.manual_seed(2)
    model = DuplexModel(TIMED).eval()
    with torch.no_grad():
        model.text_head.bias[TIMED.word_token("jump") or 0] = 1e3  # say "jump" every frame
    audio = speechy(2, 40, TIMED, seed=6)
    with torch.no_grad():
        codes, text, control, _ = _stepped(model, audio)
    assert (text == TIMED.word_token("jump")).all()
    D = TIMED.feedback_delay_frames
    with torch.no_grad():
        full = model(
            audio, delay(codes, D, TIMED.audio_codes), delay(text, D, PAD), delay(control, D, TIMED.control_classes)
        )
    a, t, c = decide(TIMED, full.audio, full.text, full.control)
    assert torch.equal(a, codes) and torch.equal(t, text) and torch.equal(c, control)
    served = DuplexServed(model)
    step = served.step(served.new_slots(1), audio[:1, : TIMED.frame_samples * 5], slice(0, 1))
    assert served.text_decoder().feed(step.text[0]) == ("jump" * 5, False)


def test_a_timed_model_fine_tunes_from_a_tiny_checkpoint_for_two_steps(corpus: Path, tmp_path: Path) -> None:
    torch.manual_seed(3)
    checkpoint.save(DuplexModel(TINY), tmp_path / "tiny.safetensors")
    s = TrainSettings(
        corpus=corpus, out=tmp_path / "timed.safetensors", preset="tiny-timed", steps=2, batch=2, crop_s=4.0
    )
    result = train(s.model_copy(update={"init": tmp_path / "tiny.safetensors"}), log=lambda _: None)
    assert result["steps"] == 2
    saved = checkpoint.read_config(tmp_path / "timed.safetensors")
    assert (saved.text_words, saved.text_vocab, saved.agenda_words) == (12, 272, 12)
    tuned = torch.load(tmp_path / "timed.state.pt", weights_only=False)["model"]
    assert tuned["text_head.weight"].shape == (272, TIMED.d_model) and torch.isfinite(tuned["text_head.bias"]).all()
    model = checkpoint.load(tmp_path / "timed.safetensors")
    assert isinstance(model, DuplexModel) and model.cfg.text_words == 12
