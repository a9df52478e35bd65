"""Fixtures of the kserve tests (helpers in ``kserve_support``)."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import numpy as np
import pytest
from kserve_support import KServeProc, start_kserve
from serving.conftest import speech  # tests/serving (rootdir-relative like kserve_support's serving.test_cli)

from duplex.model.audio_io import write_wav
from duplex.model.runtime import SHIPPED

__all__ = ["speech"]  # the spoken-question fixture of tests/serving, shared


@pytest.fixture(scope="session")
def kserve_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KServeProc]:
    """Served from a model directory as KServe's storage initializer leaves it: one *.safetensors file."""
    model_dir = tmp_path_factory.mktemp("mnt-models")
    (model_dir / "model.safetensors").symlink_to(SHIPPED / "tiny.safetensors")
    server = start_kserve(f"--model-dir={model_dir}")
    yield server
    try:
        assert server.proc.stop(signal.SIGTERM, deadline_s=60) == 0  # SIGTERM: in-flight work finished, a clean exit
    finally:
        if server.proc.p.poll() is None:
            server.proc.p.kill()
            server.proc.p.wait(timeout=30)


@pytest.fixture(scope="session")
def speech_wav(speech: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The spoken question as the bytes of a 16 kHz PCM16 WAV file."""
    path = tmp_path_factory.mktemp("kserve") / "question.wav"
    write_wav(path, speech, 16000)
    return path.read_bytes()
