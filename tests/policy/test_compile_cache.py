"""The compile cache: a compile that reuses the last one's results gives exactly what a
compile from scratch gives, after any sequence of edits, and keeps nothing else."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clrk.api.loader import check_documents, validate_documents
from clrk.api.resources import Source
from clrk.policy.compile import CompileCache, compile_policies
from clrk.policy.compiled import MatchEntry
from tests.policy import strategies

API = strategies.API
CREDENTIAL = {
    "apiVersion": API,
    "kind": "EgressCredential",
    "metadata": {"name": "key"},
    "spec": {
        "header": "x-api-key",
        "placeholder": "clrk-placeholder-key",
        "source": {"file": "/run/secrets/key"},
    },
}


def plain(value: object) -> object:
    """Everything a compiled value holds, comparably (entries compare by identity)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = (f.name for f in dataclasses.fields(value) if f.init)
        return (type(value).__name__, tuple((n, plain(getattr(value, n))) for n in fields))
    if isinstance(value, Mapping):
        return tuple(sorted((repr(k), plain(v)) for k, v in value.items()))
    if isinstance(value, (tuple, list)):
        return tuple(plain(v) for v in value)
    if isinstance(value, frozenset):
        return tuple(sorted(repr(plain(v)) for v in value))
    return value


@st.composite
def pool(draw):
    """Documents to add and to replace others with: gateways (also the other one that
    routes may name, valid or not), routes, deny policies, agents and a credential."""
    docs = draw(strategies.policy_with_modes())
    other = json.loads(json.dumps(docs[0]))
    other["metadata"]["name"] = "other-gw"
    if draw(st.booleans()):  # invalid: a reference to it says so, not "does not exist"
        other["spec"]["listeners"][0]["protocol"] = "BOGUS"
    docs.append(other)
    routes = [d["metadata"]["name"] for d in docs if d["kind"] == "EgressL4Route"]
    credential = json.loads(json.dumps(CREDENTIAL))
    credential["spec"]["targetRef"] = {"name": draw(st.sampled_from(routes))}
    return [*docs, credential]


edit = st.tuples(st.sampled_from(["add", "remove", "replace", "move"]), st.integers(0, 99))
keep = st.sampled_from([True, True, True, False])  # False: every object new, as decoded


class OneFile:
    """Documents in one file, their checked forms reused while a document's place and
    text are the same (what the manifest cache does): same object, same content."""

    def __init__(self) -> None:
        self.checked: dict[tuple[int, str], tuple] = {}

    def load(self, docs: list[dict], keep: bool):
        now = {}
        for i, doc in enumerate(docs, start=1):
            key = (i, json.dumps(doc, sort_keys=True))
            hit = self.checked.get(key) if keep else None
            if hit is None:
                (hit,) = check_documents([(Source("m.yaml", i), json.loads(key[1]))])
            now[key] = hit
        self.checked = now
        return validate_documents((), list(now.values()))


def apply_edit(docs: list[dict], extra: list[dict], kind: str, at: int) -> list[dict]:
    docs = list(docs)
    pick = extra[at % len(extra)]
    if kind == "add" or not docs:
        docs.insert(at % (len(docs) + 1), pick)
    elif kind == "remove":
        del docs[at % len(docs)]
    elif kind == "replace":
        docs[at % len(docs)] = pick
    else:
        docs.append(docs.pop(at % len(docs)))  # same content, another place
    return docs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool(), pool(), st.lists(st.tuples(edit, keep), min_size=1, max_size=8))
def test_a_cached_compile_equals_one_from_scratch_after_every_edit(first, extra, edits):
    source, cache = OneFile(), CompileCache()
    docs = first
    for step, ((kind, at), keep) in enumerate([(("none", 0), True), *edits]):
        if step:
            docs = apply_edit(docs, extra, kind, at)
        loaded = source.load(docs, keep)
        rejected = frozenset(loaded.rejected)
        cached = compile_policies(loaded.resources, rejected, cache=cache)
        fresh = compile_policies(loaded.resources, rejected)
        assert plain(cached) == plain(fresh)
        # Only what this set has stays cached: no deleted object, no growth.
        live = {id(r) for r in loaded.resources}
        assert all(id(done.route) in live for done in cache.attach.last.values())
        assert all(id(g) in live for g, _listeners in cache.listeners.values())
        assert all(id(d.attachment.route) in live for d in cache.entries.values())
        routes = [r for r in loaded.resources if r.kind == "EgressL4Route"]
        assert len(cache.attach.last) == len(routes)
        assert len(cache.entries) <= sum(len(p.matches) for p in fresh.gateways.values())


def route(name: str, host: str) -> dict:
    return {
        "apiVersion": API,
        "kind": "EgressL4Route",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "rules": [{"matches": [{"destinationHostnames": [host]}]}],
        },
    }


GATEWAY = {
    "apiVersion": API,
    "kind": "EgressGateway",
    "metadata": {"name": "gw"},
    "spec": {"listeners": [{"name": "tcp", "protocol": "TCP"}]},
}
ROUTE = route("a", "a.example.com")


def test_an_unchanged_route_keeps_its_match_entries_and_a_changed_one_does_not():
    gateway = GATEWAY
    source, cache = OneFile(), CompileCache()

    def entries(*docs):
        loaded = source.load(list(docs), keep=True)
        compiled = compile_policies(loaded.resources, cache=cache)
        return {e.route: e for e in compiled.gateways[("default", "gw")].matches}

    before = entries(gateway, route("a", "a.example.com"), route("b", "b.example.com"))
    after = entries(gateway, route("a", "a.example.com"), route("b", "c.example.com"))
    assert after["default/a"] is before["default/a"]
    assert after["default/b"] is not before["default/b"]
    assert after["default/b"].hostnames == ("c.example.com",)


def test_a_route_whose_missing_gateway_was_invalid_and_is_gone_says_so_anew():
    def doc(kind: str, name: str, spec: dict) -> dict:
        return {"apiVersion": API, "kind": kind, "metadata": {"name": name}, "spec": spec}

    invalid = doc("EgressGateway", "gw", {"listeners": [{"name": "l", "protocol": "BOGUS"}]})
    route = doc(
        "EgressL4Route",
        "r",
        {"parentRefs": [{"name": "gw"}], "rules": [{"matches": [{"protocol": "TCP"}]}]},
    )
    source, cache = OneFile(), CompileCache()
    for docs, message in (
        ([route, invalid], "EgressGateway default/gw is invalid (see its own errors)"),
        ([route], "EgressGateway default/gw does not exist"),
    ):
        loaded = source.load(docs, keep=True)
        compiled = compile_policies(loaded.resources, frozenset(loaded.rejected), cache=cache)
        assert message in [f.message for f in compiled.findings]


def test_a_reordered_entry_differs_from_its_original_in_the_route_order_only():
    """Every field holds an object of its own, so one that `reordered` leaves out (a
    field added later, with a default) shows."""
    entry = MatchEntry(*(object() for _ in dataclasses.fields(MatchEntry)))
    moved = entry.reordered(7)
    assert moved.order == (7, entry.rule, entry.match)
    for field in dataclasses.fields(entry):
        if field.name != "order":
            assert getattr(moved, field.name) is getattr(entry, field.name), field.name
