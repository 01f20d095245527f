"""clrk_cli.embedded.metrics: counting decisions from real records files, xDS status, rendering."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from clrk_cli.embedded.metrics import (
    ChildState,
    Counts,
    RecordTail,
    XdsCounts,
    health_document,
    render,
)


def span(name: str, **attrs) -> dict:
    return {"signal": "span", "name": name, "attributes": attrs}


def samples(text: bytes) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def test_counts_spans_only_by_reason():
    counts = Counts()
    for record in [
        span(
            "egress.dial.denied",
            **{"clrk.egress.deny_reason": "policy", "network.transport": "tcp"},
        ),
        {"signal": "log", "name": "egress.dial.denied", "attributes": {}},
        span(
            "egress.dial.denied",
            **{"clrk.egress.deny_reason": "no_route", "network.transport": "udp"},
        ),
        span("egress.tcp", **{"network.transport": "tcp"}),
        span("egress.http"),
        span("egress.dns.denied", **{"clrk.egress.deny_reason": "dns_filtered"}),
        span("something.else"),
    ]:
        counts.add(record)
    assert counts.decisions == {
        ("deny", "policy"): 1,
        ("deny", "no_route"): 1,
        ("allow", "tcp"): 1,
        ("allow", "http"): 1,
        ("deny", "dns_filtered"): 1,
    }
    assert counts.connections == {("tcp", "deny"): 1, ("udp", "deny"): 1, ("tcp", "allow"): 1}
    assert counts.dns_denied == 1


def test_record_tail_reads_a_real_records_file_incrementally(tmp_path):
    from clrk_runtime.records_writer import RecordWriter

    path = tmp_path / "records.jsonl"
    tail = RecordTail(path)
    assert tail.update().decisions == {}  # no file yet
    writer = RecordWriter("test", path=str(path))
    from clrk.policy import Connection, decide
    from clrk.records import schema
    from tests.conftest import EXAMPLES, compile_paths

    policies = compile_paths(EXAMPLES / "prod-agents")
    gateway = policies.gateways[("default", "prod-agents")]
    agent = policies.agents[("default", "bot")]
    decision = decide(gateway, agent, Connection("TCP", "192.0.2.66", 443))
    record = schema.dial_denied(
        decision,
        agent=agent,
        dst_ip="192.0.2.66",
        dst_port=443,
        transport="tcp",
        dst_name="evil.example",
    )
    writer.emit(record)
    writer.shutdown()
    counts = tail.update()
    assert sum(counts.decisions.values()) == 1
    (key,) = counts.decisions
    assert key[0] == "deny"
    with path.open("a") as fh:
        fh.write('{"cut short')  # a writer mid-append: not counted, not an error
    assert sum(tail.update().decisions.values()) == 1


def test_xds_counts_distinct_versions():
    xds = XdsCounts()
    node = {"default/gw": {"Listener": {"acked_version": "v1", "nacked_version": None}}}
    xds.observe({"nodes": node})
    xds.observe({"nodes": node})
    xds.observe(
        {"nodes": {"default/gw": {"Listener": {"acked_version": "v1", "nacked_version": "v2"}}}}
    )
    xds.observe({"nodes": "garbage"})
    xds.observe([])
    assert xds.acked == {("default/gw", "Listener"): {"v1"}}
    assert xds.nacked == {("default/gw", "Listener"): {"v2"}}
    assert xds.nacking[("default/gw", "Listener")] is True


def test_render_and_health():
    counts = Counts()
    counts.add(span("egress.dial.denied", **{"clrk.egress.deny_reason": "policy"}))
    xds = XdsCounts()
    xds.observe({"nodes": {"g": {"Cluster": {"acked_version": "a", "nacked_version": "b"}}}})
    children = [ChildState("envoy", True, 2, 10), ChildState("dialer", False, 0, None)]
    got = samples(render(counts, xds, children))
    assert got["clrk_decisions_total", (("decision", "deny"), ("reason", "policy"))] == 1
    assert got["clrk_connections_total", (("decision", "deny"), ("transport", "tcp"))] == 1
    assert got["clrk_xds_nacks_total", (("gateway", "g"), ("type", "Cluster"))] == 1
    assert got["clrk_xds_pushes_acked_total", (("gateway", "g"), ("type", "Cluster"))] == 1
    assert got["clrk_child_restarts_total", (("child", "envoy"),)] == 2
    assert got["clrk_child_up", (("child", "dialer"),)] == 0
    health = health_document(children, ready=True)
    assert health["ok"] is False and health["children"]["envoy"]["pid"] == 10
    assert health_document(children[:1], ready=True)["ok"] is True
    assert health_document(children[:1], ready=False)["ok"] is False
