"""The ``DuplexModel`` CustomResourceDefinition, generated from the typed spec (``duplex crd`` prints it)."""

from __future__ import annotations

from typing import Any

from .naming import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from .schema import openapi_schema
from .spec import DuplexModelSpec
from .status import DuplexModelStatus

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas", "description": "Replicas ready"},
    {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas", "description": "Replicas desired"},
    {"name": "Shards", "type": "integer", "jsonPath": ".status.shardPlan.shards", "description": "Ranks per replica"},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "description": "Where clients connect"},
    {
        "name": "P50",
        "type": "number",
        "jsonPath": ".status.measuredTurnTakingP50S",
        "description": "Last measured turn-taking p50 (s)",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _without_defaults(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_without_defaults(v) for v in node]
    return node


def crd_schema() -> dict[str, Any]:
    """``openAPIV3Schema`` of the DuplexModel object."""
    spec = openapi_schema(DuplexModelSpec)
    status = _without_defaults(openapi_schema(DuplexModelStatus))  # only the operator writes status
    return {
        "type": "object",
        "description": spec.pop("description", ""),
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "required": ["spec"],
    }


def crd_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "listKind": f"{KIND}List",
                "categories": ["duplex", "all"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": crd_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def kopf_peering_crd() -> dict[str, Any]:
    """kopf's ``ClusterKopfPeering`` CRD: install it (and one ClusterKopfPeering object named like the
    operator's ``--peering``) so that only one operator replica is active per cluster."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "clusterkopfpeerings.kopf.dev"},
        "spec": {
            "scope": "Cluster",
            "group": "kopf.dev",
            "names": {"kind": "ClusterKopfPeering", "plural": "clusterkopfpeerings", "singular": "clusterkopfpeering"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                        }
                    },
                }
            ],
        },
    }
