"""``session.update``'s ``audio.output.voice``: OpenAI's voice names are accepted and ignored, any other name is
the session's PersonaPlex voice (``SessionStart.voice``), checked here for its form and fixed once started."""

from __future__ import annotations

import pytest

from duplex.serving.realtime.protocol import ClientError, SessionSettings


def voice(name: object) -> dict[str, object]:
    return {"type": "realtime", "audio": {"output": {"voice": name}}}


def test_openai_voices_are_ignored_and_others_kept() -> None:
    s = SessionSettings()
    s.update(voice("alloy"), started=False)
    assert s.voice == "" and "voice" not in s.describe("id", "m")["audio"]["output"]
    s.update(voice("NATF2"), started=False)
    assert s.voice == "NATF2" and s.describe("id", "m")["audio"]["output"]["voice"] == "NATF2"
    s.update({"type": "realtime", "instructions": "Be brief."}, started=False)
    assert s.voice == "NATF2"  # a session.update without a voice keeps it


def test_bad_or_late_voices_name_the_field() -> None:
    s = SessionSettings()
    for bad in (3, "x" * 65):
        with pytest.raises(ClientError, match=r"session\.audio\.output\.voice: must be a voice name") as err:
            s.update(voice(bad), started=False)
        assert err.value.param == "session.audio.output.voice"
    s.update(voice("NATF2"), started=False)
    with pytest.raises(ClientError, match="fixed once the conversation has started"):
        s.update(voice("NATM1"), started=True)
    s.update(voice("NATF2"), started=True)  # the same voice again is no change
    assert s.voice == "NATF2"


def test_temperature_is_checked_and_fixed_once_started() -> None:
    """``session.temperature`` → ``SessionStart.temperature`` (a model that samples per session): a number from
    0 to 5, refused naming the field otherwise, and fixed once the conversation has started."""
    s = SessionSettings()
    assert s.temperature is None
    s.update({"type": "realtime", "temperature": 0}, started=False)
    assert s.temperature == 0.0
    s.update({"type": "realtime", "temperature": 1.25}, started=False)
    s.update({"type": "realtime", "instructions": "x"}, started=False)
    assert s.temperature == 1.25  # an update without it keeps it
    for bad in (-0.5, 5.5, "hot", True, float("inf"), float("nan"), 10**400):
        with pytest.raises(ClientError, match=r"session\.temperature .*: must be a number from 0 \(greedy\) to 5") as e:
            s.update({"type": "realtime", "temperature": bad}, started=False)
        assert e.value.param == "session.temperature"
    assert s.temperature == 1.25
    with pytest.raises(ClientError, match=r"session\.temperature: fixed once the conversation has started"):
        s.update({"type": "realtime", "temperature": 0.5}, started=True)
    s.update({"type": "realtime", "temperature": 1.25}, started=True)  # the same value again is no change
