"""object_statuses and kind aliases: pure, over texts."""

from __future__ import annotations

import pytest

from clrk_xds.admin_apply import load_and_compile_texts
from clrk_xds.admin_status import ALL_KINDS, kinds_for, object_statuses
from tests.cli.admin_harness import GATEWAY, route
from tests.xds.test_admin import BAD


def conds(status):
    return [(c.type, c.status, c.reason) for c in status.conditions]


def test_kinds():
    assert kinds_for("") == ALL_KINDS
    assert kinds_for("Routes") == ("EgressL4Route",)
    assert set(kinds_for("agents")) == {"DaemonAgent", "TaskAgent"}
    with pytest.raises(ValueError, match="unknown kind"):
        kinds_for("pods")


def test_accepted_and_programmed():
    dangling = (
        route("x.example.com")
        .replace("name: gw}", "name: nope}")
        .replace("{name: api}", "{name: lost}")
    )
    loaded = load_and_compile_texts([("g.yaml", GATEWAY), ("r.yaml", route("a.example.com")),
                                     ("d.yaml", dangling)])  # fmt: skip
    statuses = {s.name: s for s in object_statuses(loaded, in_force=True)}
    assert conds(statuses["gw"]) == [
        ("Accepted", True, "Accepted"),
        ("Programmed", True, "Programmed"),
    ]
    assert conds(statuses["api"])[0] == ("Accepted", True, "Accepted")
    assert conds(statuses["lost"]) == [
        ("Accepted", False, "NoMatchingParent"),
        ("Programmed", False, "NotAccepted"),
    ]
    assert statuses["lost"].last_errors[0].startswith("d.yaml: document 1: EgressL4Route/lost:")
    pending = {s.name: s for s in object_statuses(loaded, in_force=False)}
    assert conds(pending["gw"])[1] == ("Programmed", False, "Pending")
    assert [s.kind for s in object_statuses(loaded, in_force=True, kinds=("TaskAgent",))] == [
        "TaskAgent"
    ]


def test_invalid_documents_are_listed_and_block_programming():
    loaded = load_and_compile_texts([("g.yaml", GATEWAY), ("bad.yaml", BAD)])
    assert loaded.blocked
    statuses = {s.name: s for s in object_statuses(loaded, in_force=True)}
    assert conds(statuses["api"]) == [
        ("Accepted", False, "Invalid"),
        ("Programmed", False, "NotAccepted"),
    ]
    assert statuses["api"].namespace == "default" and len(statuses["api"].last_errors) == 2
    assert conds(statuses["gw"])[1] == ("Programmed", False, "Invalid")


def test_an_agent_with_a_dangling_gateway_is_not_accepted():
    agent = GATEWAY.split("---")[1].replace("gatewayRef: gw", "gatewayRef: nope")
    loaded = load_and_compile_texts([("a.yaml", agent)])
    [status] = object_statuses(loaded, in_force=True)
    assert conds(status)[0] == ("Accepted", False, "InvalidReference")
