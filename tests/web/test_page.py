"""The page in a real browser: ``duplex up --http-port 0`` serves it, Debian's Chromium (headless, driven by
Playwright) opens it with a WAV of espeak-ng speech as its microphone, and the page must connect, play model
audio with sound in it, show turn events and a latency figure, and show a background-agent job it asked for
with its result. A screenshot is saved.

Chromium's fake capture device loops the WAV for as long as the page listens: the question, 3 s of silence,
the question again, … So the page hears the question repeatedly; the test waits for the first turn that has a
latency figure (the model answering into a silence) and does not depend on what happens on later loops (the
repeated question may barge in on the model's answer, which the page then cuts)."""

from __future__ import annotations

import signal
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from duplex.loadtest.local import LocalUp
from duplex.model.audio_io import read_wav, write_wav

CHROMIUM = "/usr/bin/chromium"
WAV_RATE = 48000  # a rate a real microphone gives the page, so its worklet resamples 48 kHz → 24 kHz
DEADLINE_MS = 180_000  # the page's first answered turn, on a shared 2-core machine (a deadline, not a figure)

# The page's state, through its read-only window.duplexStats: connected, audible model audio played, and a
# turn with a latency figure.
PAGE_DONE = """() => {
  const s = window.duplexStats;
  return s.connected && s.samplesPlayed > 0 && s.peakPlayed > 0.02 && s.turns.some((t) => t.latency_s !== null);
}"""


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spoken question (espeak-ng) and 3 s of silence at 48 kHz: the page's microphone, looped by Chromium."""
    d = tmp_path_factory.mktemp("mic")
    raw = d / "raw.wav"
    subprocess.run(
        ["espeak-ng", "-v", "en-us", "-w", str(raw), "Hello, could you tell me what time it is?"], check=True
    )
    said = read_wav(raw, WAV_RATE, mono=True).samples
    path = d / "question.wav"
    write_wav(path, np.concatenate([said, np.zeros(3 * WAV_RATE, np.int16)]), WAV_RATE)
    return path


def browser_args(wav: Path) -> list[str]:
    return [
        "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
        "--autoplay-policy=no-user-gesture-required",
    ]


def talk_on_the_page(page: Page, url: str) -> dict[str, Any]:
    """Opens the page, presses Start and waits (a deadline, polled by Playwright) for an answered turn."""
    page.goto(url)
    page.click("#start")
    try:
        page.wait_for_function(PAGE_DONE, timeout=DEADLINE_MS, polling=250)
    except PlaywrightTimeout as e:
        stats = page.evaluate("() => JSON.stringify(window.duplexStats)")
        raise AssertionError(f"the page did not answer a turn in time: {stats}") from e
    stats: dict[str, Any] = page.evaluate("() => JSON.parse(JSON.stringify(window.duplexStats))")
    return stats


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (checked by its CRC)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR"
    body = data[16 : 16 + length]
    assert struct.unpack(">I", data[16 + length : 20 + length])[0] == zlib.crc32(kind + body)
    width, height = struct.unpack(">II", body[:8])
    return width, height


def test_page_talks_plays_and_shows_latency(question_wav: Path, tmp_path: Path) -> None:
    up = LocalUp(tmp_path / "up.log", ["--http-port", "0"])
    up.start()
    try:
        url = up.wait_for(r"(http://127\.0\.0\.1:\d+/)").group(1)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=browser_args(question_wav))
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 800})
                stats = talk_on_the_page(page, url)

                assert stats["connected"]
                assert stats["errors"] == []
                assert stats["samplesPlayed"] > 0 and stats["peakPlayed"] > 0.02  # model audio, with sound in it
                answered = [t for t in stats["turns"] if t["latency_s"] is not None]
                first = answered[0]
                # The figure is the first model audio played minus the user's end of speech, both on the page's
                # capture clock: positive, and shorter than one loop of the microphone file.
                assert first["first_audio_s"] - first["end_of_speech_s"] == pytest.approx(first["latency_s"])
                assert 0 < first["latency_s"] < read_wav(question_wav).samples.size / WAV_RATE
                assert stats["events"] > 0

                # What the user sees: a turn row with its latency, and the turn events in the log.
                shown = page.locator("#turns td.latency[data-latency]").first.inner_text()
                assert shown.endswith(" s") and float(shown.removesuffix(" s")) == pytest.approx(
                    first["latency_s"], abs=5e-4
                )
                log = page.locator("#events").inner_text()
                assert "speech_stopped" in log or "speech_started" in log
                assert "connected" in page.locator("#status").inner_text()

                # The background agent from the page: a clock job (a function_call item), its result shown.
                page.select_option("#agent-tool", "clock")
                page.click("#agent-run")
                page.wait_for_function(
                    "() => window.duplexStats.agentResults.some((r) => r.call_id === 'c1')", timeout=60_000
                )
                result = page.evaluate("() => window.duplexStats.agentResults.find((r) => r.call_id === 'c1')")
                assert result["output"] and not result["output"].startswith('{"error"'), result
                log = page.locator("#events").inner_text()
                assert "agent call c1: clock({})" in log and f"agent result c1: {result['output']}" in log

                shot = tmp_path / "page.png"
                page.screenshot(path=str(shot))
                width, height = png_size(shot)
                assert (width, height) == (1200, 800)
                assert shot.stat().st_size > 20_000  # drawn waveforms and tables, not a blank page

                # Stop: the page closes its socket (normal closure) and says so; a new Start may follow.
                page.click("#stop")
                page.wait_for_function("() => !window.duplexStats.connected", timeout=10_000)
                assert page.locator("#status").inner_text().startswith("closed (code 1000")
                assert page.locator("#start").is_enabled()
            finally:
                browser.close()
    finally:
        code = up.stop(signal.SIGINT)
    assert code == 0


# The capture worklet's resampler, run in Chromium itself: the worklet module evaluated with the two globals
# an AudioWorkletGlobalScope provides stubbed (nothing of it is rewritten), fed a tone 128 samples at a time
# as the audio thread would.
RESAMPLE_TONE = """([source, rateIn, hz]) => {
  const scope = { registerProcessor: () => {}, AudioWorkletProcessor: class {}, sampleRate: rateIn };
  const module = new Function(...Object.keys(scope), source + '; return SincResampler;');
  const SincResampler = module(...Object.values(scope));
  const r = new SincResampler(rateIn, 24000);
  const out = [];
  const block = new Float32Array(128);
  let fed = 0;
  for (let n = 0; n < rateIn; n += 128, fed += 128) {
    for (let i = 0; i < 128; i++) block[i] = 0.5 * Math.sin((2 * Math.PI * hz * (n + i)) / rateIn);
    out.push(...r.push(block));
  }
  const settled = out.slice(2400, out.length - 2400);  // away from the start-up ramp
  let power = 0, cross = 0;
  for (let i = 0; i < settled.length; i++) {
    power += settled[i] * settled[i];
    if (i > 0 && settled[i - 1] < 0 && settled[i] >= 0) cross++;
  }
  return { fed, n: out.length, rms: Math.sqrt(power / settled.length), hz: (cross * 24000) / settled.length };
}"""


@pytest.mark.parametrize("rate_in", [48000, 44100, 16000])
def test_capture_resampler_keeps_speech_and_rejects_what_would_alias(rate_in: int) -> None:
    source = (Path(__file__).parents[2] / "serving/web/static/capture-worklet.js").read_text()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            kept = page.evaluate(RESAMPLE_TONE, [source, rate_in, 1000])
            # A second in, a second out (less the kernel's half-width, still waiting for input).
            expected = kept["fed"] * 24000 / rate_in
            assert expected - 40 <= kept["n"] <= expected
            assert kept["rms"] == pytest.approx(0.5 / np.sqrt(2), rel=0.01)  # a 1 kHz tone passes at its level…
            assert kept["hz"] == pytest.approx(1000, rel=0.01)  # …and at its pitch
            if rate_in > 24000:
                # 18 kHz is above the output's Nyquist (12 kHz): kept, it would fold down to 6 kHz. It must go.
                folded = page.evaluate(RESAMPLE_TONE, [source, rate_in, 18000])
                assert folded["rms"] < 0.5 / np.sqrt(2) * 1e-3  # below -60 dB
        finally:
            browser.close()
