"""``duplex talk --video``: a clip (an MP4 written here with PyAV, or a folder of PNG frames) streamed beside the
audio through a real ``duplex up``; each chunk's ``ChunkTiming`` says which frame the engine fed with it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from duplex.cli import app
from duplex.loadtest.local import LocalUp
from duplex.model.audio_io import write_wav
from duplex.serving.video import ClipError, frame_events, read_clip

SR = 16000
FRAMES = 12
"""Frames of the test clip at 5 fps: 2.4 s, shorter than the 3.2 s of audio, so the last chunks carry none."""


def colour_frames(size: int) -> np.ndarray:
    """Frame i is one flat colour (R = 20·i): each survives compression and scaling recognisably."""
    frames = np.zeros((FRAMES, size, size, 3), np.uint8)
    for i in range(FRAMES):
        frames[i, ..., 0] = 20 * i
        frames[i, ..., 1] = 100
    return frames


def write_mp4(path: Path, frames: np.ndarray, fps: int = 5) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())


def write_pngs(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir()
    for i, f in enumerate(frames):
        with av.open(str(folder / f"{i:03d}.png"), "w") as out:
            stream = out.add_stream("png", rate=1)
            stream.width, stream.height, stream.pix_fmt = f.shape[1], f.shape[0], "rgb24"
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            out.mux(stream.encode())


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with LocalUp(tmp_path_factory.mktemp("up") / "up.log", ["--no-agent"]) as server:
        yield server.address


def test_an_mp4_goes_frame_by_frame_with_the_chunks(up: str, tmp_path: Path) -> None:
    clip, wav, timeline = tmp_path / "clip.mp4", tmp_path / "in.wav", tmp_path / "t.json"
    write_mp4(clip, colour_frames(64))
    write_wav(wav, np.zeros(int(3.2 * SR), np.int16), SR)
    args = ["talk", "--target", up, "--input", str(wav), "--output", str(tmp_path / "o.wav"), "--fast"]
    r = CliRunner().invoke(app, [*args, "--video", str(clip), "--timeline", str(timeline)])
    assert r.exit_code == 0, r.output
    events = json.loads(timeline.read_text())["events"]
    assert events[0]["ready"]["video_size"] == 32
    fed = {int(e["audio"].get("seq", 0)): e["audio"]["timing"] for e in events if "audio" in e}  # 0 is left out
    assert sorted(fed) == list(range(16))
    # chunk k (from k x 200 ms) went with frame k of the 5 fps clip, in order; the 4 chunks after its end with none
    assert [int(fed[k].get("video_seq", 0)) for k in range(FRAMES)] == list(range(FRAMES))
    assert all(fed[k].get("video") is True for k in range(FRAMES))
    assert not any(fed[k].get("video") for k in range(FRAMES, 16))


def test_frames_are_scaled_to_the_server_size_and_follow_the_clip_clock(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    write_pngs(folder, colour_frames(48))
    clip = read_clip(folder, fps=2.5)  # each frame shown for 400 ms: two 200 ms chunks each
    events = frame_events(clip, 30, 200, 32)
    assert [k for k, _ in events] == list(range(2 * FRAMES))
    for k, ev in events:
        v = ev.video
        assert (v.seq, v.width, v.height, len(v.rgb)) == (k, 32, 32, 32 * 32 * 3)
        rgb = np.frombuffer(v.rgb, np.uint8).reshape(32, 32, 3)
        assert int(rgb[..., 0].min()) == int(rgb[..., 0].max()) == 20 * (k // 2)  # PNG is lossless
    assert [k for k, _ in frame_events(clip, 30, 400, 32)] == list(range(FRAMES))


def test_a_corpus_clip_streams_as_it_is(tmp_path: Path) -> None:
    """A ``video.npy`` of an action-count conversation: 5 fps, 32x32 already, each frame exactly as stored."""
    frames = np.random.default_rng(0).integers(0, 256, (FRAMES, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "video.npy", frames)
    events = frame_events(read_clip(tmp_path / "video.npy"), 20, 200, 32)
    assert [k for k, _ in events] == list(range(FRAMES))
    assert all(ev.video.rgb == frames[k].tobytes() for k, ev in events)
    np.save(tmp_path / "grey.npy", frames[..., 0])
    with pytest.raises(ClipError, match=r"expected uint8 RGB frames \(K, H, W, 3\)"):
        read_clip(tmp_path / "grey.npy")


def test_a_bad_clip_is_named(tmp_path: Path) -> None:
    junk = tmp_path / "clip.mp4"
    junk.write_text("not a video\n")
    with pytest.raises(ClipError, match=r"clip\.mp4: not a readable video"):
        read_clip(junk)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ClipError, match=r"no \*\.png frames"):
        read_clip(empty)
    wav = tmp_path / "in.wav"
    write_wav(wav, np.zeros(SR, np.int16), SR)
    r = CliRunner().invoke(
        app,
        [
            "talk",
            "--target",
            "127.0.0.1:1",
            "--input",
            str(wav),
            "--output",
            str(tmp_path / "o.wav"),
            "--video",
            str(junk),
        ],
    )
    assert r.exit_code == 2 and "duplex talk: --video:" in r.stderr and "clip.mp4" in r.stderr
