"""The fake API server's Secrets, through the official client: data base64 on the wire,
lists and watches narrowed by a metadata.name field selector, and RBAC by resourceNames
as the real authorizer applies it."""

from __future__ import annotations

import base64

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.k8s.fake_apiserver import FakeApiServer, api_client
from tests.k8s.rbac import Grant


@pytest.fixture
def server():
    with FakeApiServer() as srv:
        yield srv


def secret(name: str, **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}


def test_a_secrets_string_data_is_stored_as_base64_data_and_bad_base64_is_refused(server):
    core = client.CoreV1Api(api_client(server))
    core.create_namespaced_secret("default", secret("a", key="sk-1"))
    (item,) = core.list_namespaced_secret("default").items
    assert item.data == {"key": base64.b64encode(b"sk-1").decode()}
    bad = {"metadata": {"name": "b"}, "data": {"key": "not base64!"}}
    with pytest.raises(ApiException) as err:
        core.create_namespaced_secret("default", bad)
    assert err.value.status == 400


def test_a_name_selector_narrows_lists_and_watches_and_other_fields_are_refused(server):
    core = client.CoreV1Api(api_client(server))
    for ns in ("default", "other"):
        core.create_namespaced_secret(ns, secret("a", key=ns))
        core.create_namespaced_secret(ns, secret("b", key=ns))
    listed = core.list_namespaced_secret("default", field_selector="metadata.name=a")
    assert [(s.metadata.namespace, s.metadata.name) for s in listed.items] == [("default", "a")]
    replaced = core.read_namespaced_secret("b", "default")
    replaced.string_data = {"key": "changed"}
    core.replace_namespaced_secret("b", "default", replaced)
    core.delete_namespaced_secret("a", "other")
    core.delete_namespaced_secret("a", "default")
    w = watch.Watch()
    events = [
        (e["type"], e["raw_object"]["metadata"]["name"])
        for e in w.stream(
            core.list_namespaced_secret,
            "default",
            field_selector="metadata.name==a",
            resource_version=listed.metadata.resource_version,
            timeout_seconds=1,
        )
    ]
    assert events == [("DELETED", "a")]
    with pytest.raises(ApiException) as err:
        core.list_namespaced_secret("default", field_selector="type=Opaque")
    assert err.value.status == 400


def test_resource_names_allow_a_list_only_through_a_selector_naming_one_of_them(server):
    core = client.CoreV1Api(api_client(server))
    core.create_namespaced_secret("default", secret("a", key="x"))
    server.restricted["narrow"] = frozenset(
        Grant("", "secrets", verb, "default", frozenset({"a"})) for verb in ("list", "watch")
    )
    narrow = client.CoreV1Api(api_client(server, "narrow"))
    assert narrow.list_namespaced_secret("default", field_selector="metadata.name=a").items
    for selector, namespace in ((None, "default"), ("metadata.name=b", "default"),
                                ("metadata.name=a", "other")):  # fmt: skip
        with pytest.raises(ApiException) as err:
            narrow.list_namespaced_secret(namespace, field_selector=selector)
        assert err.value.status == 403
    with pytest.raises(ApiException) as err:
        narrow.read_namespaced_secret("a", "default")  # get was not granted
    assert err.value.status == 403
    assert len(server.forbidden) == 4
