"""Liveness, readiness and startup checks the rendered pods run as ``exec`` probes:
``python3 -m duplex.operator.probe CHECK ...`` (exit 0 = pass; otherwise one line on stderr says why).

Kubernetes 1.20 kubelets have no ``grpc:`` probe, so the gRPC health checks run here. Imports stay light
(grpc, the health stubs, the one hostname parser) because the kubelet starts this every probe period.

- ``grpc-health HOST:PORT``: the standard gRPC health service answers SERVING (the engine once it serves,
  the session picker while some engine replica is healthy).
- ``engine live|ready --port P --metrics-port M``: by rank (the StatefulSet ordinal of the pod name in
  ``$HOSTNAME``, which the container runtime sets, else the host name). Rank 0: ``ready`` = gRPC health
  SERVING, ``live`` = its gRPC port accepts connections. Ranks > 0 serve no gRPC: both = their ``/metrics``
  answers (with metrics off there is nothing the rank serves; it passes while it runs).
- ``tcp HOST:PORT``: the address accepts connections (a process listening on the pod's loopback only, which a
  ``tcpSocket`` probe cannot reach).
- ``process``: PID 1 is running, not a zombie or stopped (pods that serve nothing to ask).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import urllib.request

TIMEOUT_S = 3.0
"""Per check; below the rendered ``timeoutSeconds`` so a hung server fails the probe instead of timing it out."""


class ProbeFailed(Exception):
    """The check ran and the answer was no."""


def grpc_health(address: str, timeout_s: float = TIMEOUT_S) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError as e:
            raise ProbeFailed(f"gRPC health of {address}: {e.code().name}") from None
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        raise ProbeFailed(f"gRPC health of {address}: {status}")


def tcp_accepts(host: str, port: int, timeout_s: float = TIMEOUT_S) -> None:
    try:
        socket.create_connection((host, port), timeout_s).close()
    except OSError as e:
        raise ProbeFailed(f"{host}:{port} does not accept connections: {e}") from None


def metrics_answers(port: int, timeout_s: float = TIMEOUT_S) -> None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
            r.read()
    except OSError as e:  # URLError and HTTPError are OSErrors
        raise ProbeFailed(f"GET :{port}/metrics: {e}") from None


def pod_rank() -> int:
    from duplex.serving.ranks import rank_from_hostname

    try:
        return rank_from_hostname(os.environ.get("HOSTNAME") or socket.gethostname())
    except ValueError as e:
        raise ProbeFailed(str(e)) from None


def engine(check: str, port: int, metrics_port: int) -> None:
    if pod_rank() == 0:
        if check == "ready":
            grpc_health(f"127.0.0.1:{port}")
        else:
            tcp_accepts("127.0.0.1", port)
    elif metrics_port:
        metrics_answers(metrics_port)


def process(stat_file: str = "/proc/1/stat") -> None:
    try:
        with open(stat_file) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]  # the field after "(comm)"
    except OSError as e:
        raise ProbeFailed(f"{stat_file}: {e}") from None
    if state in ("Z", "X", "T", "t"):
        raise ProbeFailed(f"PID 1 is in state {state}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m duplex.operator.probe", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="check", required=True)
    g = sub.add_parser("grpc-health", help="the gRPC health service answers SERVING")
    g.add_argument("address", help="HOST:PORT")
    e = sub.add_parser("engine", help="an engine rank, by the ordinal of its pod name")
    e.add_argument("mode", choices=["live", "ready"])
    e.add_argument("--port", type=int, required=True, help="rank 0's gRPC port")
    e.add_argument("--metrics-port", type=int, default=0, help="the ranks' /metrics port (0 = off)")
    t = sub.add_parser("tcp", help="HOST:PORT accepts connections")
    t.add_argument("address", help="HOST:PORT")
    sub.add_parser("process", help="PID 1 is neither a zombie nor stopped")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.check == "grpc-health":
            grpc_health(args.address)
        elif args.check == "tcp":
            host, _, port = args.address.rpartition(":")
            tcp_accepts(host, int(port))
        elif args.check == "engine":
            engine(args.mode, args.port, args.metrics_port)
        else:
            process()
    except ProbeFailed as e:
        print(f"probe {args.check}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
