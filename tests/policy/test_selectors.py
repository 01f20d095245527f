"""sourceAgents label selectors (SPEC 3, EgressL4Route; SPEC 4 "sourceAgents selects
the agent"): compile_selector and selects, against Kubernetes label-selector semantics.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clrk.api.resources import LabelSelector
from clrk.policy.selectors import compile_selector, selects

PROPERTY = settings(max_examples=300, deadline=None)

DATA_PROD = {"team": "data", "tier": "prod"}


def selector(spec: dict):
    return compile_selector(LabelSelector.model_validate(spec))


def expr(key: str, operator: str, *values: str) -> dict:
    out: dict = {"key": key, "operator": operator}
    if values:
        out["values"] = list(values)
    return out


# --- compile_selector -----------------------------------------------------------------


def test_an_absent_selector_compiles_to_none_and_selects_every_agent():
    assert compile_selector(None) is None
    assert selects(None, {})
    assert selects(None, DATA_PROD)


def test_an_empty_selector_compiles_to_none_and_selects_every_agent():
    assert selector({}) is None
    assert selector({"matchLabels": {}, "matchExpressions": []}) is None
    assert selects(selector({}), {})


def test_match_labels_compile_to_single_value_in_requirements():
    assert selector({"matchLabels": {"team": "data", "tier": "prod"}}) == (
        ("In", "team", frozenset({"data"})),
        ("In", "tier", frozenset({"prod"})),
    )


def test_match_expressions_compile_after_match_labels_with_their_values_as_a_set():
    compiled = selector(
        {
            "matchLabels": {"team": "data"},
            "matchExpressions": [
                expr("tier", "In", "prod", "staging", "prod"),
                expr("env", "NotIn", "dev"),
                expr("owner", "Exists"),
                expr("legacy", "DoesNotExist"),
            ],
        }
    )
    assert compiled == (
        ("In", "team", frozenset({"data"})),
        ("In", "tier", frozenset({"prod", "staging"})),
        ("NotIn", "env", frozenset({"dev"})),
        ("Exists", "owner", frozenset()),
        ("DoesNotExist", "legacy", frozenset()),
    )


def test_a_compiled_selector_is_hashable_and_immutable():
    compiled = selector({"matchExpressions": [expr("tier", "In", "prod")]})
    assert hash(compiled) == hash(selector({"matchExpressions": [expr("tier", "In", "prod")]}))


# --- selects --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "labels", "expected"),
    [
        ({"matchLabels": {"team": "data"}}, DATA_PROD, True),
        ({"matchLabels": {"team": "data"}}, {"team": "web"}, False),
        ({"matchLabels": {"team": "data"}}, {}, False),
        ({"matchLabels": {"team": "data"}}, {"Team": "data"}, False),
        ({"matchLabels": {"team": "data"}}, {"team": "Data"}, False),
        ({"matchLabels": {"team": "data", "tier": "prod"}}, DATA_PROD, True),
        ({"matchLabels": {"team": "data", "tier": "prod"}}, {"team": "data"}, False),
        ({"matchLabels": {"team": ""}}, {"team": ""}, True),
        ({"matchLabels": {"team": ""}}, {}, False),
        ({"matchExpressions": [expr("tier", "In", "prod", "staging")]}, DATA_PROD, True),
        ({"matchExpressions": [expr("tier", "In", "prod", "staging")]}, {"tier": "dev"}, False),
        ({"matchExpressions": [expr("tier", "In", "prod")]}, {}, False),
        ({"matchExpressions": [expr("tier", "NotIn", "dev")]}, DATA_PROD, True),
        ({"matchExpressions": [expr("tier", "NotIn", "prod")]}, DATA_PROD, False),
        ({"matchExpressions": [expr("tier", "NotIn", "prod")]}, {}, True),
        ({"matchExpressions": [expr("tier", "NotIn", "prod")]}, {"team": "data"}, True),
        ({"matchExpressions": [expr("tier", "NotIn", "")]}, {"tier": ""}, False),
        ({"matchExpressions": [expr("tier", "Exists")]}, DATA_PROD, True),
        ({"matchExpressions": [expr("tier", "Exists")]}, {"tier": ""}, True),
        ({"matchExpressions": [expr("tier", "Exists")]}, {"team": "data"}, False),
        ({"matchExpressions": [expr("tier", "DoesNotExist")]}, DATA_PROD, False),
        ({"matchExpressions": [expr("tier", "DoesNotExist")]}, {"tier": ""}, False),
        ({"matchExpressions": [expr("tier", "DoesNotExist")]}, {}, True),
        (
            {
                "matchLabels": {"team": "data"},
                "matchExpressions": [expr("tier", "In", "prod")],
            },
            DATA_PROD,
            True,
        ),
        (
            {
                "matchLabels": {"team": "data"},
                "matchExpressions": [expr("tier", "In", "staging")],
            },
            DATA_PROD,
            False,
        ),
        (
            {"matchExpressions": [expr("tier", "Exists"), expr("tier", "NotIn", "prod")]},
            DATA_PROD,
            False,
        ),
        (
            {"matchExpressions": [expr("tier", "In", "prod"), expr("tier", "In", "staging")]},
            DATA_PROD,
            False,
        ),
        (
            {"matchExpressions": [expr("clrk.apoxy.dev/tier", "In", "prod")]},
            {"clrk.apoxy.dev/tier": "prod"},
            True,
        ),
        (
            {"matchExpressions": [expr("clrk.apoxy.dev/tier", "In", "prod")]},
            {"tier": "prod"},
            False,
        ),
    ],
)
def test_a_selector_selects_agents_by_kubernetes_semantics(spec, labels, expected):
    assert selects(selector(spec), labels) is expected


def test_not_in_selects_an_agent_that_lacks_the_key():
    assert selects(selector({"matchExpressions": [expr("tier", "NotIn", "prod")]}), {})


def test_requirements_are_anded_so_an_agent_must_satisfy_every_one():
    compiled = selector(
        {
            "matchLabels": {"team": "data"},
            "matchExpressions": [expr("tier", "Exists"), expr("legacy", "DoesNotExist")],
        }
    )
    assert selects(compiled, DATA_PROD)
    assert not selects(compiled, {**DATA_PROD, "legacy": "yes"})
    assert not selects(compiled, {"team": "data"})
    assert not selects(compiled, {"tier": "prod"})


# --- against a reimplementation -------------------------------------------------------

KEYS = ["team", "tier", "env", "clrk.apoxy.dev/owner"]
VALUES = ["data", "prod", "dev", "", "Data"]
KEY = st.sampled_from(KEYS)
VALUE = st.sampled_from(VALUES)
EXPRESSION = st.one_of(
    st.builds(
        lambda key, op, values: {"key": key, "operator": op, "values": values},
        KEY,
        st.sampled_from(["In", "NotIn"]),
        st.lists(VALUE, min_size=1, max_size=3),
    ),
    st.builds(
        lambda key, op: {"key": key, "operator": op},
        KEY,
        st.sampled_from(["Exists", "DoesNotExist"]),
    ),
)
SPEC = st.fixed_dictionaries(
    {},
    optional={
        "matchLabels": st.dictionaries(KEY, VALUE, max_size=3),
        "matchExpressions": st.lists(EXPRESSION, max_size=4),
    },
)
LABELS = st.dictionaries(KEY, VALUE, max_size=len(KEYS))


def kubernetes_selects(spec: dict, labels: dict[str, str]) -> bool:
    """Label-selector semantics as the Kubernetes API documents them."""
    for key, value in spec.get("matchLabels", {}).items():
        if key not in labels or labels[key] != value:
            return False
    for requirement in spec.get("matchExpressions", []):
        key, op = requirement["key"], requirement["operator"]
        values = set(requirement.get("values", []))
        has = key in labels
        if op == "In":
            ok = has and labels[key] in values
        elif op == "NotIn":
            ok = not has or labels[key] not in values
        elif op == "Exists":
            ok = has
        else:
            assert op == "DoesNotExist"
            ok = not has
        if not ok:
            return False
    return True


@PROPERTY
@given(SPEC, LABELS)
def test_selects_agrees_with_kubernetes_label_selector_semantics(spec, labels):
    assert selects(selector(spec), labels) is kubernetes_selects(spec, labels)


@PROPERTY
@given(SPEC, LABELS)
def test_a_selector_that_compiles_to_none_selects_everyone(spec, labels):
    compiled = selector(spec)
    if compiled is None:
        assert not spec.get("matchLabels") and not spec.get("matchExpressions")
        assert selects(compiled, labels)


@PROPERTY
@given(SPEC, LABELS, EXPRESSION)
def test_adding_a_requirement_never_selects_more_agents(spec, labels, extra):
    narrower = {**spec, "matchExpressions": [*spec.get("matchExpressions", []), extra]}
    if selects(selector(narrower), labels):
        assert selects(selector(spec), labels)
