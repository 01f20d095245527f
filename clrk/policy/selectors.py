"""Kubernetes label selectors over agent labels, compiled to a tuple of requirements."""

from __future__ import annotations

from collections.abc import Mapping

from clrk.api.resources import LabelSelector

Requirement = tuple[str, str, frozenset[str]]  # (operator, key, values)
Selector = tuple[Requirement, ...]


def compile_selector(selector: LabelSelector | None) -> Selector | None:
    """None when the selector selects every agent (absent or empty)."""
    if selector is None:
        return None
    reqs: list[Requirement] = [("In", k, frozenset((v,))) for k, v in selector.match_labels.items()]
    reqs += [(e.operator, e.key, frozenset(e.values)) for e in selector.match_expressions]
    return tuple(reqs) or None


def selects(selector: Selector | None, labels: Mapping[str, str]) -> bool:
    if selector is None:
        return True
    for op, key, values in selector:
        if op == "In":
            if labels.get(key) not in values:
                return False
        elif op == "NotIn":
            # Kubernetes semantics: an agent without the label is selected by NotIn.
            if key in labels and labels[key] in values:
                return False
        elif op == "Exists":
            if key not in labels:
                return False
        elif key in labels:  # DoesNotExist
            return False
    return True
