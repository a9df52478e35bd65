"""The model-initiated tool-call syntax: a pure incremental parser, fed text split anywhere."""

from __future__ import annotations

import json

import pytest

from duplex.serving.agent.toolcall import ToolCall, ToolCallParser, result_text

TEXT = (
    'Let me check. [[call calculator {"expression": "(2 + 3) * 4"}]] and the time '
    '[[call clock {"timezone": "Europe/Paris", "note": "]] } { [[call x {} \\" ]]"}]] done.'
)
WANT = [
    ToolCall("m1", "calculator", '{"expression": "(2 + 3) * 4"}'),
    ToolCall("m2", "clock", '{"timezone": "Europe/Paris", "note": "]] } { [[call x {} \\" ]]"}'),
]


def feed_all(parser: ToolCallParser, pieces: list[str]) -> list[ToolCall]:
    return [c for p in pieces for c in parser.feed(p)]


def test_whole_text() -> None:
    assert ToolCallParser().feed(TEXT) == WANT


def test_split_at_every_position() -> None:
    for i in range(len(TEXT) + 1):
        for j in range(i, len(TEXT) + 1, 7):
            assert feed_all(ToolCallParser(), [TEXT[:i], TEXT[i:j], TEXT[j:]]) == WANT, (i, j)


def test_one_character_at_a_time_and_unicode() -> None:
    text = 'héllo [[call calculator {"expression": "1+1", "n": "ünï ✓"}]]'
    assert feed_all(ToolCallParser(), list(text)) == [
        ToolCall("m1", "calculator", '{"expression": "1+1", "n": "ünï ✓"}')
    ]
    assert json.loads(WANT[1].arguments_json)["note"] == ']] } { [[call x {} " ]]'


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[[call Calc {}]]", "tool name expected"),
        ("[[call calculator{}]]", "expected a space after tool name 'calculator'"),
        ("[[call calculator [1]]]", "expected a JSON object"),
        ('[[call calculator {"a": 1} ]]', "expected ']]' after the arguments"),
        ('[[call calculator {"a": 1}]', None),  # incomplete: waits for more
        ('[[call calculator {"a": tru}]]', "arguments are not valid JSON"),
        ('[[call calculator {"a": 1]]]', "arguments are not valid JSON"),
    ],
)
def test_malformed_calls_are_reported(text: str, error: str | None) -> None:
    parser = ToolCallParser()
    calls = parser.feed(text)
    if error is None:
        assert calls == []
        return
    assert len(calls) == 1 and calls[0].error is not None and error in calls[0].error
    # parsing resumes: a good call after the bad one is found
    assert parser.feed(" ok [[call clock {}]]") == [ToolCall("m2", "clock", "{}")]


def test_buffer_is_bounded() -> None:
    parser = ToolCallParser(max_call_chars=64)
    calls = parser.feed('[[call calculator {"expression": "' + "1+" * 100)
    assert [c.error for c in calls] == ["call longer than 64 characters"]
    assert len(parser._buf) <= 64
    for _ in range(1000):  # text without calls keeps nothing but a possible marker prefix
        assert parser.feed("plain words [[ca") == []
    assert parser._buf == "[[ca"


def test_result_text() -> None:
    assert result_text("m1", "calculator", "DONE", "20") == '[[result m1 calculator DONE "20"]]'
    text = result_text("c7", "http_get", "FAILED", 'url: "x" ]] refused\n')
    assert text == '[[result c7 http_get FAILED "url: \\"x\\" ]] refused\\n"]]'
    # the detail is a JSON string: it reads back exactly
    assert json.loads(text[len("[[result c7 http_get FAILED ") : -2]) == 'url: "x" ]] refused\n'
