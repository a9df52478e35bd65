"""Level-based reconcile of one DuplexModel: desired children from the spec, apply, prune, report status.

Called by the kopf handlers (create/update/resume/timer) and, for one child at a time, by the child-event
handler that repairs drift. Everything here is idempotent: running it twice changes nothing the second time.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from typing import Any

from kubernetes.client.exceptions import ApiException

from .children import ApiVersions, child_kinds
from .kube import Kube
from .naming import ModelRef
from .render import render_children
from .render.common import Manifest, key
from .render.gateway import endpoint
from .resolve import InvalidSpec, Resolved, parse_spec, resolve
from .status import compute_status, invalid_status, observe, same_status

log = logging.getLogger("duplex.operator")

# child_kinds (duplex.operator.children) is what _prune lists; bench/operator.py and tests/cluster import it here
__all__ = ["Reconciler", "child_kinds", "is_subset"]

OWNED_STATUS_KEYS = (
    "observedGeneration",
    "conditions",
    "replicas",
    "readyReplicas",
    "selector",
    "shardPlan",
    "endpoint",
)


def is_subset(desired: Any, live: Any) -> bool:
    """Whether every field the operator sets has the value it wants in ``live`` (server defaults ignored)."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(k in live and is_subset(v, live[k]) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(desired) == len(live) and all(map(is_subset, desired, live))
    return bool(desired == live)


def _older(event_rv: str | None, applied_rv: str | None) -> bool:
    """Whether an event shows the object at or before our last apply (an echo, or a stale event queued
    before it). resourceVersions are opaque strings; from etcd they are revisions, so compare as numbers
    and fall back to equality."""
    if event_rv is None or applied_rv is None:
        return False
    try:
        return int(event_rv) <= int(applied_rv)
    except ValueError:
        return event_rv == applied_rv


class Reconciler:
    """Applies DuplexModels. One lock per model serialises its reconciles, repairs and status writes."""

    def __init__(self, kube: Kube, apis: ApiVersions) -> None:
        self.kube = kube
        self.apis = apis
        self._locks: defaultdict[tuple[str, str], threading.RLock] = defaultdict(threading.RLock)
        self._guard = threading.Lock()
        self._applied: dict[tuple[str, str, str, str], str] = {}
        """(namespace, apiVersion, kind, name) -> resourceVersion our last apply produced (skips own echoes
        and events older than it)."""

    def lock(self, namespace: str, name: str) -> threading.RLock:
        with self._guard:
            return self._locks[(namespace, name)]

    # --- desired state ------------------------------------------------------------------------------
    def desired(self, body: dict[str, Any]) -> tuple[ModelRef, Resolved | InvalidSpec, list[Manifest]]:
        ref = ModelRef.from_body(body)
        try:
            resolved = resolve(parse_spec(body.get("spec")))
        except InvalidSpec as e:
            return ref, e, []
        return ref, resolved, render_children(ref, resolved, self.apis)

    def _apply(self, ref: ModelRef, manifest: Manifest) -> dict[str, Any]:
        live = self.kube.apply(manifest)
        api_version, kind, name = key(manifest)
        self._applied[(ref.namespace, api_version, kind, name)] = live["metadata"]["resourceVersion"]
        return live

    # --- full reconcile -----------------------------------------------------------------------------
    def reconcile(self, body: dict[str, Any]) -> str | None:
        """Apply every child, prune the ones no longer wanted, write status. Returns an error text when
        some apply failed (the caller retries), None otherwise."""
        ref0 = ModelRef.from_body(body)
        with self.lock(ref0.namespace, ref0.name):
            ref, resolved, manifests = self.desired(body)
            generation = int(body["metadata"].get("generation") or 0)
            previous = body.get("status") or {}
            if isinstance(resolved, InvalidSpec):
                log.warning("DuplexModel %s/%s: invalid spec: %s", ref.namespace, ref.name, resolved)
                self._write_status(ref, previous, invalid_status(ref, resolved.problems, generation, previous))
                return None
            errors: list[str] = []
            for m in manifests:
                try:
                    self._apply(ref, m)
                except ApiException as e:
                    errors.append(f"applying {m['kind']} {m['metadata']['name']} failed: {e.status} {e.reason}")
            wanted = {key(m) for m in manifests}
            try:
                self._prune(ref, wanted)
            except ApiException as e:
                errors.append(f"pruning failed: {e.status} {e.reason}")
            error = "; ".join(errors) or None
            self.refresh_status(body, resolved=resolved, apply_error=error)
            return error

    def _prune(self, ref: ModelRef, wanted: set[tuple[str, str, str]]) -> None:
        for api_version, kind in child_kinds(self.apis):
            for obj in self.kube.list_children(api_version, kind, ref.namespace, ref.name):
                owners = obj["metadata"].get("ownerReferences") or []
                if (api_version, kind, obj["metadata"]["name"]) in wanted:
                    continue
                if any(o.get("uid") == ref.uid for o in owners):
                    log.info("pruning %s %s/%s", kind, ref.namespace, obj["metadata"]["name"])
                    self.kube.delete(api_version, kind, ref.namespace, obj["metadata"]["name"])

    # --- one child changed ----------------------------------------------------------------------------
    def child_changed(self, event_type: str | None, child: dict[str, Any], model: str, refresh: bool) -> None:
        """A child was added, edited or deleted: put it back if it drifted, then refresh the status."""
        meta = child["metadata"]
        namespace = meta["namespace"]
        with self.lock(namespace, model):
            body = self.kube.get_model(namespace, model)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return  # the model is going away: garbage collection removes the rest
            owners = meta.get("ownerReferences") or []
            if owners and not any(o.get("uid") == body["metadata"]["uid"] for o in owners):
                return  # a child of an earlier model with the same name
            ref, resolved, manifests = self.desired(body)
            if isinstance(resolved, InvalidSpec):
                return
            # Match by kind and name: a watch may deliver another served version (autoscaling/v1 HPAs).
            wanted = {(m["kind"], m["metadata"]["name"]): m for m in manifests}
            m = wanted.get((child["kind"], meta["name"]))
            if m is not None:
                ident = key(m)
                same_version = child.get("apiVersion") == m["apiVersion"]
                stale = _older(meta.get("resourceVersion"), self._applied.get((namespace, *ident)))
                drifted = same_version and not stale and not is_subset(m, child)
                if event_type == "DELETED" or drifted:
                    log.info("repairing %s %s/%s (%s)", ident[1], namespace, ident[2], event_type or "drift")
                    self._apply(ref, m)
            if refresh:
                self.refresh_status(body, resolved=resolved)

    # --- status --------------------------------------------------------------------------------------
    def refresh_status(self, body: dict[str, Any], resolved: Resolved, apply_error: str | None = None) -> None:
        ref = ModelRef.from_body(body)
        with self.lock(ref.namespace, ref.name):
            # Re-read: the status may have been written since ``body`` was fetched.
            fresh = self.kube.get_model(ref.namespace, ref.name)
            if fresh is None:
                return
            previous = fresh.get("status") or {}
            generation = int(fresh["metadata"].get("generation") or 0)
            sts = self.kube.list_children("apps/v1", "StatefulSet", ref.namespace, ref.name)
            deps = self.kube.list_children("apps/v1", "Deployment", ref.namespace, ref.name)
            service = None
            if resolved.spec.gateway.service_type == "LoadBalancer":
                service = self.kube.get("v1", "Service", ref.namespace, ref.endpoint_service)
            observed = observe(sts, deps, endpoint(ref, resolved.spec, service))
            status = compute_status(ref, resolved, observed, generation, previous, apply_error)
            self._write_status(ref, previous, status)

    def _write_status(self, ref: ModelRef, previous: dict[str, Any], status: dict[str, Any]) -> None:
        if same_status(previous, status):
            return
        patch: dict[str, Any] = dict(status)
        for k in OWNED_STATUS_KEYS:
            if k in previous and k not in status:
                patch[k] = None  # merge patch: remove
        self.kube.patch_model_status(ref.namespace, ref.name, patch)
