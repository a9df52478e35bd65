"""kopf handlers: thin glue between kopf's events and :class:`Reconciler` (import this module to register).

- DuplexModel create / update / resume, and a periodic resync timer: full level-based reconcile.
- Child events (anything labelled ``app.kubernetes.io/managed-by=duplex-operator``): repair drift at once,
  and refresh the model's status when a workload reports new readiness.

No delete handler and no finalizer: children carry owner references, so deleting a DuplexModel
garbage-collects them, even while the operator is down. kopf's bookkeeping goes to annotations (the status
schema is structural, so a ``status.kopf`` field would be pruned).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from .kube import Kube, load_api_client
from .naming import GROUP, MANAGED_BY, MANAGED_BY_LABEL, MODEL_LABEL, PLURAL, VERSION
from .reconcile import Reconciler
from .render import ApiVersions

RESYNC_SECONDS = float(os.environ.get("DUPLEX_OPERATOR_RESYNC_SECONDS", "120"))
"""Every model is fully reconciled this often even without events (a safety net for missed watches)."""
WORKERS = int(os.environ.get("DUPLEX_OPERATOR_WORKERS", "16"))
"""Threads running the (blocking) reconciles."""

CHILD_LABELS = {MANAGED_BY_LABEL: MANAGED_BY}
STATUS_KINDS = {"StatefulSet", "Deployment", "Service"}


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo,
              logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.execution.max_workers = WORKERS
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    kube = Kube(load_api_client(os.environ.get("DUPLEX_KUBECONFIG"), pool_size=WORKERS * 2))
    apis = ApiVersions.from_served(kube.served_group_versions())
    logger.info("rendering PodDisruptionBudgets as %s, HPAs as %s", apis.pdb, apis.hpa)
    memo["reconciler"] = Reconciler(kube, apis)


def _reconciler(memo: kopf.Memo) -> Reconciler:
    r: Reconciler = memo["reconciler"]
    return r


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile_model(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    error = _reconciler(memo).reconcile(dict(body))
    if error:
        raise kopf.TemporaryError(error, delay=5)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS, idle=0)
def resync_model(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _reconciler(memo).reconcile(dict(body))


def _child(event: kopf.RawEvent, memo: kopf.Memo) -> None:
    obj = event["object"]
    labels = (obj.get("metadata") or {}).get("labels") or {}
    model = labels.get(MODEL_LABEL)
    if not model:
        return
    _reconciler(memo).child_changed(event.get("type"), dict(obj), model, refresh=obj.get("kind") in STATUS_KINDS)


@kopf.on.event("v1", "configmaps", labels=CHILD_LABELS)
def configmap_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _child(event, memo)


@kopf.on.event("v1", "services", labels=CHILD_LABELS)
def service_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _child(event, memo)


@kopf.on.event("apps", "v1", "statefulsets", labels=CHILD_LABELS)
def statefulset_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _child(event, memo)


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS)
def deployment_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _child(event, memo)


@kopf.on.event("policy", "poddisruptionbudgets", labels=CHILD_LABELS)
def pdb_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _child(event, memo)


@kopf.on.event("autoscaling", "horizontalpodautoscalers", labels=CHILD_LABELS)
def hpa_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _child(event, memo)
