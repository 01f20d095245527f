"""Loading manifests: files, directories, multi-document YAML, and every error at once."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from clrk.api import Scope, load_documents, load_paths, load_text
from clrk.api.loader import ManifestCache
from clrk.api.resources import Source

GW = """apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  listeners: [{name: tcp-out, protocol: TCP}]
"""


def test_a_multi_document_stream_yields_one_resource_per_document():
    loaded = load_text(GW + "---\n" + GW.replace("name: gw", "name: gw2") + "---\n")
    assert [r.name for r in loaded.resources] == ["gw", "gw2"]
    assert [r.source.document for r in loaded.resources] == [1, 2]
    assert loaded.findings == ()


def test_directories_are_read_recursively_in_name_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.yml").write_text(GW.replace("name: gw", "name: second"))
    (tmp_path / "a.yaml").write_text(GW)
    (tmp_path / "notes.txt").write_text("not a manifest")
    loaded = load_paths([tmp_path])
    assert [r.name for r in loaded.resources] == ["gw", "second"]
    assert loaded.files == 2


def test_every_error_of_every_document_is_reported_together():
    text = GW.replace("protocol: TCP", "protocol: SCTP") + "---\n" + GW.replace("kind:", "knd:")
    lines = [f.line() for f in load_text(text, "p.yaml").findings]
    assert lines == [
        "p.yaml: document 1: EgressGateway/gw: spec.listeners[0].protocol: "
        "input should be 'TCP', 'TLS', 'HTTP' or 'UDP' (got 'SCTP')",
        "p.yaml: document 2: ?/gw: kind: required field is missing",
    ]


def test_a_duplicate_key_is_an_error_not_a_silent_overwrite():
    text = GW + "  defaultPolicy: allow-all\n  defaultPolicy: deny-all\n"
    (finding,) = load_text(text, "p.yaml").findings
    assert "duplicate key 'defaultPolicy'" in finding.message and "line 7" in finding.message


def test_yaml_aliases_are_refused():
    text = "a: &x [1, 2]\nb: *x\n"
    (finding,) = load_text(text).findings
    assert "aliases" in finding.message


def test_deeply_nested_yaml_is_a_finding_not_a_crash():
    for text in ("[" * 20000 + "]" * 20000, "a: " * 5000 + "1"):
        (finding,) = load_text(text).findings
        assert finding.is_error and finding.document == 1


def test_a_second_object_with_the_same_identity_is_a_duplicate():
    loaded = load_text(GW + "---\n" + GW, "p.yaml")
    (finding,) = loaded.findings
    assert finding.document == 2 and "already defined by EgressGateway in p.yaml document 1" in (
        finding.message
    )
    assert finding.scope is Scope.SET


def test_a_daemon_agent_and_a_task_agent_cannot_share_a_name():
    agent = "apiVersion: clrk.apoxy.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: bot}}\n"
    loaded = load_text(agent.format(kind="DaemonAgent") + "---\n" + agent.format(kind="TaskAgent"))
    assert [f.field for f in loaded.findings] == ["metadata.name"]


def test_the_same_name_in_another_namespace_is_another_object():
    other = GW.replace("metadata: {name: gw}", "metadata: {name: gw, namespace: team-a}")
    loaded = load_text(GW + "---\n" + other)
    assert [r.ref for r in loaded.resources] == ["default/gw", "team-a/gw"]


def test_unknown_top_level_fields_are_errors_but_status_is_ignored():
    loaded = load_text(GW + "status: {conditions: []}\nspecs: {}\n")
    assert [(f.field, f.message) for f in loaded.findings] == [("specs", "unknown field")]


def test_kubernetes_managed_metadata_is_ignored():
    text = GW.replace(
        "metadata: {name: gw}", "metadata: {name: gw, uid: abc, resourceVersion: '7'}"
    )
    assert load_text(text).findings == ()


def test_a_label_value_that_yaml_reads_as_a_number_must_be_quoted():
    text = GW.replace("metadata: {name: gw}", "metadata: {name: gw, labels: {tier: 1}}")
    (finding,) = load_text(text).findings
    assert finding.field == "metadata.labels.tier" and "quote it" in finding.message


def test_documents_that_are_not_mappings_are_errors():
    (finding,) = load_text("- a\n- b\n").findings
    assert finding.message == "expected a mapping, got list"


def test_a_missing_spec_is_an_error_for_egress_kinds_but_not_for_agents():
    text = "apiVersion: clrk.apoxy.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: x}}\n"
    assert [f.field for f in load_text(text.format(kind="EgressL4Route")).findings] == ["spec"]
    assert load_text(text.format(kind="TaskAgent")).findings == ()


def test_unreadable_and_missing_paths_are_findings(tmp_path):
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfe\x00")
    loaded = load_paths([tmp_path / "bad.yaml", tmp_path / "missing.yaml", tmp_path / "empty"])
    messages = [f.message for f in loaded.findings]
    assert any(m.startswith("cannot read") for m in messages)
    assert "no such file or directory" in messages


def test_a_rejected_document_is_remembered_for_clearer_reference_errors():
    loaded = load_text(GW.replace("protocol: TCP", "protocol: SCTP"))
    assert loaded.rejected == {("EgressGateway", "default", "gw")}


def test_documents_from_any_source_are_validated_like_files_and_named_by_their_source():
    gateway = {
        "apiVersion": "clrk.apoxy.dev/v1alpha1",
        "kind": "EgressGateway",
        "metadata": {"name": "gw", "namespace": "prod"},
        "spec": {"listeners": [{"name": "tcp", "protocol": "TCP"}]},
    }
    bad = {**gateway, "metadata": {"name": "x"}, "spec": {"listeners": []}}
    docs = [(Source("k8s:prod/EgressGateway/gw", 0), gateway), (Source("k8s:x", 0), bad)]
    load = load_documents(docs)
    assert [r.ref for r in load.resources] == ["prod/gw"]
    assert load.resources[0].source == Source("k8s:prod/EgressGateway/gw", 0)
    (finding,) = load.errors
    assert (finding.file, finding.field) == ("k8s:x", "spec.listeners")
    assert load.digest == load_documents(docs).digest
    assert load.digest != load_documents(docs[:1]).digest


SEXAGESIMAL = "1" + ":00" * 200 + ".5"  # YAML 1.1's base 60 float: too large for a float


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("!!bool maybe", "cannot read 'maybe' as !!bool"),
        ("!!timestamp soon", "cannot read 'soon' as !!timestamp"),
        ("!!int ''", "cannot read '' as !!int"),
        ("!!float ''", "cannot read '' as !!float"),
        ("!!int '-'", "cannot read '-' as !!int"),
        (SEXAGESIMAL, f"cannot read '{SEXAGESIMAL[:56]}... as !!float"),
    ],
)
def test_a_value_its_tag_cannot_read_is_a_finding_at_its_place_not_a_crash(
    tmp_path, value, message
):
    text = GW + f"  mode: {value}\n"
    (finding,) = load_text(text, "p.yaml").findings
    assert finding.document == 1
    assert finding.message == f"invalid YAML: line 6, column 9: {message}"
    (tmp_path / "p.yaml").write_text(GW + "---\n" + text)  # each document parsed on its own
    (finding,) = load_paths([tmp_path]).findings
    assert finding.document == 2
    assert finding.message == f"invalid YAML: line 12, column 9: {message}"


@pytest.mark.parametrize("text", ["a: \udc80\n", "a: b\n---\nc: \ud800\n"])
def test_text_with_a_lone_surrogate_is_a_finding_not_a_crash(text):
    # Text from a client (apply) need not be valid Unicode; libyaml takes UTF-8 only.
    for problems in (load_text(text).findings, ManifestCache().file("f", text).problems):
        (finding,) = problems
        assert finding.message.startswith("invalid YAML: 'utf-8' codec can't encode")


def test_the_tag_cache_keeps_no_long_text_after_a_load():
    long = "x" * 1_000_000
    texts = [f"a: |\n  {long}\n", f"a: '{long}'\n", f"a: {long}\n", f"a: {long}1\n"]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for text in texts:
            load_text(text)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < len(long)
