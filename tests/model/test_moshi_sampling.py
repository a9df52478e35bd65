"""Per-session sampling in ``MoshiServed`` (``model/moshi/sampling.py``): each slot samples with its own
temperature and top-k. A greedy session stepped among sampled ones (in blocks, moved, paused) equals itself
alone, token for token and sample for sample; sampled sessions really sample; the settings move and reset with
the slot; bad settings are refused naming the field."""

from __future__ import annotations

import pytest
import torch
from moshi_fixtures import tiny_checkpoint, varied_audio  # first: sets NO_TORCH_COMPILE before moshi is imported
from test_moshi_served import Cohort, run_alone

from duplex.model.config import ModelError
from duplex.model.moshi.checkpoint import MoshiCheckpoint
from duplex.model.moshi.sampling import RowSampler, RowSampling
from duplex.model.moshi.served import MoshiServed


@pytest.fixture(scope="module")
def ckpt() -> MoshiCheckpoint:
    return tiny_checkpoint()


def sampled_block(served: MoshiServed, greedy: RowSampling | None, sampled: RowSampling | None) -> Cohort:
    """Sessions in two 3-slot blocks: ``g`` with ``greedy`` settings (None = the engine's), the others with
    ``sampled`` ones (None = the engine's); ``g`` pauses once and moves to the other block halfway."""
    co = Cohort(served, slots=6, chunk_frames=2)
    plan = {"s0": (0, 11), "g": (1, 12), "s1": (2, 13), "s2": (4, 14)}
    for name, (slot, seed) in plan.items():
        co.join(name, slot, varied_audio(1, 2 * 10, seed=seed)[0])
        settings = greedy if name == "g" else sampled
        if settings is not None:
            served.set_sampling(co.state, slot, settings)
    torch.manual_seed(5)
    for c in range(10):
        if c == 5:
            co.move("g", 5)
            co.move("s2", 1)
        paused = frozenset({"g"}) if c == 3 else frozenset()
        co.step(slice(0, 3), paused, seed=100 + c)
        co.step(slice(3, 6), paused, seed=200 + c)
    return co


@pytest.mark.parametrize("engine_temperature", [0.0, 1.0])
def test_a_greedy_session_among_sampled_ones_equals_itself_alone(
    ckpt: MoshiCheckpoint, engine_temperature: float
) -> None:
    """Engine greedy with sampled sessions around, and engine sampled with one session asking for greedy."""
    served = MoshiServed(ckpt, temperature=engine_temperature, top_k=10)
    greedy = None if engine_temperature == 0 else served.sampling_for(0.0, None)
    sampled = served.sampling_for(1.5, 20) if engine_temperature == 0 else None
    co = sampled_block(served, greedy, sampled)
    assert len(co.trace["g"].wave) == 9
    co.trace["g"].assert_equal(run_alone(ckpt, co.session_audio("g"), 2), "greedy session among sampled ones")
    differs = 0
    for name in ("s0", "s1", "s2"):
        alone = run_alone(ckpt, co.session_audio(name), 2)
        differs += co.trace[name].text != alone.text
    assert differs == 3, "every sampled neighbour sampled (its text differs from its greedy run)"


def test_settings_move_and_reset_with_the_slot(ckpt: MoshiCheckpoint) -> None:
    served = MoshiServed(ckpt, temperature=0.8, top_k=250)
    slots = served.new_slots(4)
    assert slots.sampling == [RowSampling(0.8, 250)] * 4
    own = served.sampling_for(0.0, 7)
    assert own == RowSampling(0.0, 7)
    assert served.sampling_for(None, 9) == RowSampling(0.8, 9)
    assert served.sampling_for(1.2, None) == RowSampling(1.2, 250)
    served.set_sampling(slots, 1, own)
    slots.move(1, 3)  # src never stepped: dst becomes a fresh stream with src's settings
    assert slots.sampling[3] == own and slots.sampling[1] == own
    served.step(slots, torch.zeros(4, 1920), slice(0, 4))
    slots.reset(1)
    assert slots.sampling[1] == RowSampling(0.8, 250)
    slots.move(3, 0)  # a stepped slot, within its block
    assert slots.sampling[0] == own


@pytest.mark.parametrize(
    ("temperature", "top_k", "message"),
    [
        (-0.1, None, r"^temperature -0\.1: must be from 0 \(greedy\) to 5"),
        (float("nan"), None, r"^temperature nan: must be from 0"),
        (5.5, None, r"^temperature 5\.5: must be from 0"),
        (None, 0, r"^top_k 0: must be from 1 to the model's \d+ audio codes"),
        (None, 100_000, r"^top_k 100000: must be from 1"),
    ],
)
def test_bad_settings_name_the_field(
    ckpt: MoshiCheckpoint, temperature: float | None, top_k: int | None, message: str
) -> None:
    served = MoshiServed(ckpt)
    with pytest.raises(ModelError, match=message):
        served.sampling_for(temperature, top_k)


def test_the_sampler_samples_each_row_with_its_own_settings() -> None:
    """Rows' settings, on logits whose argmax is code 0: greedy rows and top-1 rows always give it; a hot row
    over all codes gives others; the text call (after ``text_next``) uses the text top-k instead."""
    card, n = 16, 200
    logits = torch.zeros(4, 1, 1, card)
    logits[..., 0] = 1.0
    rows = [RowSampling(0.0, card), RowSampling(5.0, 1), RowSampling(5.0, card), RowSampling(5.0, card)]
    sampler = RowSampler(rows, top_k_text=1)
    torch.manual_seed(0)
    audio = torch.stack([sampler(logits, False, 1.0, 250)[:, 0, 0] for _ in range(n)])
    assert audio.shape == (n, 4)
    assert bool((audio[:, :2] == 0).all()), "greedy and top-1 rows take the argmax"
    assert bool((audio[:, 2:] != 0).any(dim=0).all()), "hot rows over every code sample other codes"
    text = []
    for _ in range(n):
        sampler.text_next(logits)
        text.append(sampler(logits, False, 1.0, 25)[:, 0, 0])
    assert bool((torch.stack(text) == 0).all()), "text uses the text top-k (1 here) for every row"
    with pytest.raises(RuntimeError, match="sampling 3 rows with settings for 4"):
        sampler(logits[:3])
