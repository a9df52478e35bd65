"""Accuracy by group (``duplex.model.scoring``), shared by the TimeSpeak and action-count scorers and tables."""

from __future__ import annotations

from dataclasses import dataclass

from duplex.model.scoring import accuracy_by, accuracy_rows


def test_accuracy_by_groups_in_value_order_with_counts() -> None:
    judged = [(10, True), (9, False), (10, False), (2, True), (10, True)]
    assert accuracy_by(judged, "questions") == {
        "2": {"questions": 1, "accuracy": 1.0},
        "9": {"questions": 1, "accuracy": 0.0},
        "10": {"questions": 3, "accuracy": 2 / 3},
    }
    assert list(accuracy_by([("typed", True), ("spoken", False)], "requests")) == ["spoken", "typed"]
    assert accuracy_by([], "requests") == {}


@dataclass
class Figures:
    by_n: dict[str, dict[str, float]]
    by_form: dict[str, dict[str, float]]


def test_accuracy_rows_put_short_keys_first_and_mark_what_a_system_lacks() -> None:
    a = Figures(accuracy_by([(10, True), (9, False)], "requests"), accuracy_by([("once", True)], "requests"))
    b = Figures(accuracy_by([(9, True), (9, True)], "requests"), {})
    rows = accuracy_rows([a, b], (("by_n", "accuracy, N ="), ("by_form", "accuracy form")), "requests")
    assert rows == [
        ["accuracy, N = 9", "0.000 (1)", "1.000 (2)"],
        ["accuracy, N = 10", "1.000 (1)", "—"],
        ["accuracy form once", "1.000 (1)", "—"],
    ]
    assert accuracy_rows([a, b], (), "requests") == []
