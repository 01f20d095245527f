"""Findings render as `FILE: document N: KIND/NAME: FIELD.PATH: message`."""

from __future__ import annotations

from clrk.api.findings import Finding, Severity, field_path


def test_a_field_path_uses_dots_for_fields_and_brackets_for_indexes():
    assert (
        field_path(("spec", "rules", 0, "matches", 2, "ports")) == "spec.rules[0].matches[2].ports"
    )
    assert field_path(()) == "<document>"


def test_an_error_line_names_file_document_object_and_field():
    f = Finding("p.yaml", 3, "EgressL4Route", "r", "spec.rules", "needs at least 1 item(s)")
    assert f.line() == "p.yaml: document 3: EgressL4Route/r: spec.rules: needs at least 1 item(s)"


def test_a_warning_line_is_prefixed_and_a_file_level_problem_says_file():
    f = Finding("d", 0, "?", "?", "<file>", "empty", Severity.WARNING)
    assert f.line() == "warning: d: file: ?/?: <file>: empty"
    assert not f.is_error
