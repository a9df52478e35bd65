"""``duplex up --http-port 0`` as a user runs it: it prints the endpoint's and the page's addresses, both answer,
and Ctrl-C stops everything."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

from duplex.loadtest.local import LocalUp


def get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


def test_up_serves_the_endpoint_and_the_page(tmp_path: Path) -> None:
    up = LocalUp(tmp_path / "up.log", ["--http-port", "0", "--no-agent"])
    up.start()
    try:
        m = up.wait_for(
            r"duplex up: realtime at ws://127\.0\.0\.1:(\d+)/v1/realtime \(page: http://127\.0\.0\.1:(\d+)/\)"
        )
        port = int(m.group(1))
        assert int(m.group(2)) == port and port > 0
        status, ctype, body = get(f"http://127.0.0.1:{port}/v1/realtime/config")
        config = json.loads(body)
        assert status == 200 and ctype.startswith("application/json")
        assert config["sample_rate"] == 24000 and config["chunk_ms"] == 200 and config["key_required"] is False
        status, ctype, body = get(f"http://127.0.0.1:{port}/")
        assert status == 200 and ctype.startswith("text/html") and b"<html" in body
        status, _, same = get(f"http://127.0.0.1:{port}/static/index.html")
        assert status == 200 and same == body
    finally:
        code = up.stop(signal.SIGINT, 60)
    assert code == 0
    up.wait_for("duplex up: stopped", 5)
