"""kopf handlers: thin glue between kopf's events and :class:`Reconciler` (``register(settings)`` adds them).

- DuplexModel create / update / resume, and a periodic resync timer: full level-based reconcile.
- Child events (anything labelled ``app.kubernetes.io/managed-by=duplex-operator``, of every watched kind in
  :data:`duplex.operator.children.CHILDREN`): repair drift at once, and refresh the model's status when a
  workload reports new readiness.

No delete handler and no finalizer: children carry owner references, so deleting a DuplexModel
garbage-collects them, even while the operator is down. kopf's bookkeeping goes to annotations (the status
schema is structural, so a ``status.kopf`` field would be pruned).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from .children import CHILDREN, STATUS_KINDS
from .kube import Kube, load_api_client
from .naming import GROUP, MANAGED_BY, MANAGED_BY_LABEL, MODEL_LABEL, PLURAL, VERSION
from .reconcile import Reconciler
from .settings import OperatorSettings

CHILD_LABELS = {MANAGED_BY_LABEL: MANAGED_BY}


def _reconciler(memo: kopf.Memo) -> Reconciler:
    r: Reconciler = memo["reconciler"]
    return r


def reconcile_model(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    error = _reconciler(memo).reconcile(dict(body))
    if error:
        raise kopf.TemporaryError(error, delay=5)


def resync_model(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _reconciler(memo).reconcile(dict(body))


def child_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    obj = event["object"]
    labels = (obj.get("metadata") or {}).get("labels") or {}
    model = labels.get(MODEL_LABEL)
    if not model:
        return
    _reconciler(memo).child_changed(event.get("type"), dict(obj), model, refresh=obj.get("kind") in STATUS_KINDS)


def register(config: OperatorSettings) -> None:
    """Register the handlers with kopf (once per process, before ``kopf.run``), configured by ``config``."""

    @kopf.on.startup()
    def configure(
        settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
    ) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        settings.persistence.finalizer = f"{GROUP}/finalizer"
        settings.execution.max_workers = config.workers
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 300
        kube = Kube(load_api_client(config.kubeconfig, pool_size=config.workers * 2))
        apis = kube.api_versions()
        logger.info("rendering PodDisruptionBudgets as %s, HPAs as %s", apis.pdb, apis.hpa)
        memo["reconciler"] = Reconciler(kube, apis)

    for on in (kopf.on.resume, kopf.on.create, kopf.on.update):
        on(GROUP, VERSION, PLURAL)(reconcile_model)
    kopf.timer(GROUP, VERSION, PLURAL, interval=config.resync_seconds, initial_delay=config.resync_seconds, idle=0)(
        resync_model
    )
    for child in CHILDREN:
        if child.watched:
            kopf.on.event(*child.watch_resource(), labels=CHILD_LABELS, id=f"{child.plural}_event")(child_event)
