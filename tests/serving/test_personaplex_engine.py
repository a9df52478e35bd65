"""PersonaPlex through the engine: a checkpoint written by ``duplex model init --family personaplex``, served by
``load_served`` with a default voice and persona (``ModelSource.voice`` / ``persona``), talked to over real gRPC;
a session's voice (``SessionStart.voice``) and persona (its ``instructions``) are prefilled before its first step,
and what it hears equals the same prompt and audio stepped alone on ``MoshiServed``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from moshi_fixtures import FRAME, varied_audio  # first: sets NO_TORCH_COMPILE

from duplex.model.config import ModelError
from duplex.model.moshi.checkpoint import load_checkpoint
from duplex.model.moshi.served import MoshiServed
from duplex.model.moshi.tiny import init_checkpoint
from duplex.model.runtime import load_served
from duplex.model.spec import ModelSource
from duplex.serving import client
from duplex.v1 import duplex_pb2 as pb

from .helpers import Served, served_engine

PERSONA = "You enjoy a good conversation. Your name is Jane."
FRAMES = 6


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = init_checkpoint("personaplex", tmp_path_factory.mktemp("pp") / "personaplex-tiny", seed=3)
    source = ModelSource(uri=str(directory), temperature=0.0, voice="NATF2", persona=PERSONA)
    with served_engine(source, max_sessions=2) as served:
        yield served


def talk(served: Served, audio: torch.Tensor, voice: str = "", instructions: str = "") -> client.Conversation:
    pcm = client.split_chunks((audio * 32767.0).round().to(torch.int16).numpy(), FRAME)
    start = client.start_event(sample_rate=24000, chunk_ms=80, voice=voice, instructions=instructions)

    async def run() -> client.Conversation:
        async with client.channel(served.addr, None) as ch:
            return await client.converse(ch, pcm, chunk_ms=80, start=start, realtime=False)

    return served.thread.run(run(), timeout=300)


def heard(conv: client.Conversation) -> np.ndarray:
    out = {r.event.audio.seq: r.event.audio.pcm for r in conv.of("audio")}
    assert sorted(out) == list(range(FRAMES))
    return np.concatenate([np.frombuffer(out[s], "<i2") if out[s] else np.zeros(FRAME, "<i2") for s in out])


def alone(directory: Path, audio: torch.Tensor, voice: str, persona: str) -> np.ndarray:
    """The same prompt and audio on ``MoshiServed`` directly, one frame a step."""
    served = MoshiServed(load_checkpoint(directory), temperature=0.0)
    state = served.new_slots(1)
    served.prefill(state, 0, served.session_prompt(voice, persona), batch_invariant=True)
    wave = [served.step(state, x[None], slice(0, 1), batch_invariant=True).wave[0] for x in audio.split(FRAME)]
    return (torch.cat(wave) * 32767.0).round().to(torch.int16).numpy()


def test_sessions_hear_the_default_or_their_own_voice_and_persona(served: Served) -> None:
    audio = varied_audio(1, FRAMES, seed=4)[0]
    default = talk(served, audio)
    own = talk(served, audio, voice="VARM1", instructions="Talk about the weather.")
    for conv in (default, own):
        assert conv.code == grpc.StatusCode.OK, conv.details
    assert np.array_equal(heard(default), alone(served.directory, audio, "NATF2", PERSONA))
    assert np.array_equal(heard(own), alone(served.directory, audio, "VARM1", "Talk about the weather."))
    assert not np.array_equal(heard(default), heard(own))
    count = served.engine.metrics.registry.get_sample_value("duplex_engine_prompt_prefill_seconds_count")
    assert count is not None and count >= 2


def test_bad_voice_or_persona_is_refused_naming_the_field(served: Served) -> None:
    audio = varied_audio(1, 1, seed=5)[0]
    conv = talk(served, audio, voice="NOPE")
    assert conv.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "start.voice: voice 'NOPE': not a voice of personaplex-tiny (voices: NATF0" in conv.details
    conv = talk(served, audio, voice="NATF0 " * 20)
    assert conv.code == grpc.StatusCode.INVALID_ARGUMENT and "start.voice: longer than 64 characters" in conv.details
    # the replica goes on serving
    assert talk(served, audio).code == grpc.StatusCode.OK


def test_model_level_voice_and_persona_are_checked_at_load(served: Served, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"model.voice / model.persona: voice 'NOPE': not a voice"):
        load_served(ModelSource(uri=str(served.directory), voice="NOPE"), device="cpu")
    moshi = init_checkpoint("moshi", tmp_path / "moshi", seed=1)
    with pytest.raises(ModelError, match="the moshi family takes no voice or persona"):
        load_served(ModelSource(uri=str(moshi), persona=PERSONA), device="cpu")
    with pytest.raises(ModelError, match=r"model\.voice / model\.persona apply to PersonaPlex"):
        load_served(ModelSource(family="duplex", voice="NATF0"), device="cpu")


def test_plain_moshi_refuses_a_voice(tmp_path: Path) -> None:
    from duplex.serving.engine.validate import InputError, check_start

    served = load_served(ModelSource(uri=str(init_checkpoint("moshi", tmp_path / "m", seed=2))), device="cpu")
    start = pb.SessionStart(voice="NATF0")
    with pytest.raises(InputError, match=r"start.voice 'NATF0': the moshi family takes no voice"):
        check_start(start, served, "m", 80, [])


def test_up_flags_set_the_default_voice_and_persona(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import typer

    from duplex.serving.cli import _up_source

    source = _up_source(tmp_path, "personaplex", None, None, voice="NATF2", persona=PERSONA)
    assert (source.family, source.voice, source.persona) == ("personaplex", "NATF2", PERSONA)
    with pytest.raises(typer.Exit) as err:
        _up_source(tmp_path, "personaplex", None, None, voice="", persona="x" * 4097)
    assert err.value.exit_code == 2 and "persona" in capsys.readouterr().err
