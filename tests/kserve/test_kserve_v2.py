"""V2 inference through KServe's own ModelServer (``duplex kserve``) and the SDK's own REST and gRPC clients."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from kserve import InferenceGRPCClient, InferInput, InferRequest, InferResponse
from kserve_support import MODEL, KServeProc, rest_client

from duplex.serving.kserve import tensors

SHORT = {"trailing_silence_ms": 400}
"""Bad-input checks and the witness need no long answer."""


def audio_request(wav: bytes, params: dict[str, Any] | None = None, raw: bool = False) -> InferRequest:
    """The ``audio`` tensor: the file as base64 text (REST and gRPC), or its own bytes (``raw``, gRPC only)."""
    tensor = InferInput("audio", [1], "BYTES")
    element = wav if raw else base64.b64encode(wav)
    tensor.set_data_from_numpy(np.array([element], dtype=np.object_), binary_data=True)
    return InferRequest(model_name=MODEL, infer_inputs=[tensor], parameters=params)


async def rest_infer(server: KServeProc, request: InferRequest) -> InferResponse:
    async with rest_client() as client:
        response = await client.infer(server.base_url, request, model_name=MODEL)
    assert isinstance(response, InferResponse)
    return response


async def grpc_infer(server: KServeProc, request: InferRequest) -> InferResponse:
    async with InferenceGRPCClient(server.grpc_url, timeout=120, retries=0) as client:
        response: InferResponse = await client.infer(request)
    return response


def outputs(response: InferResponse) -> tuple[np.ndarray, str, list[dict[str, Any]]]:
    """(audio int16, text, turn events as dicts) of a response."""
    by_name = {o.name: o for o in response.outputs}
    assert set(by_name) == {"audio", "text", "turn_events"}
    audio = by_name["audio"].as_numpy().astype(np.int16)
    text_items = by_name["text"].as_numpy().reshape(-1)
    text = text_items[0].decode() if isinstance(text_items[0], bytes) else str(text_items[0])
    turns = [json.loads(t) for t in by_name["turn_events"].as_numpy().reshape(-1)]
    return audio, text, turns


async def test_live_ready_and_metadata(kserve_server: KServeProc) -> None:
    async with rest_client() as client:
        assert await client.is_server_live(kserve_server.base_url)
        assert await client.is_server_ready(kserve_server.base_url)
        assert await client.is_model_ready(kserve_server.base_url, MODEL)
    async with InferenceGRPCClient(kserve_server.grpc_url, timeout=30, retries=0) as g:
        assert await g.is_server_ready()
        assert await g.is_model_ready(MODEL)
    async with httpx.AsyncClient() as http:
        meta = (await http.get(f"{kserve_server.base_url}/v2/models/{MODEL}")).json()
    assert meta["name"] == MODEL
    assert meta["inputs"] == tensors.INPUTS
    assert meta["outputs"] == tensors.OUTPUTS


async def test_infer_speech_rest_and_grpc_agree(kserve_server: KServeProc, speech_wav: bytes) -> None:
    request = audio_request(speech_wav)
    rest = await rest_infer(kserve_server, request)
    audio, text, turns = outputs(rest)
    said = len(speech_wav) // 2  # 16-bit samples, header aside
    chunk = 3200
    assert audio.size >= said and audio.size % chunk == 0
    assert rest.parameters is not None and rest.parameters["sample_rate"] == 16000
    assert np.abs(audio).max() > 1000, "the model's answer has sound in it"
    assert text, "the model wrote text"
    kinds = [t["type"] for t in turns]
    assert "MODEL_TURN_START" in kinds
    start = next(t for t in turns if t["type"] == "MODEL_TURN_START")
    assert start["time_s"] == pytest.approx(start["output_sample"] / 16000)
    # the file's own bytes over V2 gRPC: batch-invariant engine, so the very same answer
    g_audio, g_text, g_turns = outputs(await grpc_infer(kserve_server, audio_request(speech_wav, raw=True)))
    assert np.array_equal(g_audio, audio) and g_text == text and g_turns == turns


async def test_json_base64_body_and_pcm_input(kserve_server: KServeProc, speech_wav: bytes) -> None:
    """A plain JSON body (base64 WAV, what curl sends) and an INT16 ``pcm`` tensor give the same answer."""
    body = {
        "inputs": [
            {"name": "audio", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(speech_wav).decode()]}
        ],
        "parameters": SHORT,
    }
    async with httpx.AsyncClient(timeout=120) as http:
        r = await http.post(f"{kserve_server.base_url}/v2/models/{MODEL}/infer", json=body)
    assert r.status_code == 200, r.text
    from_json = np.array(next(o for o in r.json()["outputs"] if o["name"] == "audio")["data"], dtype=np.int16)
    samples = np.frombuffer(speech_wav[44:], dtype="<i2")
    pcm = InferInput("pcm", [samples.size], "INT16")
    pcm.set_data_from_numpy(samples.copy(), binary_data=True)
    audio, _, _ = outputs(await rest_infer(kserve_server, InferRequest(MODEL, [pcm], parameters=SHORT)))
    assert np.array_equal(audio, from_json)


def _text_audio(text: str) -> InferInput:
    tensor = InferInput("audio", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([text.encode()], dtype=np.object_), binary_data=True)
    return tensor


def bad_requests(wav: bytes) -> list[tuple[str, InferRequest, str]]:
    """(case, request, a word the error must name)."""
    fp32 = InferInput("audio", [1], "FP32")
    fp32.set_data_from_numpy(np.array([1.0], dtype=np.float32), binary_data=True)
    pcm_fp = InferInput("pcm", [4], "FP32")
    pcm_fp.set_data_from_numpy(np.zeros(4, np.float32), binary_data=True)
    other = InferInput("video", [1], "INT16")
    other.set_data_from_numpy(np.zeros(1, np.int16), binary_data=True)
    return [
        ("wrong datatype", InferRequest(MODEL, [fp32]), "`audio`: datatype must be BYTES"),
        ("pcm as floats", InferRequest(MODEL, [pcm_fp]), "`pcm`: datatype must be INT16"),
        ("unknown tensor", InferRequest(MODEL, [other]), "`video`: unknown tensor"),
        ("garbage wav", audio_request(b"RIFF this is not a wave file at all"), "`audio`: the audio bytes"),
        ("not base64", InferRequest(MODEL, [_text_audio("no base64 here!")]), "`audio`: expected"),
        ("bad parameter", audio_request(wav, {"trailing_silence_ms": -5}), "trailing_silence_ms"),
    ]


async def test_bad_input_is_a_400_naming_it_and_the_server_goes_on(
    kserve_server: KServeProc, speech_wav: bytes
) -> None:
    async with rest_client() as client:
        for case, request, named in bad_requests(speech_wav):
            with pytest.raises(httpx.HTTPStatusError) as e:
                await client.infer(kserve_server.base_url, request, model_name=MODEL)
            assert e.value.response.status_code == 400, case
            assert named in e.value.response.text, (case, e.value.response.text)
        async with httpx.AsyncClient() as http:  # no input tensor at all
            r = await http.post(f"{kserve_server.base_url}/v2/models/{MODEL}/infer", json={"inputs": []})
        assert r.status_code == 400 and "exactly one of `audio`" in r.text
    for case, request, named in bad_requests(speech_wav)[:3]:  # the same refusals over gRPC
        with pytest.raises(grpc.RpcError) as g:
            await grpc_infer(kserve_server, request)
        assert g.value.code() == grpc.StatusCode.INVALID_ARGUMENT and named in str(g.value.details()), case
    audio, _, _ = outputs(await rest_infer(kserve_server, audio_request(speech_wav, SHORT)))
    assert audio.size > 0  # the next request is served


async def test_concurrent_requests_share_steps(kserve_server: KServeProc, speech_wav: bytes) -> None:
    alone = await rest_infer(kserve_server, audio_request(speech_wav))
    assert alone.parameters is not None and alone.parameters["max_batch_size"] == 1
    both = await asyncio.gather(*(rest_infer(kserve_server, audio_request(speech_wav)) for _ in range(2)))
    async with httpx.AsyncClient() as http:  # the engine's own step metrics saw a step of two sessions
        scrape = (await http.get(f"http://127.0.0.1:{kserve_server.metrics_port}/metrics")).text
    two = re.search(r'duplex_engine_step_batch_rows_bucket\{le="2\.0"\} (\S+)', scrape)
    one = re.search(r'duplex_engine_step_batch_rows_bucket\{le="1\.0"\} (\S+)', scrape)
    assert two and one and float(two[1]) > float(one[1]), scrape[-2000:]
    for r in both:
        assert r.parameters is not None and r.parameters["max_batch_size"] == 2  # batched with each other
        audio, text, turns = outputs(r)
        a_audio, a_text, a_turns = outputs(alone)
        assert np.array_equal(audio, a_audio) and text == a_text and turns == a_turns
