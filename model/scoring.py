"""Accuracy by group, shared by the TimeSpeak and action-count scorers and by the tables that show them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def accuracy_by(judged: Iterable[tuple[str | int, bool]], count: str) -> dict[str, dict[str, float]]:
    """Group (value, correct) pairs by value: ``{str(value): {count: how many, "accuracy": share correct}}``,
    values in sorted order."""
    groups: dict[str | int, list[bool]] = {}
    for value, correct in judged:
        groups.setdefault(value, []).append(correct)
    return {str(v): {count: len(groups[v]), "accuracy": sum(groups[v]) / len(groups[v])} for v in sorted(groups)}


def accuracy_rows(systems: Sequence[object], groups: Sequence[tuple[str, str]], count: str) -> list[list[str]]:
    """Table rows of the systems' accuracy by group: for each (attribute, label) of ``groups`` (the attribute an
    ``accuracy_by`` result), one row per value any system has, shortest first, then by name: "label value", then
    "accuracy (count)" per system, or "—" where a system has no such group."""
    rows = []
    for attribute, label in groups:
        tables = [getattr(s, attribute) for s in systems]
        for key in sorted({k for t in tables for k in t}, key=lambda k: (len(k), k)):
            cells = [t.get(key) for t in tables]
            rows.append(
                [f"{label} {key}", *["—" if c is None else f"{c['accuracy']:.3f} ({int(c[count])})" for c in cells]]
            )
    return rows
