"""Free TCP ports, found in one place: for ``duplex up``'s redis-server, ``duplex kserve``'s port 0, the tests
and the benchmarks.

A port is asked of the kernel by binding an IPv4 TCP socket to port 0 (no ``SO_REUSEADDR``) and closing it
again; the caller binds it afterwards, so another process may take it in between (rare on a test machine; a
server that can bind port 0 itself and report the port is the race-free way)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` (an IPv4 address; ``0.0.0.0`` for every interface) now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_pair(host: str = "127.0.0.1", tries: int = 50) -> int:
    """A port P with P and P + 1 both free on ``host`` now (``duplex up --metrics-port P`` puts the gateway's
    /metrics on P + 1). Raises OSError when ``tries`` ports from the kernel had a busy neighbour."""
    for _ in range(tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as a:
            a.bind((host, 0))
            p = int(a.getsockname()[1])
            if p >= 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as b:
                try:
                    b.bind((host, p + 1))
                except OSError:
                    continue
            return p
    raise OSError(f"no two adjacent free TCP ports on {host} in {tries} tries")
