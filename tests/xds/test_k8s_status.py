"""What an object's status should say: Accepted from validation, Programmed from what
Envoy did with the snapshot in force, observedGeneration; written only when changed."""

from __future__ import annotations

from clrk.api import load_objects
from clrk_xds.admin_status import Cond
from clrk_xds.k8s_status import (
    Ack,
    desired_conditions,
    gateways_of,
    same_status,
    status_body,
)
from clrk_xds.provider import default_translator, plan
from tests.k8s.objects import agent, deny, gateway, route


def planned(*objects):
    return plan(load_objects(objects), default_translator())


def conditions(p, ack=lambda node: Ack("acked"), in_force=lambda key: True):
    return {
        key: [(c.type, c.status, c.reason) for c in conds]
        for key, conds in desired_conditions(p, in_force, ack).items()
    }


def test_each_object_feeds_the_gateways_it_names_or_whose_routes_it_targets():
    cross = route("cross")
    cross["spec"]["parentRefs"] = [{"name": "other", "namespace": "ops"}]
    p = planned(
        gateway(), gateway("other", namespace="ops"), route(), deny(), agent(gateway="ops/other"),
        cross,
    )  # fmt: skip
    resources = {(r.kind, r.name): r for r in p.loaded.load.resources}
    routes = {(r.namespace, r.name): r for r in resources.values() if r.kind == "EgressL4Route"}
    assert gateways_of(resources[("EgressGateway", "gw")], routes) == {"default/gw"}
    assert gateways_of(resources[("EgressL4Route", "r1")], routes) == {"default/gw"}
    assert gateways_of(resources[("EgressL4Route", "cross")], routes) == {"ops/other"}
    assert gateways_of(resources[("EgressDenyPolicy", "no-paste")], routes) == {"default/gw"}
    assert gateways_of(resources[("TaskAgent", "coder")], routes) == {"ops/other"}


def test_programmed_waits_for_the_ack_and_carries_envoys_nack_message():
    p = planned(gateway(), route())
    pending = conditions(p, ack=lambda node: Ack("pending"))
    assert pending[("EgressL4Route", "default", "r1")] == [
        ("Accepted", True, "Accepted"),
        ("Programmed", False, "Pending"),
    ]
    nacked = desired_conditions(p, lambda key: True, lambda node: Ack("nacked", "bad listener"))
    programmed = nacked[("EgressGateway", "default", "gw")][1]
    assert (programmed.status, programmed.reason) == (False, "Rejected")
    assert programmed.message == "Envoy of default/gw: bad listener"
    assert conditions(p)[("EgressGateway", "default", "gw")][1] == (
        "Programmed",
        True,
        "Programmed",
    )


def test_an_edit_behind_an_invalid_set_is_not_programmed_and_says_why():
    p = planned(gateway(), route(), route("bad", host="bad*host.example.com"))
    assert p.blocked
    got = conditions(p, in_force=lambda key: key[2] != "r1")
    assert got[("EgressL4Route", "default", "bad")] == [
        ("Accepted", False, "Invalid"),
        ("Programmed", False, "NotAccepted"),
    ]
    assert got[("EgressL4Route", "default", "r1")][1] == ("Programmed", False, "Invalid")


def test_a_route_to_a_missing_gateway_is_not_accepted_and_names_the_reference():
    p = planned(gateway(), route("lost", gateway="nowhere"))
    conds = desired_conditions(p, lambda key: True, lambda node: Ack("acked"))
    accepted = conds[("EgressL4Route", "default", "lost")][0]
    assert not accepted.status and "nowhere" in accepted.message


def test_an_unchanged_condition_keeps_its_transition_time_and_is_no_write():
    conds = (Cond("Accepted", True, "Accepted"), Cond("Programmed", False, "Pending", "wait"))
    first = status_body(conds, 1, None, now="2026-01-01T00:00:00Z")
    again = status_body(conds, 1, first, now="2026-02-02T00:00:00Z")
    assert again == first and same_status(first, again)
    done = (conds[0], Cond("Programmed", True, "Programmed"))
    later = status_body(done, 1, first, now="2026-03-03T00:00:00Z")
    assert not same_status(first, later)
    times = {c["type"]: c["lastTransitionTime"] for c in later["conditions"]}
    assert times == {"Accepted": "2026-01-01T00:00:00Z", "Programmed": "2026-03-03T00:00:00Z"}
    assert not same_status(first, status_body(conds, 2, first))  # a new generation
    assert not same_status(None, first) and not same_status({"conditions": "x"}, first)


def test_an_object_programmed_before_stays_programmed_while_a_new_snapshot_waits():
    p = planned(gateway(), route())
    got = desired_conditions(
        p, lambda key: True, lambda node: Ack("pending"), lambda key: key[2] == "r1"
    )
    assert got[("EgressL4Route", "default", "r1")][1].status
    assert not got[("EgressGateway", "default", "gw")][1].status
