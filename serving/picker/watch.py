"""The engines' endpoints from the Kubernetes API: the session picker lists and then watches the EndpointSlices
of the engines' leader Services (``GatewaySpec.engine_selector`` in ``engine_namespace``) and reports every
change of the set of serving leader addresses (``IP:PORT`` of the port named :data:`ENGINE_PORT_NAME`).

An endpoint counts while it serves: ``conditions.serving`` true (or, where the server does not report
``serving``, ``ready``) and not ``terminating``. The leader Services publish not-ready addresses (the ranks
rendezvous through them before they are ready), so on a server without the ``serving`` condition (before
Kubernetes 1.22) an unready leader is listed too; the picker's own health and load polling keeps sessions off
it either way.

The watch runs in a thread (the ``kubernetes`` client is synchronous). A failure (API server unreachable,
403, an expired resource version) is logged, retried with exponential backoff and never ends the thread;
until the next successful list the last reported set stands."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes import watch as kwatch
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

log = logging.getLogger(__name__)

ENGINE_PORT_NAME = "grpc"
"""The leader Service's port carrying ``Duplex.Converse`` (its EndpointSlices list the pod's port by this name)."""
LEADER_LABEL = "duplex.ai/leader"
"""Label (value ``true``) of the engines' leader Services, which the EndpointSlice controller copies onto their
slices: what ``engine_selector`` picks besides the model's own labels."""
SLICE_VERSIONS = ("discovery.k8s.io/v1", "discovery.k8s.io/v1beta1")
"""EndpointSlice API versions, newest first (v1beta1: Kubernetes 1.20)."""
LIST_TIMEOUT_S = 30
"""Longest wait for one list call (a watch ends after its own ``watch_timeout_s`` and is opened again)."""
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
"""The pod's namespace, beside its service-account token."""


def serving(endpoint: dict[str, Any]) -> bool:
    """Whether a slice's endpoint takes new sessions: serving (else ready) and not terminating."""
    conditions = endpoint.get("conditions") or {}
    if conditions.get("terminating"):
        return False
    state = conditions.get("serving")
    if state is None:
        state = conditions.get("ready")
    return state is not False  # unknown (nil) means ready, as the API documents


def serving_addresses(slices: Iterable[dict[str, Any]], port_name: str = ENGINE_PORT_NAME) -> list[str]:
    """``IP:PORT`` of every serving endpoint of the IPv4 ``slices`` on their port named ``port_name`` (sorted,
    once each: an endpoint moving between two slices may briefly be in both)."""
    out: set[str] = set()
    for s in slices:
        if s.get("addressType", "IPv4") != "IPv4":  # FQDN slices hold names, which Envoy is never given
            continue
        port = next((p.get("port") for p in s.get("ports") or [] if p.get("name") == port_name), None)
        if not port:
            continue
        for endpoint in s.get("endpoints") or []:
            if serving(endpoint):
                out.update(f"{ip}:{port}" for ip in endpoint.get("addresses") or [])
    return sorted(out)


def pod_namespace() -> str:
    """The namespace of the pod this runs in ("" outside a pod)."""
    try:
        return NAMESPACE_FILE.read_text().strip()
    except OSError:
        return ""


def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster config in a pod (its service-account token), else the kubeconfig (``kubeconfig``,
    ``$KUBECONFIG`` or ``~/.kube/config``). ``ConfigException`` when there is neither."""
    cfg = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return client.ApiClient(cfg)


def _describe(error: Exception) -> str:
    status = getattr(error, "status", None)
    reason = getattr(error, "reason", None)
    if status:
        return f"HTTP {status} {reason or ''}".strip()
    return f"{type(error).__name__}: {error}"


class EngineWatch:
    """List+watch of the EndpointSlices matching ``selector`` in ``namespace``; ``on_change(addresses)`` is
    called (from the watch thread) with the serving leader addresses after the first list and on every change
    of them."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        selector: str,
        on_change: Callable[[list[str]], None],
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        watch_timeout_s: int = 300,
    ) -> None:
        if not namespace:
            raise ValueError("engine watch: no namespace (gateway.engine_namespace, or run in a pod)")
        if not selector:
            raise ValueError("engine watch: gateway.engine_selector is empty")
        self.api, self.namespace, self.selector, self.on_change = api, namespace, selector, on_change
        self.backoff_s, self.max_backoff_s, self.watch_timeout_s = backoff_s, max_backoff_s, watch_timeout_s
        self.addresses: list[str] | None = None
        """The last reported set (None before the first successful list)."""
        self.failures = 0
        """Failed attempts since the last successful list (for logs and tests)."""
        self._stop = threading.Event()
        self._watcher: kwatch.Watch | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="engine-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """End the watch (at once when it waits to retry; a watch stream ends at its next event or timeout,
        the thread is a daemon either way)."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.stop()  # type: ignore[no-untyped-call]
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _report(self, slices: dict[str, dict[str, Any]]) -> None:
        now = serving_addresses(slices.values())
        if now != self.addresses:
            self.addresses = now
            log.info("engine endpoints (%s in %s): %s", self.selector, self.namespace, ", ".join(now) or "none")
            self.on_change(now)

    def _resource(self, dynamic: Any) -> Any:
        for version in SLICE_VERSIONS:
            try:
                return dynamic.resources.get(api_version=version, kind="EndpointSlice")
            except ResourceNotFoundError:
                continue
        raise ResourceNotFoundError("the server serves no EndpointSlice API (discovery.k8s.io)")

    def run(self) -> None:
        """Until :meth:`stop`: list, report, watch; on any failure log, wait (backoff) and list again."""
        delay = self.backoff_s
        while not self._stop.is_set():
            try:
                self._list_and_watch()
                delay = self.backoff_s  # a watch that ran its course: list again at once
            except Exception as e:  # whatever the API or the network did, the picker goes on
                if self._stop.is_set():
                    return
                self.failures += 1
                kept = "none yet" if self.addresses is None else f"keeping the last {len(self.addresses)}"
                log.warning(
                    "engine watch (EndpointSlices %s in %s) failed: %s; retrying in %.1f s (%s)",
                    self.selector,
                    self.namespace,
                    _describe(e),
                    delay,
                    kept,
                )
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_backoff_s)

    def _list_and_watch(self) -> None:
        dynamic: Any = DynamicClient(self.api)  # type: ignore[no-untyped-call]  # discovery: may fail, retried
        resource = self._resource(dynamic)
        listing = resource.get(
            namespace=self.namespace, label_selector=self.selector, _request_timeout=LIST_TIMEOUT_S
        ).to_dict()
        slices = {s["metadata"]["name"]: s for s in listing.get("items") or []}
        self.failures = 0
        self._report(slices)
        self._watcher = kwatch.Watch()  # type: ignore[no-untyped-call]
        if self._stop.is_set():
            return
        for event in resource.watch(
            namespace=self.namespace,
            label_selector=self.selector,
            resource_version=listing["metadata"]["resourceVersion"],
            timeout=self.watch_timeout_s,
            watcher=self._watcher,
        ):
            kind, obj = event["type"], event["raw_object"]
            if kind == "ERROR":  # e.g. 410 Gone: the resource version expired; list again
                raise RuntimeError(f"watch error: {obj.get('message') or obj}")
            if kind == "DELETED":
                slices.pop(obj["metadata"]["name"], None)
            elif kind in ("ADDED", "MODIFIED"):
                slices[obj["metadata"]["name"]] = obj
            self._report(slices)
