"""Lease election against the fake API server: one holder, renewal, takeover after
expiry, a lost race is a 409, release on a clean stop."""

from __future__ import annotations

import datetime

import pytest
from kubernetes import client

from clrk_xds.k8s_lease import LeaseElector
from tests.k8s.fake_apiserver import FakeApiServer, api_client, control_plane_client


@pytest.fixture
def server():
    with FakeApiServer() as srv:
        yield srv
    assert srv.forbidden == []


def elector(server, identity, duration=15):
    api = control_plane_client(server)  # with the rights deploy/ grants it
    return LeaseElector(api, "clrk-system", "clrk-control-plane", identity, duration)


def lease(server) -> client.V1Lease:
    return client.CoordinationV1Api(api_client(server)).read_namespaced_lease(
        "clrk-control-plane", "clrk-system"
    )


def test_the_first_replica_creates_the_lease_and_the_second_follows(server):
    a, b = elector(server, "a"), elector(server, "b")
    assert a.campaign() and not b.campaign()
    assert lease(server).spec.holder_identity == "a"
    assert a.campaign() and not b.campaign()  # a renews, b still follows
    assert lease(server).spec.holder_identity == "a"


def test_an_expired_lease_is_taken_over_and_its_transitions_counted(server):
    a, b = elector(server, "a"), elector(server, "b")
    assert a.campaign()
    # a stops renewing: its renewTime lies a lease duration in the past
    api = client.CoordinationV1Api(api_client(server))
    held = lease(server)
    held.spec.renew_time = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=60)
    api.replace_namespaced_lease("clrk-control-plane", "clrk-system", held)
    assert b.campaign()
    taken = lease(server)
    assert taken.spec.holder_identity == "b" and taken.spec.lease_transitions == 1
    assert not a.campaign() and not a.leader


def test_of_two_replicas_racing_with_the_same_read_the_api_server_lets_one_win(server):
    a, b = elector(server, "a"), elector(server, "b")
    assert a.campaign()
    a.release()  # free for anyone
    stale = lease(server)
    assert b.campaign()
    # a writes with what it read before b took it: 409, and a does not lead
    stale.spec.holder_identity = "a"
    with pytest.raises(client.ApiException) as err:
        client.CoordinationV1Api(api_client(server)).replace_namespaced_lease(
            "clrk-control-plane", "clrk-system", stale
        )
    assert err.value.status == 409
    assert lease(server).spec.holder_identity == "b"


def test_release_lets_another_replica_lead_at_once(server):
    a, b = elector(server, "a"), elector(server, "b")
    assert a.campaign() and not b.campaign()
    a.release()
    assert b.campaign()


def test_a_failed_renewal_leads_on_until_the_renew_deadline_then_stops(server):
    a = elector(server, "a")
    assert a.campaign()
    server.stop()
    assert a.campaign()  # one failed renewal: nobody may take over yet
    a._renewed -= 10  # two thirds of the 15 s duration have passed since the last renewal
    assert not a.campaign()


def test_a_replica_that_never_led_does_not_lead_when_the_server_is_away(server):
    server.stop()
    assert not elector(server, "a").campaign()
