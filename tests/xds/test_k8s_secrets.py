"""An EgressCredential's secretRef under the Kubernetes provider, against the fake API
server with deploy/'s RBAC: the Secret's value is served as the SDS secret, a change is
in force without a listener change, a deleted Secret or missing key fails closed (an
empty secret: Envoy answers 401) and says so in ResolvedRefs, only the named Secret of
the credential's own namespace is ever asked for, and its bytes show nowhere else."""

from __future__ import annotations

import base64
import logging

import pytest
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import Secret
from kubernetes.client.rest import ApiException

from clrk_xds.consistency import CLUSTER, LISTENER, SECRET
from tests.k8s.fake_apiserver import FakeApiServer, api_client
from tests.k8s.objects import Cluster, credential, obj, route, wait_for
from tests.k8s.rbac import credential_secrets_binding
from tests.xds.test_provider_kubernetes import GW, Running

VALUE = "sk-ant-k8s-0123456789abcdef"
ROTATED = "sk-ant-k8s-rotated-fedcba987"
NAME = "credential/default/key"


def http_gateway(namespace: str = "default") -> dict:
    spec = {"listeners": [{"name": "http", "protocol": "HTTP", "port": 80}]}
    return obj("EgressGateway", "gw", spec, namespace)


def served(running: Running, node: str = GW) -> bytes | None:
    """The credential's SDS secret as Envoy receives it; None while there is none."""
    snap = running.cache.get(node)
    raw = snap.named(SECRET).get(NAME.replace("default", node.split("/")[0])) if snap else None
    return None if raw is None else Secret().parse(raw).generic_secret.secret.inline_bytes


def condition(cluster: Cluster, type_: str, namespace: str = "default") -> dict:
    return cluster.condition("EgressCredential", "key", type_, namespace) or {}


@pytest.fixture
def server():
    with FakeApiServer() as srv:
        yield srv


@pytest.fixture
def cluster(server):
    c = Cluster(api_client(server))
    c.create(http_gateway())
    c.create(route(port=80))
    return c


def test_a_secret_ref_is_served_rotated_and_fails_closed_when_deleted(server, cluster, caplog):
    cluster.put_secret("anthropic", {"api-key": VALUE + "\n"})
    cluster.create(credential())
    with (
        caplog.at_level(logging.INFO),
        Running(server, rbac=(credential_secrets_binding("default"),)) as running,
    ):
        wait_for(lambda: served(running) == VALUE.encode())
        wait_for(lambda: condition(cluster, "ResolvedRefs").get("status") == "True")
        assert condition(cluster, "Accepted")["status"] == "True"
        listeners = running.cache.get(GW).version_of(LISTENER)
        # rotation: only the SDS secret changes, no listener drains
        cluster.put_secret("anthropic", {"api-key": ROTATED})
        wait_for(lambda: served(running) == ROTATED.encode())
        assert running.cache.get(GW).version_of(LISTENER) == listeners
        # a missing key, then a deleted Secret: an empty secret (401), and status says so
        cluster.put_secret("anthropic", {"other": VALUE})
        wait_for(lambda: served(running) == b"")
        missing = wait_for(lambda: condition(cluster, "ResolvedRefs").get("status") == "False")
        assert missing
        cond = condition(cluster, "ResolvedRefs")
        assert cond["reason"] == "SecretUnavailable"
        assert (
            "Secret default/anthropic, key 'api-key': the Secret has no such key"
            in (cond["message"])
        )
        cluster.delete_secret("anthropic")
        wait_for(lambda: "does not exist" in condition(cluster, "ResolvedRefs")["message"])
        assert served(running) == b""
        assert running.cache.get(GW).version_of(LISTENER) == listeners
        # it comes back: in force again
        cluster.put_secret("anthropic", {"api-key": VALUE})
        wait_for(lambda: served(running) == VALUE.encode())
        wait_for(lambda: condition(cluster, "ResolvedRefs").get("status") == "True")
        # the bytes are in the SDS secret only: not in listeners, clusters, the policy
        # stream, any object's status or the control plane's log
        snap = running.cache.get(GW)
        config = b"".join(snap.named(t)[n] for t in (LISTENER, CLUSTER) for n in snap.named(t))
        policy = running.hub.current(GW).SerializeToString()  # the dialers' stream
        statuses = str(server.objects("egresscredentials")).encode()
        logged = "".join(str(r.__dict__) for r in caplog.records).encode()
        for value in (VALUE, ROTATED):
            for form in (value.encode(), base64.b64encode(value.encode()), value[8:].encode()):
                assert form not in config + policy + statuses + logged
        # least privilege: only that Secret, by name, in the credential's namespace
        asked = [p for m, p in server.requests if "/secrets" in p and m == "GET"]  # not ours
        assert asked and all(
            p.startswith("/api/v1/namespaces/default/secrets?")
            and "fieldSelector=metadata.name%3Danthropic" in p
            for p in asked
        )
    assert server.forbidden == []


def test_a_secret_of_the_same_name_in_another_namespace_is_never_read(server, cluster):
    cluster.put_secret("anthropic", {"api-key": "sk-other-namespaces-value"}, "other")
    elsewhere = credential("elsewhere")
    elsewhere["spec"]["source"]["secretRef"]["namespace"] = "other"
    with pytest.raises(ApiException) as err:  # a secretRef has no namespace to name
        cluster.create(elsewhere)
    assert err.value.status == 422
    cluster.create(credential())
    with Running(server, rbac=(credential_secrets_binding("default"),)) as running:
        wait_for(lambda: served(running) == b"")
        cond = wait_for(lambda: condition(cluster, "ResolvedRefs"))
        assert cond["status"] == "False" and "does not exist" in cond["message"]
    assert not [p for m, p in server.requests if "/namespaces/other/" in p and m == "GET"]
    assert server.forbidden == []


def test_without_a_binding_in_its_namespace_the_secret_is_forbidden_and_fails_closed(
    server, cluster
):
    cluster.put_secret("anthropic", {"api-key": VALUE})
    cluster.create(credential())
    with Running(server) as running:  # deploy/ alone binds no Secret anywhere
        wait_for(lambda: served(running) == b"")
        cond = wait_for(lambda: condition(cluster, "ResolvedRefs"))
        assert cond["status"] == "False" and "403" in cond["message"]
        assert VALUE not in str(cond)
    assert ("list", "secrets", "default") in server.forbidden
    assert {f[1] for f in server.forbidden} == {"secrets"}


def test_a_role_limited_to_the_secrets_name_is_enough(server, cluster):
    cluster.put_secret("anthropic", {"api-key": VALUE})
    cluster.create(credential())
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "clrk-anthropic", "namespace": "default"},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": ["anthropic"],
                "verbs": ["list", "watch"],
            }
        ],
    }
    binding = credential_secrets_binding("default")
    binding["roleRef"] = {**binding["roleRef"], "kind": "Role", "name": "clrk-anthropic"}
    with Running(server, rbac=(role, binding)) as running:
        wait_for(lambda: served(running) == VALUE.encode())
    assert server.forbidden == []


def test_a_credential_gone_stops_its_secrets_watch(server, cluster):
    cluster.put_secret("anthropic", {"api-key": VALUE})
    cluster.create(credential())
    with Running(server, rbac=(credential_secrets_binding("default"),)) as running:
        wait_for(lambda: running.secrets.watched() == [("default", "anthropic")])
        cluster.delete("EgressCredential", "key")
        wait_for(lambda: running.secrets.watched() == [])
        wait_for(lambda: served(running) is None)
