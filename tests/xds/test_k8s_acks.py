"""ACK reports shared between replicas through Leases, on the fake API server with the
rights deploy/ grants the control plane."""

from __future__ import annotations

import datetime

import pytest
from kubernetes import client

from clrk_xds.ads import TypeStatus
from clrk_xds.k8s_acks import AckBoard, report_of
from tests.k8s.fake_apiserver import FakeApiServer, api_client, control_plane_client

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"


@pytest.fixture
def server():
    with FakeApiServer() as srv:
        yield srv
    assert srv.forbidden == []


def board(server, identity):
    return AckBoard(control_plane_client(server), "clrk-system", identity)


def test_the_writer_reads_the_other_replicas_reports_not_its_own(server):
    a, b = board(server, "a"), board(server, "b")
    report = report_of({"default/gw": {LDS: TypeStatus("v1", "v2", "bad")}, "ops/x": {}})
    assert report == {"default/gw": {LDS: ["v1", "v2", "bad"]}}
    b.publish(report)
    a.publish({})
    assert a.others() == [report]
    assert b.others() == [{}]


def test_an_unchanged_report_is_not_written_again_until_it_needs_renewing(server):
    b = board(server, "b")
    b.publish({"default/gw": {LDS: ["v1", None, None]}})
    puts = len([r for r in server.requests if r[0] in ("POST", "PUT")])
    b.publish({"default/gw": {LDS: ["v1", None, None]}})
    assert len([r for r in server.requests if r[0] in ("POST", "PUT")]) == puts
    b._published_at -= b.max_age  # a third of max_age has long passed
    b.publish({"default/gw": {LDS: ["v1", None, None]}})
    assert len([r for r in server.requests if r[0] in ("POST", "PUT")]) == puts + 1


def test_a_report_not_renewed_for_max_age_is_a_gone_replicas_and_ignored(server):
    b = board(server, "b")
    b.publish({"default/gw": {LDS: ["v1", None, None]}})
    api = client.CoordinationV1Api(api_client(server))
    lease = api.read_namespaced_lease(b.name, "clrk-system")
    lease.spec.renew_time = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    api.replace_namespaced_lease(b.name, "clrk-system", lease)
    assert board(server, "a").others() == []
