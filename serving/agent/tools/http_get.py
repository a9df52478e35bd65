"""``http_get``: fetch a URL from an allow-list of hosts, without server-side request forgery.

For the first URL and for every redirect (followed by hand, a bounded number of times): the scheme must be
http/https, the host must be on the allow-list, and every address the name resolves to must be public —
private, loopback, link-local (169.254.169.254 included), multicast, reserved and unspecified addresses are
refused, IPv4 and IPv6 alike, IPv4-mapped IPv6 checked as the IPv4 it carries. The connection then goes to the
vetted address itself (Host header and TLS SNI keep the name), so a second DNS answer cannot redirect it.

Exceptions, for explicit use only: an allow-list entry that is an IP literal allows that address even if it is
private (``127.0.0.1`` in tests), and ``allow_private`` turns the address check off.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import Field

from .base import Arguments, Tool, ToolError

REDIRECTS = frozenset({301, 302, 303, 307, 308})
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def refused_reason(ip: IPAddress) -> str | None:
    """Why an address must not be contacted, or None if it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return refused_reason(ip.ipv4_mapped)
    for attr, what in (
        ("is_unspecified", "unspecified"),
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_private", "private"),
        ("is_reserved", "reserved"),
    ):
        if getattr(ip, attr):
            return what
    if not ip.is_global:
        return "non-global"
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class HttpGetArguments(Arguments):
    url: str = Field(min_length=8, max_length=2048, pattern=r"^https?://")
    """http:// or https:// URL on an allowed host."""


@dataclass
class HttpPolicy:
    allow_hosts: list[str] = field(default_factory=list)
    """Host names or IP literals that may be fetched; ``*`` = any host with a public address."""
    allow_private: bool = False
    """Skip the address check (tests and trusted networks only)."""
    max_bytes: int = 65536
    """Response body bytes kept; the rest is not read."""
    timeout_s: float = 10.0
    """Whole-call limit (all redirects together)."""
    max_redirects: int = 3
    """Redirects followed before giving up."""


class HttpGet(Tool[HttpGetArguments]):
    name = "http_get"
    description = "GET a URL from the allowed hosts; answers with the status and the start of the body."
    arguments = HttpGetArguments

    def __init__(self, policy: HttpPolicy) -> None:
        self.policy = policy
        self.timeout_s = policy.timeout_s

    def _host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return "*" in self.policy.allow_hosts or host in {h.lower().rstrip(".") for h in self.policy.allow_hosts}

    async def vet(self, url: str) -> tuple[str, int, IPAddress]:
        """Check one URL; return (host, port, the address to connect to) or raise ToolError."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ToolError(f"url: scheme {parts.scheme!r} not allowed (http, https)")
        host = parts.hostname
        if not host:
            raise ToolError(f"url: {url!r} has no host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ToolError(f"url: bad port in {url!r}") from None
        if not self._host_allowed(host):
            raise ToolError(f"url: host {host!r} is not on the allow-list")
        literal = _literal(host)
        if literal is not None:
            addresses = [literal]
            explicitly_allowed = any(_literal(h) == literal for h in self.policy.allow_hosts)
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as e:
                raise ToolError(f"url: cannot resolve {host!r}: {e.strerror}") from None
            addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
            explicitly_allowed = False
        if not addresses:
            raise ToolError(f"url: {host!r} has no address")
        if not (self.policy.allow_private or explicitly_allowed):
            for ip in addresses:
                reason = refused_reason(ip)
                if reason is not None:
                    raise ToolError(f"url: {host!r} resolves to {reason} address {ip}: refused")
        return host, port, addresses[0]

    async def run(self, args: HttpGetArguments) -> str:
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=self.policy.timeout_s) as client:
            url = args.url
            for _ in range(self.policy.max_redirects + 1):
                status, location, body = await self._fetch_once(client, url)
                if status in REDIRECTS and location:
                    url = urljoin(url, location)
                    continue
                return f"HTTP {status}\n{body}"
        raise ToolError(f"url: more than {self.policy.max_redirects} redirects")

    async def _fetch_once(self, client: httpx.AsyncClient, url: str) -> tuple[int, str | None, str]:
        host, port, ip = await self.vet(url)
        parts = urlsplit(url)
        ip_host = f"[{ip}]" if ip.version == 6 else str(ip)
        target = parts._replace(netloc=f"{ip_host}:{port}").geturl()
        default_port = port == (443 if parts.scheme == "https" else 80)
        headers = {"Host": host if default_port else f"{host}:{port}"}
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        try:
            async with client.stream("GET", target, headers=headers, extensions=extensions) as resp:
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) >= self.policy.max_bytes:
                        break
                text = bytes(body[: self.policy.max_bytes]).decode(resp.encoding or "utf-8", errors="replace")
                return resp.status_code, resp.headers.get("location"), text
        except httpx.HTTPError as e:
            raise ToolError(f"url: GET {url} failed: {type(e).__name__}: {e}") from None
