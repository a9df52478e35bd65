"""A model with word tokens (``ModelConfig.text_words``) served by the engine: its word tokens reach the client
as the words' text in ``TextDelta`` events, through the same path as ``duplex up --checkpoint FILE``."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import torch

from duplex.model import checkpoint
from duplex.model.config import get_preset
from duplex.model.model import DuplexModel
from duplex.model.spec import ModelSource
from duplex.serving import client

from .helpers import served_engine

TIMED = get_preset("tiny-timed")


def test_a_word_token_is_served_as_its_word(tmp_path: Path) -> None:
    torch.manual_seed(7)
    model = DuplexModel(TIMED)
    with torch.no_grad():
        model.text_head.bias[TIMED.word_token("red") or 0] = 1e3  # it says "red" every frame
    checkpoint.save(model, tmp_path / "red.safetensors")
    source = ModelSource(uri=str(tmp_path / "red.safetensors"), preset="tiny-timed")
    chunks = client.split_chunks(np.zeros(TIMED.frame_samples * 2 * 6, dtype=np.int16), TIMED.frame_samples * 2)
    with served_engine(source, max_sessions=2) as served:

        async def talk() -> client.Conversation:
            async with client.channel(served.addr, None) as ch:
                return await client.converse(ch, chunks, chunk_ms=80, realtime=False)

        conv = served.thread.run(talk())
    assert conv.code == grpc.StatusCode.OK, conv.details
    assert [r.event.audio.seq for r in conv.of("audio")] == list(range(6))
    assert "".join(r.event.text.text for r in conv.of("text")) == "red" * 12  # 2 frames a chunk, 6 chunks
