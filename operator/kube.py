"""The operator's Kubernetes calls, through the ``kubernetes`` package's :class:`DynamicClient`.

Resources are found by discovery (the child kinds are listed in :mod:`duplex.operator.children`); every apply
is a server-side apply with ``force``, so it is idempotent and repairs hand edits of the fields the operator
owns. Plain dicts in and out (the render functions produce dicts); API errors are the client's ``ApiException``
subclasses.
"""

from __future__ import annotations

import threading
from typing import Any

from kubernetes import client, config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError
from kubernetes.dynamic.resource import Resource

from .children import ApiVersions, versioned_kinds
from .naming import API_VERSION, KIND, MODEL_LABEL

FIELD_MANAGER = "duplex-operator"
TIMEOUT_S = 30
"""Per-request timeout: a hung API call must not hold a model's lock forever."""


def load_api_client(kubeconfig: str | None = None, pool_size: int = 32) -> client.ApiClient:
    """In-cluster config when running in a pod, else the kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``)."""
    cfg = client.Configuration()
    try:
        if kubeconfig:
            raise config.ConfigException("explicit kubeconfig")
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
    cfg.connection_pool_maxsize = pool_size
    return client.ApiClient(cfg)


def _dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = obj.to_dict()
    return out


class Kube:
    """The few API calls the operator (and its tests) make."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.dynamic: Any = DynamicClient(api)  # type: ignore[no-untyped-call]  # the package ships no types
        self._resources: dict[tuple[str, str], Resource] = {}
        self._guard = threading.Lock()  # discovery is shared by the reconcile threads

    # --- discovery ----------------------------------------------------------------------------------
    def resource(self, api_version: str, kind: str) -> Resource:
        """The discovered resource of ``kind`` in ``api_version`` (memoised)."""
        with self._guard:
            found = self._resources.get((api_version, kind))
            if found is None:
                found = self.dynamic.resources.get(api_version=api_version, kind=kind)
                self._resources[(api_version, kind)] = found
            return found

    def served_group_versions(self, kind: str | None = None) -> set[str]:
        """``group/version`` strings the server offers (those serving ``kind``, when given)."""
        with self._guard:
            found = self.dynamic.resources.search(**({"kind": kind} if kind else {}))
        return {r.group_version for r in found}

    def api_versions(self) -> ApiVersions:
        """Versions to render the kinds served in several (PodDisruptionBudgets, HPAs) in, by what this server
        serves."""
        served: set[str] = set()
        for kind in versioned_kinds():
            served |= self.served_group_versions(kind)
        return ApiVersions.from_served(served)

    # --- objects --------------------------------------------------------------------------------------
    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply (create or update) of one object, taking ownership of its fields."""
        res = self.resource(manifest["apiVersion"], manifest["kind"])
        return _dict(
            self.dynamic.server_side_apply(
                res, body=manifest, field_manager=FIELD_MANAGER, force_conflicts=True, _request_timeout=TIMEOUT_S
            )
        )

    def create(self, manifest: dict[str, Any], namespace: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        res = self.resource(manifest["apiVersion"], manifest["kind"])
        return _dict(
            self.dynamic.create(
                res, body=manifest, namespace=namespace, dry_run="All" if dry_run else None, _request_timeout=TIMEOUT_S
            )
        )

    def get(
        self, api_version: str, kind: str, namespace: str, name: str, subresource: str | None = None
    ) -> dict[str, Any] | None:
        res = self.resource(api_version, kind)
        target = res.subresources[subresource] if subresource else res
        try:
            return _dict(self.dynamic.get(target, name=name, namespace=namespace, _request_timeout=TIMEOUT_S))
        except NotFoundError:
            return None

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        body: dict[str, Any],
        subresource: str | None = None,
        content_type: str = "application/merge-patch+json",
    ) -> dict[str, Any]:
        res = self.resource(api_version, kind)
        target = res.subresources[subresource] if subresource else res
        return _dict(
            self.dynamic.patch(
                target, body=body, name=name, namespace=namespace, content_type=content_type, _request_timeout=TIMEOUT_S
            )
        )

    def list_objects(self, api_version: str, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        out = self.dynamic.get(
            self.resource(api_version, kind), namespace=namespace, label_selector=selector, _request_timeout=TIMEOUT_S
        )
        items: list[dict[str, Any]] = _dict(out).get("items") or []
        for item in items:  # lists omit apiVersion/kind on items
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def list_children(self, api_version: str, kind: str, namespace: str, model: str) -> list[dict[str, Any]]:
        return self.list_objects(api_version, kind, namespace, f"{MODEL_LABEL}={model}")

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        try:
            self.dynamic.delete(
                self.resource(api_version, kind),
                name=name,
                namespace=namespace,
                body={"propagationPolicy": "Background"},
                _request_timeout=TIMEOUT_S,
            )
        except NotFoundError:
            pass

    # --- the DuplexModel --------------------------------------------------------------------------
    def get_model(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(API_VERSION, KIND, namespace, name)

    def patch_model_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.patch(API_VERSION, KIND, namespace, name, {"status": status}, subresource="status")
