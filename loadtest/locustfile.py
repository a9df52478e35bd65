"""The Locust side of ``duplex loadtest``: users holding real-time conversations over ``Duplex/Converse``.

Run by ``duplex loadtest`` as ``python -m locust -f THIS_FILE --headless ...`` with its settings in the JSON
file named by ``$DUPLEX_LOADTEST_CONFIG`` (``RunConfig``) and the API key in ``$DUPLEX_API_KEY`` (never on a
command line). Each measurement is its own Locust request type, so Locust's stats and HTML report show them:

* ``turn`` (name ``turn-taking``): response time = turn-taking latency; a missed turn is a failure;
* ``barge_in`` (name ``stop``): response time = barge-in latency; an ignored barge-in is a failure;
* ``backchannel`` (name ``backchannel``): one per back-channel heard (response time 0);
* ``error`` (name = the gRPC status): a conversation that ended with an error.

At the end every request event, the clients' pacing lag and the conversation counts go to the record file
that ``duplex loadtest`` summarises and gates.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # before grpc is imported (Locust does it too, but this file may be imported first)

import grpc.experimental.gevent  # noqa: E402

grpc.experimental.gevent.init_gevent()

import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import grpc  # noqa: E402
from locust import User, between, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.runners import MasterRunner  # noqa: E402

from duplex.loadtest.corpus import ScriptedConversation, load_corpus  # noqa: E402
from duplex.loadtest.driver import converse_rpc, hold_conversation  # noqa: E402
from duplex.loadtest.listener import Measurement  # noqa: E402
from duplex.loadtest.preflight import channel  # noqa: E402
from duplex.loadtest.record import Recorder, RunConfig  # noqa: E402
from duplex.serving.heap import freeze_startup_heap  # noqa: E402

CONFIG = RunConfig.model_validate_json(Path(os.environ["DUPLEX_LOADTEST_CONFIG"]).read_text())
CONVERSATIONS: list[ScriptedConversation] = load_corpus(Path(CONFIG.corpus), CONFIG.split, CONFIG.min_conversation_s)
RECORDER = Recorder()
USER_INDEX = itertools.count()
# libev timers count from the loop's cached "now", last updated before the imports and the corpus above
# (seconds on a busy machine): Locust's --run-time timer, armed next, would fire that much too early and cut
# the run short (a 20 s run measured 5.5 s). Bring the loop's clock to the present first.
gevent.get_hub().loop.update_now()

REQUEST_OF: dict[str, tuple[str, str, str | None]] = {
    # measurement kind: (request_type, name, failure message or None)
    "turn": ("turn", "turn-taking", None),
    "turn_missed": ("turn", "turn-taking", "no reply heard before the user spoke again or within the window"),
    "barge_in": ("barge_in", "stop", None),
    "barge_in_ignored": ("barge_in", "stop", "model speech still heard long after the user started over it"),
    "backchannel": ("backchannel", "backchannel", None),
}


class MeasurementFailure(Exception):
    """A turn the model missed or a barge-in it ignored: a failed ``turn``/``barge_in`` request."""


class StreamError(Exception):
    """A conversation that ended with a gRPC error."""


def _record(
    request_type: str,
    name: str,
    response_time: float,
    response_length: int,
    exception: BaseException | None = None,
    **_: Any,
) -> None:
    RECORDER.request(request_type, name, response_time / 1000, exception)


STALL_TICK_S = 0.05
SPARE_THREADS = 16
"""Native threads of the gevent hub's pool beyond one per open channel (grpc's greenlet spawner holds one)."""
OPEN_CHANNELS = 0
JOIN_SPREAD_S = 1.0
"""Each user joins at a random moment of this long after Locust starts it. Locust starts a whole second's
users (``--spawn-rate`` of them) at once; their setups ran back to back on the one event loop and stalled
every user already talking by 80–150 ms once a second while they joined. Real clients do not arrive in
bursts: spread over the second, users join at the spawn rate as independent arrivals."""


def _channel_opened() -> None:
    """Grow the gevent hub's native thread pool to one thread per open channel, plus spare ones.

    Under gevent grpc runs every completion-queue wait in that pool, one per channel, each holding its thread
    until an event or 200 ms. gevent's default pool has 10 threads: from about 10 users on, channels with
    nothing to read held the threads while other users' replies waited behind them, read late where the
    send-lag gate cannot see it (64 users: turn-taking p50 1.12 s with the 10 threads, 0.47 s with one per
    channel; docs/loadtest.md)."""
    global OPEN_CHANNELS
    OPEN_CHANNELS += 1
    pool = gevent.get_hub().threadpool
    if pool.maxsize < OPEN_CHANNELS + SPARE_THREADS:
        pool.maxsize = OPEN_CHANNELS + SPARE_THREADS


def _watch_loop() -> None:
    """Wake every 50 ms and record how late: the load generator's own stalls (gevent loop busy, or the
    process descheduled), which delay its sends exactly as much."""
    while True:
        before = time.monotonic()
        gevent.sleep(STALL_TICK_S)
        RECORDER.loop_stall(max(0.0, time.monotonic() - before - STALL_TICK_S))


def _init(**_: Any) -> None:
    gevent.get_hub().loop.update_now()  # again just before Locust arms its timers (see above)


def _start(**_: Any) -> None:
    # what Locust, gevent, grpc and the corpus made at start is frozen out of full collections: walking it
    # stops every user at once, as it stopped the engine (duplex.serving.heap)
    freeze_startup_heap()
    RECORDER.start()
    gevent.spawn(_watch_loop)


def _stopping(**_: Any) -> None:
    RECORDER.stop()


def _write(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        return  # with --processes the master only coordinates: its workers hold the conversations
    # one file per process (RECORD.PID), merged by `duplex loadtest`
    Path(f"{CONFIG.record}.{os.getpid()}").write_text(json.dumps(RECORDER.to_json()))


def _listen(hook: Any, listener: Callable[..., None]) -> None:
    hook.add_listener(listener)  # Locust's EventHook is untyped: reached through Any for mypy --strict


_listen(events.request, _record)
_listen(events.init, _init)
_listen(events.test_start, _start)
_listen(events.test_stopping, _stopping)
_listen(events.quitting, _write)


class ConversationUser(User):
    """Holds scripted conversations back to back, each on a fresh stream, at real-time pace."""

    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        assert self.host, "--target is required"
        self.channel: grpc.Channel | None = None  # none until it joins (a user stopped before has none)
        # user i starts with conversation seed + i and goes on through the corpus: every run with the same
        # settings says the same things in the same order
        worker = int(getattr(self.environment.runner, "worker_index", 0))
        self.next_conversation = CONFIG.seed + next(USER_INDEX) * CONFIG.processes + worker
        gevent.sleep(random.Random(self.next_conversation).uniform(0.0, JOIN_SPREAD_S))
        _channel_opened()
        self.channel = channel(self.host, CONFIG.ca_cert)
        self.rpc = converse_rpc(self.channel)
        key = os.environ.get("DUPLEX_API_KEY", "")
        self.metadata = (("authorization", f"Bearer {key}"),) if key else ()

    def on_stop(self) -> None:
        global OPEN_CHANNELS
        if self.channel is not None:
            OPEN_CHANNELS -= 1
            self.channel.close()

    def _fire(self, m: Measurement) -> None:
        request_type, name, failure = REQUEST_OF[m.kind]
        self.environment.events.request.fire(
            request_type=request_type,
            name=name,
            response_time=m.value_s * 1000,
            response_length=0,
            exception=MeasurementFailure(failure) if failure else None,
            context={"at_s": m.at_s},
        )

    @task
    def converse(self) -> None:
        conv = CONVERSATIONS[self.next_conversation % len(CONVERSATIONS)]
        self.next_conversation += 1
        started = time.monotonic()
        RECORDER.conversations_started += 1
        try:
            outcome = hold_conversation(self.rpc, conv, CONFIG.chunk_ms, self.metadata, self._fire, on_lag=RECORDER.lag)
        except ValueError as e:  # the server disagrees with the settings (e.g. chunk_ms)
            self._error("INVALID_ARGUMENT", str(e), started)
            return
        except Exception as e:  # a client-side failure still ends the conversation as an `error`, counted
            self._error(f"CLIENT_{type(e).__name__}", str(e), started)
            return
        RECORDER.warnings += outcome.warnings
        if outcome.code != grpc.StatusCode.OK:
            self._error(outcome.code.name, outcome.details, started)
        else:
            RECORDER.conversations_finished += 1

    def _error(self, code: str, details: str, started: float) -> None:
        self.environment.events.request.fire(
            request_type="error",
            name=code,
            response_time=(time.monotonic() - started) * 1000,
            response_length=0,
            exception=StreamError(f"{code}: {details}"),
            context={},
        )
