"""One conversation opened before the load, so that settings the target refuses fail the command at once,
named, instead of as N users' worth of ``error`` requests: a wrong or missing API key, TLS that does not
verify (or a plaintext client at a TLS port), an unreachable target, a chunk length the server does not use."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc

from duplex.serving.client import start_event
from duplex.v1 import duplex_pb2 as pb

from .driver import converse_rpc

REFUSED = {
    grpc.StatusCode.UNAUTHENTICATED: "the target refused the API key ({detail}): pass the right one with "
    "--api-key or $DUPLEX_API_KEY",
    grpc.StatusCode.PERMISSION_DENIED: "the target refused the API key ({detail}): pass the right one with "
    "--api-key or $DUPLEX_API_KEY",
    grpc.StatusCode.UNAVAILABLE: "cannot hold a conversation with --target {target} ({detail}); is it up, and "
    "does it serve TLS exactly when --ca-cert is given (and with a certificate that CA signed)?",
    grpc.StatusCode.DEADLINE_EXCEEDED: "--target {target} did not answer a session start within {timeout:g} s",
    grpc.StatusCode.INVALID_ARGUMENT: "the target refused the session start ({detail})",
}
"""Statuses that mean the run cannot measure anything; others (e.g. RESOURCE_EXHAUSTED: full) are load."""


def channel(target: str, ca_cert: str | None) -> grpc.Channel:
    """Plaintext, or TLS verified against the PEM bundle ``ca_cert``."""
    if not ca_cert:
        return grpc.insecure_channel(target)
    root = Path(ca_cert).read_bytes()
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root))


def check_target(target: str, ca_cert: str | None, api_key: str, chunk_ms: int, timeout_s: float = 15.0) -> None:
    """Open one session and cancel it at its ``SessionReady``; ValueError naming what is wrong otherwise.

    The probe asks for no resumption: a resumable session whose stream is cancelled is kept for the engine's
    resume grace, holding its slot — one slot short for a run at exactly a replica's capacity."""
    answered = threading.Event()

    def requests() -> Iterator[pb.ClientEvent]:
        yield start_event(chunk_ms=chunk_ms, no_resume=True)
        answered.wait(timeout_s)  # the stream stays open until the Ready (or the deadline), then is cancelled

    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    with channel(target, ca_cert) as ch:
        call = converse_rpc(ch)(requests(), metadata=metadata, timeout=timeout_s)
        try:
            for ev in call:
                if ev.WhichOneof("event") == "ready":
                    if ev.ready.chunk_ms and ev.ready.chunk_ms != chunk_ms:
                        raise ValueError(
                            f"--chunk-ms {chunk_ms}: the server's chunk is {ev.ready.chunk_ms} ms (they must match)"
                        )
                    return
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else grpc.StatusCode.UNKNOWN
            detail = f"{code.name}: {e.details() if isinstance(e, grpc.Call) else e}"
            if code in REFUSED:
                raise ValueError(REFUSED[code].format(detail=detail, target=target, timeout=timeout_s)) from None
        finally:
            call.cancel()
            answered.set()
