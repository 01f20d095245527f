"""plan_apply: pure, over (file, text) pairs."""

from __future__ import annotations

from pathlib import Path

from clrk.policy.loaded import load_and_compile
from clrk_xds.admin_apply import PLACEHOLDER, PLACEHOLDER_TEXT, load_and_compile_texts, plan_apply
from tests.cli.admin_harness import GATEWAY, route
from tests.xds.test_admin import BAD

OPS = "/ops/gateway.yaml"
APPLIED = "/state/applied"
BASE = [(OPS, GATEWAY), (f"{APPLIED}/{PLACEHOLDER}", PLACEHOLDER_TEXT)]


def test_texts_load_like_files(tmp_path):
    (tmp_path / "a.yaml").write_text(GATEWAY)
    (tmp_path / "b.yaml").write_text(BAD)
    files = [str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")]
    from_files = load_and_compile(files)
    from_texts = load_and_compile_texts([(f, Path(f).read_text()) for f in files])
    assert [f.line() for f in from_texts.findings] == [f.line() for f in from_files.findings]
    assert from_texts.blocked == from_files.blocked
    assert len(from_texts.load.resources) == len(from_files.load.resources)


def test_a_new_resource_is_written_under_its_identity():
    plan = plan_apply(BASE, APPLIED, [("r.yaml", route("a.example.com"))])
    assert not plan.refused
    assert list(plan.writes) == ["EgressL4Route.default.api.yaml"]
    assert plan.changes == ("EgressL4Route/default/api created",)
    assert "a.example.com" in plan.writes["EgressL4Route.default.api.yaml"]


def test_a_resource_is_replaced_by_identity_and_unchanged_is_not_written():
    first = plan_apply(BASE, APPLIED, [("r.yaml", route("a.example.com"))])
    [(name, text)] = first.writes.items()
    current = [*BASE, (f"{APPLIED}/{name}", text)]
    again = plan_apply(current, APPLIED, [("x.yaml", route("a.example.com"))])
    assert (again.refused, dict(again.writes), again.changes) == (
        False,
        {},
        ("EgressL4Route/default/api unchanged",),
    )
    changed = plan_apply(current, APPLIED, [("x.yaml", route("b.example.com"))])
    assert changed.changes == ("EgressL4Route/default/api configured",)
    assert list(changed.writes) == [name]


def test_errors_refuse_and_name_the_submitted_file():
    plan = plan_apply(BASE, APPLIED, [("bad.yaml", BAD)])
    assert plan.refused and not plan.writes
    assert {f.file for f in plan.findings if f.is_error} == {"bad.yaml"}


def test_an_operator_file_of_the_same_name_elsewhere_is_not_replaced():
    # /elsewhere/EgressL4Route.default.api.yaml is not in the applied directory.
    current = [*BASE, ("/elsewhere/EgressL4Route.default.api.yaml", route("a.example.com"))]
    plan = plan_apply(current, APPLIED, [("r.yaml", route("b.example.com"))])
    assert plan.refused
    assert any("already defined" in f.message for f in plan.findings)


def test_errors_that_were_there_before_do_not_block_an_unrelated_apply():
    dangling = (
        route("x.example.com")
        .replace("name: gw}", "name: nope}")
        .replace("{name: api}", "{name: old}")
    )
    current = [*BASE, ("/ops/old.yaml", dangling)]
    plan = plan_apply(current, APPLIED, [("r.yaml", route("a.example.com"))])
    assert not plan.refused and plan.writes
    assert any(f.is_error and f.file == "/ops/old.yaml" for f in plan.findings)


def test_breaking_a_reference_elsewhere_is_refused():
    gw2 = GATEWAY.split("---")[0].replace("name: gw}", "name: gw2}")
    first = plan_apply(BASE, APPLIED, [("g.yaml", gw2)])
    [(name, text)] = first.writes.items()
    user = route("a.example.com").replace("name: gw}", "name: gw2}")
    current = [*BASE, (f"{APPLIED}/{name}", text), ("/ops/user.yaml", user)]
    renamed = gw2.replace("listeners: [{name: tcp-out", "listeners: [{name: other")
    user_with_section = user.replace("name: gw2}", "name: gw2, sectionName: tcp-out}")
    current[-1] = ("/ops/user.yaml", user_with_section)
    plan = plan_apply(current, APPLIED, [("g.yaml", renamed)])
    assert plan.refused
    assert any(f.file == "/ops/user.yaml" and f.is_error for f in plan.findings)
