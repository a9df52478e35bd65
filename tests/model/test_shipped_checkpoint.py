"""The reference checkpoint this repository ships: it loads as the serving default and takes turns on
held-out conversations in voices it never heard in training."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from duplex.model import checkpoint
from duplex.model.codec import Codec
from duplex.model.config import get_preset
from duplex.model.corpus.conversation import Timing
from duplex.model.corpus.make import make_corpus
from duplex.model.data import load_split
from duplex.model.evaluate import run_model, score
from duplex.model.model import DuplexModel
from duplex.model.runtime import SHIPPED, load_part
from duplex.model.spec import ModelSource

SHIPPED_TINY = SHIPPED / "tiny.safetensors"


def test_shipped_checkpoint_is_small_and_is_the_serving_default(caplog: pytest.LogCaptureFixture) -> None:
    assert SHIPPED_TINY.is_file()
    assert SHIPPED_TINY.stat().st_size <= 20 * 1024 * 1024
    assert checkpoint.read_config(SHIPPED_TINY) == get_preset("tiny")
    meta = checkpoint.read_metadata(SHIPPED_TINY)
    assert "train_settings" in meta and "validation" in meta  # how it was made travels with it
    with caplog.at_level(logging.WARNING):
        model = load_part(ModelSource())
    assert isinstance(model, DuplexModel)
    assert "RANDOM weights" not in caplog.text


@pytest.fixture(scope="module")
def unseen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Conversations never used for training: seed 99 was never a training seed; the test split speaks in espeak-ng
    variants no training corpus uses, the heldout split in Flite, a TTS engine no training corpus uses."""
    corpus = tmp_path_factory.mktemp("unseen") / "corpus"
    make_corpus(
        corpus,
        9,
        seed=99,
        workers=2,
        min_duration_s=30,
        max_duration_s=40,
        validation_fraction=0.0,
        test_fraction=0.45,
        heldout_fraction=0.45,
        timing=Timing(reply_gap=(0.0, 0.08), barge_reaction=(0.06, 0.12)),
    )
    return corpus


@pytest.mark.parametrize("split", ["test", "heldout"])
def test_shipped_checkpoint_takes_turns_on_unseen_voices_and_an_unseen_tts_engine(unseen: Path, split: str) -> None:
    convs = load_split(unseen, split)
    manifest = json.loads((unseen / "manifest.json").read_text())
    engines = {e["user_voice"]["engine"] for e in manifest["conversations"] if e["split"] == split}
    assert engines == ({"flite"} if split == "heldout" else {"espeak-ng"})
    model = load_part(ModelSource())
    assert isinstance(model, DuplexModel)
    m = score("shipped", convs, run_model(model, Codec(model.cfg), convs))
    assert m.turns >= 8
    # loose bounds for a handful of conversations; the full figures are in docs/model-card.md
    assert m.tor >= 0.75
    assert m.latency_p50 is not None and m.latency_p50 <= 0.6
    assert m.false_takeover <= 0.35
    assert m.overlap <= 0.25
