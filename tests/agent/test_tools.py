"""Every built-in tool: results, bad arguments (named in the message), limits. The HTTP tool talks only to a
local http.server on 127.0.0.1 that the tests allow-list explicitly; every refused address is refused before a
connection is made (DNS resolution is the only lookup)."""

from __future__ import annotations

import datetime as dt
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from duplex.serving.agent.tools import InvalidArguments, ToolError, registry_for
from duplex.serving.agent.tools.calculator import Calculator
from duplex.serving.agent.tools.clock import Clock
from duplex.serving.agent.tools.doc_search import DocSearch
from duplex.serving.agent.tools.http_get import HttpGet, HttpPolicy
from duplex.serving.spec import AgentSpec


async def call(tool: Any, arguments: str) -> str:
    return str(await tool.run(tool.parse(arguments)))


# --- calculator ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("-2 ** 2", "-4"),
        ("(-2) ** 3", "-8"),
        ("7 / 2", "3.5"),
        ("7 // 2", "3"),
        ("7 % 4", "3"),
        ("2 ** 0.5", "1.4142135623730951"),
        ("--3", "3"),
        ("1e3 + 1", "1001"),
        ("2 ** -1", "0.5"),
    ],
)
async def test_calculator(expression: str, result: str) -> None:
    assert await call(Calculator(), f'{{"expression": "{expression}"}}') == result


@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        ("{\"expression\": \"__import__('os').system('true')\"}", "expression: Value error, unsupported element"),
        ('{"expression": "x + 1"}', "unsupported element 'Name'"),
        ('{"expression": "(1).real"}', "unsupported element 'Attribute'"),
        ('{"expression": "[1, 2]"}', "unsupported element 'List'"),
        ('{"expression": "True + 1"}', "unsupported element 'Constant'"),
        ('{"expression": "1 +"}', "not an arithmetic expression"),
        ('{"expression": ""}', "expression: String should have at least 1 character"),
        ('{"expression": "' + "1+" * 150 + '1"}', "expression: String should have at most 200 characters"),
        ("{}", "expression: Field required"),
        ('{"expression": "1", "extra": 2}', "extra: Extra inputs are not permitted"),
        ("[1]", "expected a JSON object"),
    ],
)
def test_calculator_bad_arguments(arguments: str, needle: str) -> None:
    with pytest.raises(InvalidArguments, match="invalid arguments for calculator") as e:
        Calculator().parse(arguments)
    assert needle in str(e.value)


@pytest.mark.parametrize(
    ("expression", "needle"),
    [
        ("1 / 0", "division by zero"),
        ("1 // (3 - 3)", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("9 ** 9 ** 9", "exponent"),
        ("10 ** 400", "result too large"),
        ("1e200 * 1e200", "result too large"),
        ("(-8) ** 0.5", "no real result"),
    ],
)
async def test_calculator_errors(expression: str, needle: str) -> None:
    with pytest.raises(ToolError, match=needle):
        await call(Calculator(), f'{{"expression": "{expression}"}}')


# --- clock -----------------------------------------------------------------------------------------------------

FIXED = dt.datetime(2026, 7, 1, 12, 30, 0, tzinfo=dt.UTC)


async def test_clock_in_time_zones() -> None:
    clock = Clock(now=lambda: FIXED)
    assert await call(clock, '{"timezone": "Europe/Paris"}') == "2026-07-01T14:30:00+02:00 (Europe/Paris)"
    assert await call(clock, "{}") == "2026-07-01T12:30:00+00:00 (UTC)"
    assert await call(clock, '{"timezone": "Asia/Tokyo", "format": "%H:%M"}') == "21:30"


@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        ('{"timezone": "Mars/Olympus_Mons"}', "timezone: Value error, unknown time zone 'Mars/Olympus_Mons'"),
        ('{"timezone": "../../etc/passwd"}', "timezone: Value error, unknown time zone"),
        ('{"timezone": 5}', "timezone: Input should be a valid string"),
        ('{"format": ""}', "format: String should have at least 1 character"),
    ],
)
def test_clock_bad_arguments(arguments: str, needle: str) -> None:
    with pytest.raises(InvalidArguments) as e:
        Clock().parse(arguments)
    assert needle in str(e.value)


# --- doc_search ------------------------------------------------------------------------------------------------


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "trips").mkdir(parents=True)
    (root / "trips" / "paris.md").write_text("Paris trip: the museum opens at nine. Paris is lovely in spring.\n")
    (root / "menu.txt").write_text("The cafe serves coffee from seven; the museum cafe opens at ten.\n")
    (root / "binary.bin").write_bytes(b"museum museum museum")
    (tmp_path / "secret.txt").write_text("museum secret outside the root\n")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    return root


async def test_doc_search_ranks_and_snippets(docs: Path) -> None:
    out = await call(DocSearch(docs), '{"query": "Paris museum"}')
    lines = out.splitlines()
    assert lines[0].startswith("trips/paris.md (score 3): Paris trip: the museum opens at nine.")
    assert lines[1].startswith("menu.txt (score 1): The cafe serves coffee") and len(lines) == 2
    assert "secret" not in out and "binary" not in out  # symlink out of the root, non-text file
    assert await call(DocSearch(docs), '{"query": "museum", "folder": "trips"}') == (
        "trips/paris.md (score 1): Paris trip: the museum opens at nine. Paris is lovely in spring."
    )
    assert await call(DocSearch(docs), '{"query": "zebra"}') == "no documents match 'zebra'"


@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        ('{"query": "museum", "folder": "../"}', "folder: '../' is outside the document root"),
        ('{"query": "museum", "folder": "/etc"}', "folder: '/etc' is outside the document root"),
        ('{"query": "museum", "folder": "nope"}', "folder: 'nope' does not exist"),
        ('{"query": "!!!"}', "query: no words"),
    ],
)
async def test_doc_search_refusals(docs: Path, arguments: str, needle: str) -> None:
    with pytest.raises(ToolError, match=needle):
        await call(DocSearch(docs), arguments)


@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        ("{}", "query: Field required"),
        ('{"query": "a", "max_results": 0}', "max_results: Input should be greater"),
    ],
)
def test_doc_search_bad_arguments(arguments: str, needle: str) -> None:
    with pytest.raises(InvalidArguments) as e:
        DocSearch(None).parse(arguments)
    assert needle in str(e.value)


async def test_doc_search_without_mounted_folder() -> None:
    with pytest.raises(ToolError, match="no document folder is mounted"):
        await call(DocSearch(None), '{"query": "x"}')


# --- http_get --------------------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.end_headers()
            return
        body = (f"hello from {self.headers['Host']} " + "x" * 100).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def local_http() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


async def test_http_get_allow_listed_local_server(local_http: int) -> None:
    tool = HttpGet(HttpPolicy(allow_hosts=["127.0.0.1"], max_bytes=30))  # an explicit private IP literal
    out = await call(tool, f'{{"url": "http://127.0.0.1:{local_http}/page"}}')
    assert out == f"HTTP 200\nhello from 127.0.0.1:{local_http} xxxx"[: len("HTTP 200\n") + 30]
    redirected = await call(tool, f'{{"url": "http://127.0.0.1:{local_http}/redirect?to=/final"}}')
    assert redirected.startswith(f"HTTP 200\nhello from 127.0.0.1:{local_http}")


@pytest.mark.parametrize(
    ("allow", "url", "needle"),
    [
        (["*"], "http://127.0.0.1:{port}/", "resolves to loopback address 127.0.0.1: refused"),
        (["*"], "http://10.0.0.1/", "resolves to private address 10.0.0.1: refused"),
        (["*"], "http://169.254.169.254/latest/meta-data/", "link-local address 169.254.169.254: refused"),
        (["*"], "http://[::1]:{port}/", "loopback address ::1: refused"),
        (["*"], "http://[::ffff:127.0.0.1]:{port}/", "loopback address ::ffff:7f00:1: refused"),
        (["*"], "http://[::ffff:169.254.169.254]/", "link-local address ::ffff:a9fe:a9fe: refused"),
        (["*"], "http://0.0.0.0:{port}/", "unspecified address 0.0.0.0: refused"),
        (["*"], "http://224.0.0.1/", "multicast address 224.0.0.1: refused"),
        (["*"], "http://[fe80::1]/", "link-local address fe80::1: refused"),
        (["*"], "http://[fc00::1]/", "private address fc00::1: refused"),
        (["*"], "http://198.18.0.1/", "private address 198.18.0.1: refused"),
        (["localhost"], "http://localhost:{port}/", "'localhost' resolves to loopback address"),
        (["127.0.0.1"], "http://127.0.0.1:{port}/redirect?to=http://localhost:{port}/", "not on the allow-list"),
        (
            ["127.0.0.1", "localhost"],
            "http://127.0.0.1:{port}/redirect?to=http://localhost:{port}/",
            "'localhost' resolves to loopback address",
        ),
        (["127.0.0.1"], "http://127.0.0.1:{port}/redirect?to=http://10.0.0.1/", "host '10.0.0.1' is not on the allow"),
        (
            ["127.0.0.1", "*"],
            "http://127.0.0.1:{port}/redirect?to=http://169.254.169.254/",
            "link-local address 169.254.169.254: refused",
        ),
        (["example.com"], "http://127.0.0.1:{port}/", "host '127.0.0.1' is not on the allow-list"),
        ([], "http://127.0.0.1:{port}/", "not on the allow-list"),
    ],
)
async def test_http_get_refuses_ssrf(local_http: int, allow: list[str], url: str, needle: str) -> None:
    tool = HttpGet(HttpPolicy(allow_hosts=allow))
    with pytest.raises(ToolError) as e:
        await call(tool, f'{{"url": "{url.format(port=local_http)}"}}')
    assert needle in str(e.value)


async def test_http_get_redirect_limit_and_allow_private(local_http: int) -> None:
    base = f"http://127.0.0.1:{local_http}"
    loop_url = f"{base}/redirect?to={base}/redirect?to={base}/page"
    with pytest.raises(ToolError, match="more than 1 redirects"):
        await call(HttpGet(HttpPolicy(allow_hosts=["127.0.0.1"], max_redirects=1)), f'{{"url": "{loop_url}"}}')
    # allow_private (tests, trusted networks): a name resolving to loopback is then fetched
    out = await call(
        HttpGet(HttpPolicy(allow_hosts=["localhost"], allow_private=True)),
        f'{{"url": "http://localhost:{local_http}/"}}',
    )
    assert out.startswith(f"HTTP 200\nhello from localhost:{local_http}")


@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        ('{"url": "ftp://example.com/x"}', "url: String should match pattern"),
        ('{"url": "file:///etc/passwd"}', "url: String should match pattern"),
        ("{}", "url: Field required"),
    ],
)
def test_http_get_bad_arguments(arguments: str, needle: str) -> None:
    with pytest.raises(InvalidArguments) as e:
        HttpGet(HttpPolicy()).parse(arguments)
    assert needle in str(e.value)


def test_registry_follows_the_deployment_list() -> None:
    reg = registry_for(AgentSpec(tools=["calculator", "http_get"]))
    assert reg.names() == ["calculator", "http_get"]
    with pytest.raises(ValueError, match=r"agent\.tools: unknown tool"):
        registry_for(AgentSpec(tools=["calculator", "teleport"]))
    with pytest.raises(ValueError, match=r"agent\.plugins: 'nomodule' is not MODULE:ATTRIBUTE"):
        registry_for(AgentSpec(plugins=["nomodule"]))
    schema = reg.get("calculator").schema()  # type: ignore[union-attr]
    assert (
        schema["required"] == ["expression"]
        and "Arithmetic expression" in schema["properties"]["expression"]["description"]
    )
