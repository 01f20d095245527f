"""Property: invalid random manifests produce validation findings, never another exception.

Two sources of bad input: valid manifests with one random mutation (a deleted field,
a value of the wrong type or shape, an unknown field), and arbitrary YAML text.
"""

from __future__ import annotations

import copy
import json

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from clrk.api import load_objects, load_text
from clrk.api.loader import ManifestCache
from clrk.policy import compile_policies
from tests.conftest import EXAMPLES


def _example_documents() -> list[dict]:
    docs = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


SEEDS = _example_documents()
junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.sampled_from(["*", "*.", "a.*.b", "10.0.0.1/8", "ünï.com", "0", "TCP", "", "::"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


@st.composite
def mutated(draw):
    doc = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    path = draw(st.sampled_from(list(_paths(doc))))
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    if not path:
        return draw(junk) if action == "replace" else doc
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "replace":
        parent[last] = draw(junk)
    elif action == "delete":
        del parent[last]
    elif isinstance(parent[last], dict):
        parent[last][draw(st.text(min_size=1, max_size=10))] = draw(junk)
    else:
        parent[last] = draw(junk)
    return doc


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(mutated(), min_size=1, max_size=4))
def test_mutated_manifests_give_findings_and_never_raise(docs):
    loaded = load_objects(docs)
    for finding in loaded.findings:
        assert finding.line()  # every finding renders
    # What did validate compiles, and any object-level problems are findings too.
    compile_policies(loaded.resources, rejected=loaded.rejected)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
def test_arbitrary_text_is_never_more_than_findings(text):
    loaded = load_text(text)
    compile_policies(loaded.resources, rejected=loaded.rejected)


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.sampled_from(["", "apiVersion: clrk.apoxy.dev/v1alpha1\nkind: EgressL4Route\n"]),
    body=st.text(alphabet="{}[]:,-*&!|>'\"#\n ab01.", max_size=120),
)
def test_yaml_shaped_noise_is_never_more_than_findings(prefix, body):
    load_text(prefix + body)


def never_more_than_findings(text: str) -> None:
    """The loader's promise on any text, through both of its ways of reading a file."""
    for findings in (load_text(text).findings, ManifestCache().file("f", text).problems):
        for finding in findings:
            assert finding.line()


# Text a scalar tag's constructor may choke on: numbers, signs, separators, words.
numberish = st.text(alphabet="0123456789+-_.:eExXoObBn ~yYtTfF", max_size=16)


@settings(max_examples=400, deadline=None)
@given(
    tag=st.sampled_from(["!!int", "!!float", "!!bool", "!!timestamp", "!!binary", "!!null"]),
    value=st.text(max_size=20) | numberish,
    style=st.sampled_from(["double", "single", "plain"]),
)
def test_any_text_under_a_scalar_tag_is_never_more_than_findings(tag, value, style):
    if style == "double":
        scalar = json.dumps(value)  # every JSON string is a YAML double-quoted scalar
    elif style == "single":
        scalar = "'" + value.replace("'", "''") + "'"
    else:
        scalar = value
    never_more_than_findings(f"kind: X\nspec: {tag} {scalar}\n---\n- [{tag} {scalar}]\n")


@settings(max_examples=100, deadline=None)
@given(
    sign=st.sampled_from(["", "-", "+"]),
    head=st.integers(0, 10**6),
    groups=st.lists(st.integers(0, 59), min_size=1, max_size=400),
    fraction=st.sampled_from(["", ".", ".5", ".5_0"]),
)
@example(sign="", head=1, groups=[0] * 200, fraction=".5")
def test_a_long_untagged_sexagesimal_number_is_never_more_than_findings(
    sign, head, groups, fraction
):
    number = sign + str(head) + "".join(f":{g:02d}" for g in groups) + fraction
    never_more_than_findings(f"kind: X\nspec: {number}\n")


def test_a_mutation_that_breaks_a_field_is_reported_not_swallowed():
    doc = copy.deepcopy(next(d for d in SEEDS if d["kind"] == "EgressL4Route"))
    doc["spec"]["rules"][0]["matches"][0]["ports"] = [{"port": "443"}]
    loaded = load_objects([doc])
    assert [f.field for f in loaded.errors] == ["spec.rules[0].matches[0].ports[0].port"]
