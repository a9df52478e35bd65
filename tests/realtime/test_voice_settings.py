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
