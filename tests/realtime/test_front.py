"""The Realtime WebSocket through the real Envoy binary and the session picker, as ``duplex up --http-port``
runs them: two engines each serving ``/v1/realtime`` on a port of its own, the picker answering each upgrade
(key, client secret, quota, engine) and serving client secrets, the config and the page. A refused upgrade is
an HTTP status with an OpenAI-style JSON body naming the reason; an allowed one reaches the engine the picker
chose. Client-secret expiry and the picker's placements run on clocks the test steps."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets
from openai import AsyncOpenAI
from serving.conftest import LoopThread, wait_serving
from serving.envoy_child import EnvoyChild
from websockets.exceptions import InvalidStatus

from duplex.model.runtime import load_part
from duplex.model.spec import ModelSource
from duplex.serving.engine.server import EngineServer
from duplex.serving.envoy.config import EnvoyConfig
from duplex.serving.picker.auth import key_line
from duplex.serving.picker.placement import FORGET_S, Placements
from duplex.serving.picker.server import PickerServer
from duplex.serving.spec import EngineSpec, GatewaySpec

from .conftest import MAX_FRAME, bearer, start_conversation

ALICE, BOB, CAROL = "key-alice", "key-bob", "key-carol"


class StepClock:
    """Seconds that move only when a test says so (Unix seconds for client secrets; the placements' clock)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Front:
    engines: list[EngineServer]
    picker: PickerServer
    envoy: EnvoyChild
    clock: StepClock
    """Client-secret expiry (Unix seconds)."""
    placed: StepClock
    """The picker's placements."""
    thread: LoopThread

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.envoy.realtime_port}/v1/realtime"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.envoy.realtime_port}"

    def sdk(self, key: str) -> AsyncOpenAI:
        ws_base = f"ws://127.0.0.1:{self.envoy.realtime_port}/v1"
        return AsyncOpenAI(api_key=key, websocket_base_url=ws_base, base_url=f"{self.base}/v1")

    def forget_placements(self) -> None:
        """Let the picker forget placements no engine reported (WebSockets that never started a conversation)."""
        self.placed.now += FORGET_S + 1


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    keys = Path(tmp_path_factory.mktemp("keys")) / "keys"
    keys.write_text("".join(f"{key_line(k, k[4:])}\n" for k in (ALICE, BOB, CAROL)))
    lt, clock, placed = LoopThread(), StepClock(), StepClock()

    async def up() -> tuple[list[EngineServer], PickerServer]:
        engines = []
        for _ in range(2):
            spec = EngineSpec(host="127.0.0.1", metrics_port=0, max_sessions=4, max_message_bytes=MAX_FRAME)
            model = load_part(ModelSource(), device="cpu")
            engine = EngineServer(spec, ModelSource(), model=model, bind_port=0, http_bind_port=0)
            await engine.start()
            engines.append(engine)
        spec = GatewaySpec(
            host="127.0.0.1",
            engines=[f"127.0.0.1:{e.port}" for e in engines],
            api_keys_file=str(keys),
            key_max_sessions=1,
            metrics_port=0,
            health_interval_s=0.1,
            max_message_bytes=MAX_FRAME,
        )
        picker = PickerServer(spec, placements=Placements(placed), http_bind_port=0)
        picker.picker.realtime.minter.clock = clock
        await picker.start()
        return engines, picker

    engines, picker = lt.run(up(), timeout=180)
    for e in engines:
        wait_serving(f"127.0.0.1:{e.port}")
    envoy = None
    try:
        cfg = EnvoyConfig(
            picker=f"127.0.0.1:{picker.port}",
            eds_path=Path("x"),
            port=0,
            realtime=f"127.0.0.1:{picker.http_port}",
        )
        grpc_ports = [f"127.0.0.1:{e.port}" for e in engines]
        envoy = EnvoyChild(cfg, grpc_ports, [f"127.0.0.1:{e.http_port}" for e in engines])
        envoy.start()

        async def reported() -> None:  # the picker knows both engines' WebSocket ports
            while not all(r.healthy and r.http_port for r in picker.picker.router.replicas):
                await asyncio.sleep(0.02)

        lt.run(asyncio.wait_for(reported(), 30))
        yield Front(engines, picker, envoy, clock, placed, lt)
    finally:
        if envoy is not None:
            envoy.stop()

        async def down() -> None:
            await picker.stop(0.5)
            for e in engines:
                await e.stop(0.5)

        lt.run(down())
        lt.close()


async def refused(url: str, **kwargs: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The HTTP status, JSON body and headers of an upgrade the front refuses."""
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(url, **kwargs):
            pass
    response = info.value.response
    return response.status_code, json.loads(response.body or b"{}"), dict(response.headers)


async def first_event(url: str, **kwargs: Any) -> dict[str, Any]:
    async with websockets.connect(url, **kwargs) as ws:
        event: dict[str, Any] = json.loads(await ws.recv())
    return event


async def test_keys_are_checked_by_the_picker(front: Front) -> None:
    status, body, _ = await refused(front.ws_url)
    assert status == 401 and body["error"]["code"] == "invalid_api_key" and "key" in body["error"]["message"]
    status, body, _ = await refused(front.ws_url, **bearer("not-a-key"))
    assert status == 401 and body["error"]["type"] == "authentication_error"
    assert (await first_event(front.ws_url, **bearer(ALICE)))["type"] == "session.created"
    # a browser's way: the key as a subprotocol next to "realtime"
    protocols = ["realtime", f"openai-insecure-api-key.{BOB}"]
    async with websockets.connect(front.ws_url, subprotocols=protocols) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "realtime"
        assert json.loads(await ws.recv())["type"] == "session.created"
    front.forget_placements()


async def test_client_secret_is_accepted_until_it_expires(front: Front) -> None:
    import openai

    secret = await front.sdk(ALICE).realtime.client_secrets.create(
        expires_after={"anchor": "created_at", "seconds": 60},
        session={"type": "realtime", "instructions": "From the secret."},
    )
    assert secret.value.startswith("ek_") and secret.expires_at == int(front.clock.now) + 60
    created = await first_event(front.ws_url, **bearer(secret.value))
    assert created["session"]["instructions"] == "From the secret."
    front.forget_placements()
    protocols = ["realtime", f"openai-insecure-api-key.{secret.value}"]
    created = await first_event(front.ws_url, subprotocols=protocols)
    assert created["session"]["instructions"] == "From the secret."

    front.forget_placements()
    front.clock.now += 61  # past expires_at
    status, body, _ = await refused(front.ws_url, **bearer(secret.value))
    assert status == 401 and "expired" in body["error"]["message"]
    forged = secret.value[:-2] + ("AA" if not secret.value.endswith("AA") else "BB")
    status, body, _ = await refused(front.ws_url, **bearer(forged))
    assert status == 401 and "invalid client secret" in body["error"]["message"]

    with pytest.raises(openai.AuthenticationError):
        await front.sdk("wrong").realtime.client_secrets.create()
    with pytest.raises(openai.BadRequestError, match=r"expires_after\.seconds"):
        await front.sdk(ALICE).realtime.client_secrets.create(expires_after={"anchor": "created_at", "seconds": 5})
    with pytest.raises(openai.BadRequestError, match=r"session\.audio\.output\.format"):
        await front.sdk(ALICE).realtime.client_secrets.create(
            session={"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcma"}}}}
        )


async def test_a_keys_quota_is_a_429_with_retry_after(front: Front) -> None:
    async with websockets.connect(front.ws_url, **bearer(CAROL)) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        status, body, headers = await refused(front.ws_url, **bearer(CAROL))
        assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
        assert int(headers["retry-after"]) >= 1
        # another key is not held back
        assert (await first_event(front.ws_url, **bearer(BOB)))["type"] == "session.created"
    front.forget_placements()


async def test_conversations_are_placed_across_both_engines(front: Front) -> None:
    first, a = await start_conversation(front.ws_url, ALICE)
    second, b = await start_conversation(front.ws_url, BOB)
    try:
        engines = {f"127.0.0.1:{e.port}" for e in front.engines}
        assert {a["replica"], b["replica"]} == engines  # the picker spread them: one on each
    finally:
        await first.close()
        await second.close()
    front.forget_placements()


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def test_the_page_and_its_config_come_from_the_picker(front: Front) -> None:
    status, ctype, body = get(f"{front.base}/v1/realtime/config")
    config = json.loads(body)
    assert status == 200 and ctype.startswith("application/json")
    assert config["sample_rate"] == 24000 and config["chunk_ms"] == 200 and config["key_required"] is True
    status, ctype, page = get(f"{front.base}/")
    assert status == 200 and ctype.startswith("text/html") and b"<html" in page
    status, _, same = get(f"{front.base}/static/index.html")
    assert status == 200 and same == page
