"""The HTTPS benchmark (`python -m bench.l7_bench --quick`): the real dialer, Envoy (TLS
Terminate with its records, its log to a discarding sink, its matcher only, and without
ext_proc, TLS Passthrough), clrk_extproc and an HTTPS upstream in a throw-away topology.
Checks that every path is reported and that nothing is left behind, also when the bench
fails midway; and how each path's listener is built; never the timings."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from bench import l7_bench
from bench._rig import BenchError
from tests.netns_helpers import child_pids, namespaces_with_prefix

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: network namespaces and iptables"
)


def _our_namespaces() -> set[str]:
    return namespaces_with_prefix(f"clrkl{os.getpid()}-")


@pytest.mark.root
@needs_root
@pytest.mark.timeout(120)
def test_quick_l7_bench_reports_every_path_and_cleans_up(capsys):
    before = child_pids()
    rows = l7_bench.main(quick=True)
    assert [r["path"] for r in rows] == list(l7_bench.PATHS)
    assert all(r["rps"] > 0 and r["requests"] > 0 and r["p99_ms"] >= r["p50_ms"] for r in rows)
    assert [r["ratio"] for r in rows if r["path"] == "passthrough"] == [1.0]
    out = capsys.readouterr().out
    for label in l7_bench.LABELS.values():
        assert label in out
    assert "records: " in out  # all written (whether clrk_extproc kept up) or missing
    if "records: MISSING" in out:  # an open finding: show what Envoy and clrk_extproc said
        warnings.warn(out[out.index("records: MISSING") :][:6000], stacklevel=1)
    assert "target l7-records: " in out
    assert "floor l7-records: gRPC access log with a discarding sink " in out
    assert [r["vs_terminate"] for r in rows if r["path"] == "terminate"] == [1.0]
    assert _our_namespaces() == set()
    assert child_pids() <= before  # the dialer, Envoy, extproc and upstream are gone


@pytest.mark.root
@needs_root
@pytest.mark.timeout(120)
def test_missing_records_miss_the_target_with_what_envoy_and_clrk_extproc_say(monkeypatch, capsys):
    """A records path that did less work must not meet its target, and the table must
    say where the entries went (Envoy's access-log counters, clrk_extproc's log)."""
    before = child_pids()
    monkeypatch.setattr(l7_bench, "RECORDS_TIMEOUT", 0.2)
    monkeypatch.setattr(l7_bench.HttpRecordCount, "update", lambda self: 0)
    rows = l7_bench.main(quick=True)
    assert [r["missing"] for r in rows if r["path"] == "terminate+records"] != [None]
    out = capsys.readouterr().out
    assert "records: MISSING: 0 egress.http records of" in out
    assert "access_logs.grpc_access_log.logs_dropped" in out
    assert "; cluster.clrk_extproc.upstream_cx_total: " in out  # its stream to clrk_extproc
    assert "target l7-records: MISSED (" in out and "records missing" in out
    assert _our_namespaces() == set()
    assert child_pids() <= before


@pytest.mark.root
@needs_root
@pytest.mark.timeout(120)
def test_failure_midway_still_removes_everything(monkeypatch):
    before = child_pids()

    def fail(rig, params):
        assert rig.envoy is not None  # built: there is something to remove
        raise BenchError("injected")

    monkeypatch.setattr(l7_bench, "measure", fail)
    with pytest.raises(BenchError, match="injected"):
        l7_bench.main(quick=True)
    assert _our_namespaces() == set()
    assert child_pids() <= before


def test_without_extproc_drops_only_the_extproc_filter_and_the_access_log(tmp_path):
    text = l7_bench.manifest_text(tmp_path / "ca.pem")
    config, _ca = l7_bench.envoy_config(text, tmp_path, Path("/run/clrk-bench"))
    listeners = {lst["name"]: lst for lst in config["static_resources"]["listeners"]}

    def http_filters(listener: str) -> list[str]:
        return [
            f["name"]
            for chain in listeners[listener]["filterChains"]
            for nf in chain["filters"]
            for f in nf.get("typedConfig", {}).get("httpFilters", [])
        ]

    with_ext, without = http_filters("tls-term"), http_filters("tls-bare")
    assert "clrk.ext_proc_when_tagged" in with_ext
    assert without == [f for f in with_ext if f not in l7_bench.EXTPROC_FILTERS]
    for chain in listeners["tls-bare"]["filterChains"]:
        assert all("accessLog" not in nf.get("typedConfig", {}) for nf in chain["filters"])
    assert http_filters("tls-pass") == []  # tcp_proxy, no HTTP at all
    assert {s["name"] for s in config["static_resources"]["secrets"]} == {
        f"leaf/default/{route}" for path, (_l, route, _n) in l7_bench.PATHS.items()
        if path != "passthrough"
    }  # fmt: skip


def _listeners_and_clusters(tmp_path) -> tuple[dict, dict]:
    text = l7_bench.manifest_text(tmp_path / "ca.pem")
    config, _ca = l7_bench.envoy_config(text, tmp_path, Path("/run/clrk-bench"))
    resources = config["static_resources"]
    return (
        {lst["name"]: lst for lst in resources["listeners"]},
        {c["name"]: c for c in resources["clusters"]},
    )


def _managers(listener: dict) -> list[dict]:
    return list(l7_bench._http_managers(listener))


def _without(config: dict, *keys) -> dict:
    return {k: v for k, v in config.items() if k not in keys and k != "statPrefix"}


def test_the_discarded_log_path_is_the_records_chain_with_its_log_sent_to_the_sink(tmp_path):
    listeners, clusters = _listeners_and_clusters(tmp_path)
    (records,), (discarded,) = _managers(listeners["tls-term"]), _managers(listeners["tls-logd"])
    assert [f["name"] for f in discarded["httpFilters"]] == [
        f["name"] for f in records["httpFilters"]
    ]
    assert "clrk.ext_proc_when_tagged" in [f["name"] for f in discarded["httpFilters"]]
    (log,), (records_log,) = discarded["accessLog"], records["accessLog"]
    common = log["typedConfig"]["commonConfig"]
    assert common["grpcService"]["envoyGrpc"] == {"clusterName": l7_bench.DISCARD_CLUSTER}
    assert records_log["typedConfig"]["commonConfig"]["grpcService"]["envoyGrpc"] == {
        "clusterName": "clrk_extproc"
    }
    # The same log (name, flush, tags but the chain's own), only its destination moved.
    assert common["bufferFlushInterval"] == "1s"
    assert log["name"] == records_log["name"] == "envoy.access_loggers.http_grpc"
    sink, extproc = clusters[l7_bench.DISCARD_CLUSTER], clusters["clrk_extproc"]
    assert _without(sink, "name", "loadAssignment") == _without(extproc, "name", "loadAssignment")
    address = sink["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]
    assert address == {"socketAddress": {"address": "127.0.0.1", "portValue": 18003}}
    assert (address["socketAddress"]["address"], address["socketAddress"]["portValue"]) == (
        l7_bench.DISCARD
    )
    assert sink["loadAssignment"]["clusterName"] == l7_bench.DISCARD_CLUSTER


def test_the_matcher_path_is_the_records_chain_without_its_log(tmp_path):
    listeners, _clusters = _listeners_and_clusters(tmp_path)
    (records,), (matcher,) = _managers(listeners["tls-term"]), _managers(listeners["tls-match"])
    assert "accessLog" in records
    assert "accessLog" not in matcher
    assert [f["name"] for f in matcher["httpFilters"]] == [
        f["name"] for f in records["httpFilters"]
    ]
    assert "clrk.ext_proc_when_tagged" in [f["name"] for f in matcher["httpFilters"]]


def test_the_listener_edits_count_what_they_changed_and_leave_tcp_listeners_alone(tmp_path):
    listeners, _clusters = _listeners_and_clusters(tmp_path)
    passthrough = listeners["tls-pass"]
    assert l7_bench.without_access_log(passthrough) == 0
    assert l7_bench.access_log_to(passthrough, l7_bench.DISCARD_CLUSTER) == 0
    # Already edited: nothing left to change, which envoy_config refuses.
    assert l7_bench.without_access_log(listeners["tls-match"]) == 0
    assert l7_bench.without_extproc(listeners["tls-bare"]) == 0


def test_the_discarding_sink_counts_the_http_entries_of_a_message():
    from envoy_data_plane.envoy.data.accesslog.v3 import (
        AccessLogCommon,
        HttpAccessLogEntry,
        HttpRequestProperties,
        TcpAccessLogEntry,
    )
    from envoy_data_plane.envoy.service.accesslog.v3 import (
        StreamAccessLogsMessage,
        StreamAccessLogsMessageHttpAccessLogEntries,
        StreamAccessLogsMessageIdentifier,
        StreamAccessLogsMessageTcpAccessLogEntries,
    )

    from bench import _discard_sink

    identifier = StreamAccessLogsMessageIdentifier(log_name="clrk.http")
    entry = HttpAccessLogEntry(
        common_properties=AccessLogCommon(sample_rate=1.0, custom_tags={"method": "GET"}),
        request=HttpRequestProperties(path="/", authority="term.bench.test"),
    )
    http = StreamAccessLogsMessage(
        identifier=identifier,
        http_logs=StreamAccessLogsMessageHttpAccessLogEntries(log_entry=[entry] * 3),
    )
    assert _discard_sink.http_entries(bytes(http)) == 3
    tcp = StreamAccessLogsMessage(
        tcp_logs=StreamAccessLogsMessageTcpAccessLogEntries(log_entry=[TcpAccessLogEntry()] * 2)
    )
    assert _discard_sink.http_entries(bytes(tcp)) == 0  # a TCP entry is not an HTTP one
    assert _discard_sink.http_entries(bytes(StreamAccessLogsMessage())) == 0


def test_paths_use_documentation_addresses_and_distinct_names():
    assert l7_bench.UPSTREAM[0].startswith("192.0.2.")
    names = [name for _listener, _route, name in l7_bench.PATHS.values()]
    assert len(set(names)) == len(names)


def test_the_floor_line_is_informational_not_a_target():
    line = l7_bench.floor_line(0.7, 0.9)
    assert line == (
        "floor l7-records: gRPC access log with a discarding sink 0.70x, matcher only 0.90x "
        "(vs terminate)"
    )
    assert not line.startswith("target ")


def test_target_line_names_the_issue_target_and_its_verdict():
    assert l7_bench.target_line(0.85).startswith("target l7-records: met (0.85x")
    assert l7_bench.target_line(0.5).startswith("target l7-records: MISSED (0.50x")
    assert l7_bench.target_line(0.5).endswith("vs goal >= 0.8x)")
    assert l7_bench.target_line(0.9, missing=True).startswith("target l7-records: MISSED (0.90x")


def test_the_record_count_reads_the_file_as_it_grows_and_counts_http_spans_only(tmp_path):
    path = tmp_path / "records.jsonl"
    count = l7_bench.HttpRecordCount(path)
    assert count.update() == 0  # no file yet
    span = b'{"resourceSpans":[{"spans":[{"name":"egress.http"}]}]}\n'
    log = b'{"resourceLogs":[{"body":"egress.http"}]}\n'
    tcp = b'{"resourceSpans":[{"spans":[{"name":"egress.tcp"}]}]}\n'
    path.write_bytes(span + log + tcp + span[:10])  # the last line half written
    assert count.update() == 1
    with path.open("ab") as f:
        f.write(span[10:] + log)
    assert count.update() == 2
    count.wait_for(2, exact=True)
    with pytest.raises(BenchError):
        count.wait_for(1, exact=True)
