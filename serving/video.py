"""``duplex talk --video CLIP``: a clip (an MP4 or other file FFmpeg reads, through PyAV; a folder of PNG frames
or a ``video.npy`` of ``duplex corpus make --task action-count``, both at a stated frame rate) as the
``VideoFrame`` that goes with each audio chunk.

Chunk k (captured from k × chunk_ms) carries the frame shown at its start: the last frame whose presentation
time is at or before it. A chunk after the clip's end (the last frame's time plus one frame period) carries
none. Frames are scaled to the server's ``SessionReady.video_size`` (area averaging) and sent as RGB bytes,
``VideoFrame.seq`` = the chunk's seq, right before the chunk's audio.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from duplex.v1 import duplex_pb2 as pb

if TYPE_CHECKING:
    import av


class ClipError(ValueError):
    """The clip cannot be read; the message names the file and why."""


@dataclass(frozen=True)
class Clip:
    frames: list[av.VideoFrame]
    """PyAV ``VideoFrame``s in presentation order."""
    times_s: npt.NDArray[np.float64]
    """Presentation time of each frame, seconds from the clip's first."""
    period_s: float
    """One frame's duration (the stream's average, or 1 / ``--video-fps`` for a folder)."""

    @property
    def end_s(self) -> float:
        return float(self.times_s[-1]) + self.period_s


def read_clip(path: Path, fps: float = 5.0) -> Clip:
    """The clip at ``path``: a folder of ``*.png`` frames (sorted by name) or a ``.npy`` array of uint8 RGB frames
    (K, H, W, 3), both ``fps`` frames per second, or a video file (its own timestamps). ClipError naming what is
    wrong."""
    import av

    if fps <= 0:
        raise ClipError(f"--video-fps {fps}: must be above 0")
    if path.suffix == ".npy":
        return _npy_clip(path, fps)
    try:
        if path.is_dir():
            files = sorted(path.glob("*.png"))
            if not files:
                raise ClipError(f"{path}: a folder with no *.png frames")
            frames: list[av.VideoFrame] = []
            for f in files:
                with av.open(str(f)) as container:
                    frames.append(next(container.decode(video=0)))
            return Clip(frames, np.arange(len(frames)) / fps, 1.0 / fps)
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ClipError(f"{path}: no video stream")
            stream = container.streams.video[0]
            decoded = [f for f in container.decode(stream) if f.time is not None]
            rate = stream.average_rate
    except (av.FFmpegError, OSError, StopIteration) as e:
        raise ClipError(f"{path}: not a readable video or PNG frame ({e})") from None
    if not decoded:
        raise ClipError(f"{path}: no frames")
    times = np.array([float(f.time) for f in decoded])
    period = 1.0 / float(rate) if rate else float(np.median(np.diff(times))) if len(times) > 1 else 0.2
    return Clip(list(decoded), times - times[0], period)


def _npy_clip(path: Path, fps: float) -> Clip:
    import av

    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ClipError(f"{path}: not a numpy array file ({e})") from None
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[3] != 3 or not len(array):
        raise ClipError(f"{path}: {array.dtype} {array.shape}, expected uint8 RGB frames (K, H, W, 3)")
    frames = [av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24") for f in array]
    return Clip(frames, np.arange(len(frames)) / fps, 1.0 / fps)


def frame_events(clip: Clip, chunks: int, chunk_ms: int, size: int) -> list[tuple[int, pb.ClientEvent]]:
    """(chunk index, ``VideoFrame``) for each of ``chunks`` chunks the clip covers: the frame shown at the chunk's
    start, scaled to ``size`` × ``size`` (at its own size when ``size`` is 0: the server then refuses it)."""
    out = []
    cache: dict[int, bytes] = {}
    for k in range(chunks):
        t = k * chunk_ms / 1000
        if t >= clip.end_s - 1e-9:
            break
        i = int(np.searchsorted(clip.times_s, t + 1e-9, side="right")) - 1
        if i < 0:
            continue
        frame = clip.frames[i]
        w = size or frame.width
        h = size or frame.height
        if i not in cache:
            rgb = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA")
            cache[i] = np.ascontiguousarray(rgb.to_ndarray()).tobytes()
        out.append((k, pb.ClientEvent(video=pb.VideoFrame(seq=k, rgb=cache[i], width=w, height=h))))
    return out
