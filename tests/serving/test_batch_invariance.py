"""Batch invariance end to end: one conversation's outputs (audio bytes, text, floor control, turn events) are
bit-identical whether it is served alone or among many other sessions that join at random moments and leave
when they are done — compared in model time over real gRPC, through Envoy and the session picker, on a real
engine."""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from duplex.serving import client
from duplex.serving.spec import EngineSpec

from .conftest import API_KEY, AUTH, Stack, start_stack, stop_stack
from .test_talk import SteppingClock

SR = 16000
CHUNK = 3200
OTHERS = 20


@pytest.fixture(scope="module")
def invariant_stack(tiny_model: Any) -> Iterator[Stack]:
    """Two cohorts of 16 slots: with 21 sessions each step holds a varying crowd, and the witness's slot
    changes as others leave (the block's last member fills the hole)."""
    spec = EngineSpec(
        host="127.0.0.1", metrics_port=0, max_sessions=32, cohorts=2, max_send_backlog=400, batch_invariant=True
    )
    s = start_stack(spec, copy.deepcopy(tiny_model), keys=[API_KEY])
    yield s
    stop_stack(s)


def other_voice(rng: random.Random) -> np.ndarray:
    """A different input per session: a gliding tone in noise, of random length and level."""
    n = rng.randint(8, 40) * CHUNK
    t = np.arange(n) / SR
    f = rng.uniform(120, 900) * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.2, 2) * t))
    x = rng.uniform(0.05, 0.5) * np.sin(2 * np.pi * np.cumsum(f) / SR) + rng.uniform(0, 0.05) * np.random.default_rng(
        rng.randint(0, 2**31)
    ).standard_normal(n)
    return (np.clip(x, -1, 1) * 32767).astype(np.int16)


def outputs(conv: client.Conversation) -> dict[str, Any]:
    """Everything the model produced for the session, keyed by model time (never by arrival)."""
    assert conv.code == grpc.StatusCode.OK, conv.details
    audio = [r.event.audio for r in conv.of("audio")]
    assert not any(a.timing.substituted or a.timing.late for a in audio), "a late chunk would change the input"
    return {
        "audio": [(a.seq, a.output_sample, a.pcm) for a in audio],
        "control": [(a.seq, list(a.control)) for a in audio],
        "text": [(r.event.text.seq, r.event.text.text, r.event.text.final) for r in conv.of("text")],
        "turns": [
            (
                t.event.turn.seq,
                t.event.turn.type,
                t.event.turn.frame,
                t.event.turn.output_sample,
                t.event.turn.truncated_at_sample,
            )
            for t in conv.of("turn")
        ],
    }


async def hold(ch: grpc.aio.Channel, samples: np.ndarray, delay_s: float = 0.0) -> client.Conversation:
    # a stepping clock sends ahead of real time: no chunk is ever late, so each session's input is exactly
    # its samples however loaded the machine is
    return await client.converse(
        ch,
        client.split_chunks(samples, CHUNK),
        metadata=AUTH,
        start_delay_s=delay_s,
        clock=SteppingClock(client.now_us()),
    )


async def test_a_conversation_is_bit_identical_alone_and_among_others(
    invariant_stack: Stack, speech: np.ndarray
) -> None:
    async with grpc.aio.insecure_channel(invariant_stack.front_addr) as ch:
        alone = await hold(ch, speech)
        assert {a.event.audio.timing.batch_size for a in alone.of("audio")} <= {1}, "alone means alone"
        rng = random.Random(9)
        crowd = [hold(ch, other_voice(rng), delay_s=rng.uniform(0, 0.6)) for _ in range(OTHERS)]
        witness, *others = await asyncio.gather(hold(ch, speech, delay_s=0.1), *crowd)
    assert all(o.code == grpc.StatusCode.OK for o in others)
    batch_sizes = [a.event.audio.timing.batch_size for a in witness.of("audio")]
    assert max(batch_sizes) >= 4 and len(set(batch_sizes)) >= 2, f"the crowd never shared steps: {batch_sizes}"
    expected = outputs(alone)
    assert any(pcm for _, _, pcm in expected["audio"]), "the model must speak for the comparison to mean much"
    assert outputs(witness) == expected
