"""Plain documents built in one walk: the same documents the strict loader makes, or
None wherever they might differ (the loader then reads the text the general way)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from clrk.api import load_text
from clrk.api.loader import _StrictLoader
from clrk.api.yaml_plain import documents

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def general(text: str) -> list[object]:
    """The strict loader's documents; where it takes the text, they are PyYAML's own
    (the pure Python SafeLoader's: no libyaml, no cached tag resolution)."""
    docs = list(yaml.load_all(text, Loader=_StrictLoader))
    assert same(docs, list(yaml.load_all(text, Loader=yaml.SafeLoader)))
    return docs


def same(a: object, b: object) -> bool:
    """Equal and of the same types all the way down (True == 1 in Python)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)  # type: ignore[index]
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))  # type: ignore[arg-type]
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)  # type: ignore[arg-type]
    return a == b


PLAIN = [
    "a: 1\n",
    "",
    "---\n---\na: b\n...\n",
    "a: [yes, no, on, off, ~, null, '', 0x1f, 0o17, 017, 1_000, 12:30, -.inf, .nan, 1e3]\n",
    "a: {b: [1, {c: d}], e: 'quoted: yes', f: \"2\"}\n",
    "!!str a: !!int '3'\nb: !!float '1'\nc: !!bool 'yes'\nd: !!null ''\n",
    "'<<': plain string key\n'=': another\n",
    "a: &anchor-without-alias x\n",
    "- |\n  literal\n  text\n- >\n  folded\n",
]

NOT_PLAIN = {
    "alias": "a: &x [1, 2]\nb: *x\n",
    "alias of a scalar": "a: &x s\nb: *x\n",
    "alias as a key": "a: &x k\n*x : v\n",
    "merge key": "<<: {x: 1}\n",
    "merge key of an alias": "base: &b {x: 1}\nd:\n  <<: *b\n",
    "duplicate key": "a: 1\na: 2\n",
    "duplicate key of another tag": "1: a\n'1': b\n",
    "int key": "443: tls\n",
    "null key": "~: x\n",
    "complex key": "? [a, b]\n: c\n",
    "value key": "=: x\n",
    "timestamp": "a: 2001-12-14\n",
    "binary": "a: !!binary aGk=\n",
    "set": "a: !!set {x, y}\n",
    "unknown tag": "a: !thing x\n",
    "python tag": "a: !!python/name:os.system x\n",
    "bad int": "a: !!int x\n",
    "invalid": "a: [unclosed\n",
    "tab": "a:\n\t- b\n",
    "deep": "[" * 20000 + "]" * 20000,
    "lone surrogate": "a: \udc80\n",
    "lone surrogate in a later document": "a: b\n---\nc: \ud800\n",
    "int that cannot read": "a: !!int '-'\n",
    "sexagesimal float too large": "a: 1" + ":00" * 200 + ".5\n",
}


@pytest.mark.parametrize("text", PLAIN)
def test_a_plain_stream_is_built_in_one_walk_as_the_strict_loader_builds_it(text):
    built = documents(text, _StrictLoader)
    assert built is not None and same(built, general(text))


def test_every_example_manifest_is_plain():
    files = sorted(EXAMPLES.rglob("*.yaml"))
    assert files
    for path in files:
        text = path.read_text()
        built = documents(text, _StrictLoader)
        assert built is not None and same(built, general(text)), path


@pytest.mark.parametrize("text", NOT_PLAIN.values(), ids=NOT_PLAIN.keys())
def test_anything_else_is_left_to_the_general_loader(text):
    assert documents(text, _StrictLoader) is None


def test_what_is_not_plain_still_loads_or_fails_as_before():
    # The general way decides: the same findings as before the one-walk path existed.
    assert "aliases" in load_text(NOT_PLAIN["alias of a scalar"]).findings[0].message
    assert (
        "duplicate key '1'"
        in load_text(NOT_PLAIN["duplicate key of another tag"]).findings[0].message
    )
    (merged,) = load_text("<<: {kind: X}\n").findings
    assert "unknown kind 'X'" in merged.message


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.sampled_from(["yes", "No", "0x1f", "017", "1_0", "1:20", ".inf", "~", "<<", "=", "*a"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(values, max_size=3), st.booleans(), st.data())
def test_documents_are_those_of_the_strict_loader_or_none(docs, flow, data):
    if docs and data.draw(st.booleans()):
        docs.append([docs[0], docs[0]])  # a shared object: yaml writes an anchor and an alias
    text = yaml.dump_all(docs, default_flow_style=flow, allow_unicode=data.draw(st.booleans()))
    try:
        expected = general(text)
    except yaml.YAMLError:
        assert documents(text, _StrictLoader) is None
        return
    built = documents(text, _StrictLoader)
    assert built is None or same(built, expected)
