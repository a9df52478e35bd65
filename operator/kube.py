"""A thin, typed Kubernetes REST layer for the handlers: server-side apply, list, delete, status patch.

Plain dicts in and out (the render functions produce dicts). Server-side apply with ``force`` makes every
apply idempotent and repairs hand edits of the fields the operator owns.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from .naming import GROUP, MODEL_LABEL, PLURAL, VERSION

FIELD_MANAGER = "duplex-operator"

PLURALS = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "StatefulSet": "statefulsets",
    "Deployment": "deployments",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "Pod": "pods",
    "DuplexModel": PLURAL,
}


def object_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{PLURALS[kind]}"
    return f"{path}/{name}" if name else path


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


class Kube:
    """The few API calls the operator makes."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    def request(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None,
                content_type: str = "application/json") -> Any:
        m, url, headers, data, _ = self.api.param_serialize(
            method=method, resource_path=path, query_params=list((query or {}).items()),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body, auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(m, url, header_params=headers, body=data, _request_timeout=30)
        raw = resp.read()  # type: ignore[no-untyped-call]
        if not 200 <= resp.status < 300:
            raise ApiException(status=resp.status, reason=resp.reason, http_resp=resp)
        return json.loads(raw) if raw else None

    # --- discovery ----------------------------------------------------------------------------------
    def served_group_versions(self) -> set[str]:
        groups = self.request("GET", "/apis")
        return {v["groupVersion"] for g in groups.get("groups", []) for v in g.get("versions", [])}

    # --- objects --------------------------------------------------------------------------------------
    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply (create or update) of one object, taking ownership of its fields."""
        meta = manifest["metadata"]
        path = object_path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        out: dict[str, Any] = self.request("PATCH", path, body=manifest, content_type="application/apply-patch+yaml",
                                           query={"fieldManager": FIELD_MANAGER, "force": "true"})
        return out

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            out: dict[str, Any] = self.request("GET", object_path(api_version, kind, namespace, name))
            return out
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def list_objects(self, api_version: str, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        out = self.request("GET", object_path(api_version, kind, namespace), query={"labelSelector": selector})
        items: list[dict[str, Any]] = out.get("items", [])
        for item in items:  # lists omit apiVersion/kind on items
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def list_children(self, api_version: str, kind: str, namespace: str, model: str) -> list[dict[str, Any]]:
        return self.list_objects(api_version, kind, namespace, f"{MODEL_LABEL}={model}")

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        try:
            self.request("DELETE", object_path(api_version, kind, namespace, name),
                         body={"propagationPolicy": "Background"})
        except ApiException as e:
            if e.status != 404:
                raise

    # --- the DuplexModel --------------------------------------------------------------------------
    def get_model(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(f"{GROUP}/{VERSION}", "DuplexModel", namespace, name)

    def patch_model_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        path = object_path(f"{GROUP}/{VERSION}", "DuplexModel", namespace, name) + "/status"
        self.request("PATCH", path, body={"status": status}, content_type="application/merge-patch+json")
