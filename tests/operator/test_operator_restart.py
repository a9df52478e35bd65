"""The operator SIGKILLed mid-reconcile with 10 DuplexModels applied at once, then started again: every model
converges (status for its generation, every child present) and no model has a child twice."""

from __future__ import annotations

from duplex_cluster_plugin import OperatorProcess
from operator_faults import restart_mid_reconcile

from duplex.operator.kube import Kube


def test_operator_killed_mid_reconcile_converges_without_duplicates(
    duplex_operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    run = restart_mid_reconcile(duplex_operator, kube, namespace, n=10, kill_at=0.1)
    assert run.converged_at_kill < 10, "the kill came after the reconcile had finished: not mid-reconcile"
    assert run.children_at_kill < 10 * run.children_per_model
    assert run.duplicates == [] and run.missing == []
