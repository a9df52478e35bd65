"""The one table of the kinds a DuplexModel owns (its children), and everything derived from it:

- the watches: :meth:`ChildKind.watch_resource` of every watched kind is a kopf event handler
  (:func:`duplex.operator.handlers.register`), and :data:`STATUS_KINDS` say which events refresh the status;
- the pruning: :func:`child_kinds` lists what the reconciler lists and deletes when no longer desired
  (:meth:`duplex.operator.reconcile.Reconciler.reconcile`);
- the RBAC: :func:`rbac_rules` are the chart ClusterRole's rules on children (charts/duplex/templates/rbac.yaml;
  tests/charts/test_chart_render.py checks the chart grants exactly these);
- the API versions: :class:`ApiVersions` picks, for a kind served in several versions, the one the server
  serves (discovery at operator start) or a Kubernetes release serves (``duplex render --kube-version``).

A kind the renderers produce that is missing here would be neither watched, pruned nor granted:
tests/operator/test_operator_render.py renders every optional part and checks each kind and version is here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

MIN_MINOR = 20
"""Kubernetes 1.20: the oldest release the operator supports (``duplex render --kube-version`` refuses older)."""


@dataclasses.dataclass(frozen=True)
class ApiVersion:
    """One ``group/version`` a kind is served in, and the first Kubernetes 1.x minor release serving it."""

    name: str
    since: int = MIN_MINOR


@dataclasses.dataclass(frozen=True)
class ChildKind:
    """One kind of child: how it is addressed, whether it is watched, what RBAC it needs."""

    kind: str
    group: str
    """API group ("" = the core group)."""
    plural: str
    versions: tuple[ApiVersion, ...]
    """Newest first. Where there are several, the first one the server serves is rendered and listed, else the
    last (served by every supported release); :class:`ApiVersions` holds the choice in ``version_field``."""
    version_field: str | None = None
    """The :class:`ApiVersions` field holding the version chosen for a kind with several; None with one."""
    watched: bool = True
    """A kopf event handler repairs drift at once (re-applies a deleted or edited child); the resync timer
    catches anything else."""
    refreshes_status: bool = False
    """An event of such a child also refreshes its model's status (workload readiness, a LoadBalancer's address)."""

    @property
    def preferred(self) -> str:
        return self.versions[0].name

    @property
    def verbs(self) -> tuple[str, ...]:
        """RBAC verbs: create and patch (server-side apply creates or updates), get and list (reads and the
        pruning's listing), watch (when watched), delete (pruning)."""
        return ("get", "list", *(("watch",) if self.watched else ()), "create", "patch", "delete")

    def watch_resource(self) -> tuple[str, ...]:
        """kopf's resource spec: ``(group, version, plural)`` without empty parts (``("v1", "configmaps")``).
        A kind served in several versions is watched in the server's preferred one (events are matched to the
        desired children by kind and name, so the version does not matter)."""
        version = self.preferred.rpartition("/")[2] if len(self.versions) == 1 else ""
        return tuple(part for part in (self.group, version, self.plural) if part)

    def served_version(self, served: set[str]) -> str:
        """The first of :attr:`versions` in ``served`` (``group/version`` strings from discovery), else the last."""
        return next((v.name for v in self.versions if v.name in served), self.versions[-1].name)

    def version_for_minor(self, minor: int | None) -> str:
        """The newest version Kubernetes 1.``minor`` serves (None: a release after 1.x, the newest)."""
        return next((v.name for v in self.versions if minor is None or v.since <= minor), self.versions[-1].name)


CONFIG_MAP = ChildKind("ConfigMap", "", "configmaps", (ApiVersion("v1"),))
SERVICE = ChildKind("Service", "", "services", (ApiVersion("v1"),), refreshes_status=True)
STATEFUL_SET = ChildKind("StatefulSet", "apps", "statefulsets", (ApiVersion("apps/v1"),), refreshes_status=True)
DEPLOYMENT = ChildKind("Deployment", "apps", "deployments", (ApiVersion("apps/v1"),), refreshes_status=True)
POD_DISRUPTION_BUDGET = ChildKind(
    "PodDisruptionBudget",
    "policy",
    "poddisruptionbudgets",
    (ApiVersion("policy/v1", since=21), ApiVersion("policy/v1beta1")),
    version_field="pdb",
)
HORIZONTAL_POD_AUTOSCALER = ChildKind(
    "HorizontalPodAutoscaler",
    "autoscaling",
    "horizontalpodautoscalers",
    (ApiVersion("autoscaling/v2", since=23), ApiVersion("autoscaling/v2beta2")),
    version_field="hpa",
)
SERVICE_ACCOUNT = ChildKind("ServiceAccount", "", "serviceaccounts", (ApiVersion("v1"),))
ROLE = ChildKind("Role", "rbac.authorization.k8s.io", "roles", (ApiVersion("rbac.authorization.k8s.io/v1"),))
ROLE_BINDING = ChildKind(
    "RoleBinding", "rbac.authorization.k8s.io", "rolebindings", (ApiVersion("rbac.authorization.k8s.io/v1"),)
)
NETWORK_POLICY = ChildKind(
    "NetworkPolicy", "networking.k8s.io", "networkpolicies", (ApiVersion("networking.k8s.io/v1"),)
)

CHILDREN: tuple[ChildKind, ...] = (
    CONFIG_MAP,
    SERVICE,
    SERVICE_ACCOUNT,
    STATEFUL_SET,
    DEPLOYMENT,
    POD_DISRUPTION_BUDGET,
    HORIZONTAL_POD_AUTOSCALER,
    ROLE,
    ROLE_BINDING,
    NETWORK_POLICY,
)
"""Every kind the operator creates for a DuplexModel (no Secrets: it only mounts the ones a spec names). The
front pods' Role grants reads of EndpointSlices (:data:`GRANTED_READS`), which the operator must hold itself."""

GRANTED_READS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("discovery.k8s.io", "endpointslices", ("get", "list", "watch")),
)
"""(group, resource, verbs) the operator's rendered Roles grant (the front's session picker watches the engines'
EndpointSlices): Kubernetes lets a subject create a Role only with permissions it holds, so the operator's own
RBAC has these too (charts/duplex/templates/rbac.yaml)."""

STATUS_KINDS = frozenset(c.kind for c in CHILDREN if c.refreshes_status)


@dataclasses.dataclass(frozen=True)
class ApiVersions:
    """The version each kind with several (``ChildKind.version_field``) is rendered, listed and pruned in."""

    pdb: str = POD_DISRUPTION_BUDGET.preferred
    """``policy/v1`` (Kubernetes >= 1.21) or ``policy/v1beta1``."""
    hpa: str = HORIZONTAL_POD_AUTOSCALER.preferred
    """``autoscaling/v2`` (Kubernetes >= 1.23) or ``autoscaling/v2beta2``."""

    def of(self, child: ChildKind) -> str:
        """``child``'s apiVersion."""
        return str(getattr(self, child.version_field)) if child.version_field else child.preferred

    @classmethod
    def from_served(cls, served: set[str]) -> ApiVersions:
        """Pick from the ``group/version`` strings the server lists in discovery."""
        return cls(**{c.version_field: c.served_version(served) for c in CHILDREN if c.version_field})

    @classmethod
    def for_kube_version(cls, version: str) -> ApiVersions:
        """What a cluster of ``version`` (``1.20``, ``v1.29.3``) serves, for rendering without one."""
        try:
            major, minor = (int(p) for p in version.lstrip("v").split(".")[:2])
        except ValueError:
            raise ValueError(f"--kube-version {version!r}: expected MAJOR.MINOR, e.g. 1.29") from None
        if (major, minor) < (1, MIN_MINOR):
            raise ValueError(f"--kube-version {version!r}: Kubernetes 1.{MIN_MINOR} or newer is required")
        release = minor if major == 1 else None
        return cls(**{c.version_field: c.version_for_minor(release) for c in CHILDREN if c.version_field})


def child_kinds(apis: ApiVersions) -> list[tuple[str, str]]:
    """(apiVersion, kind) of every child kind, for listing and pruning."""
    return [(apis.of(c), c.kind) for c in CHILDREN]


def versioned_kinds() -> list[str]:
    """Kinds whose version the server decides (discovery asks which of their versions it serves)."""
    return [c.kind for c in CHILDREN if c.version_field]


def rbac_rules() -> list[dict[str, Any]]:
    """RBAC rules granting exactly the table's verbs on every child kind (one rule per API group and verbs)."""
    grouped: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for c in CHILDREN:
        grouped.setdefault((c.group, c.verbs), []).append(c.plural)
    return [{"apiGroups": [g], "resources": plurals, "verbs": list(verbs)} for (g, verbs), plurals in grouped.items()]
