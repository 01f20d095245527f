import yaml
from envoy_data_plane.envoy.config.core.v3 import (
    AggregatedConfigSource,
    ConfigSource,
    TransportSocket,
)
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.extensions.filters.network.tcp_proxy.v3 import TcpProxy
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CommonTlsContext,
    DownstreamTlsContext,
    SdsSecretConfig,
    Secret,
)
from envoy_data_plane.google.protobuf import Any

from clrk_runtime.policy_messages import from_plain
from clrk_xds import betterproto_speed
from clrk_xds.consistency import (
    CLUSTER,
    LISTENER,
    SECRET,
    check,
    referenced_clusters,
    referenced_secrets,
)
from clrk_xds.translate import ChainCache, translate_gateway
from tests.golden_cases import COMPILED, GOLDEN, cases, options
from tests.xds.xds_messages import static_cluster, tcp_listener


def resources(listeners=(), clusters=(), secrets=()):
    return {
        LISTENER: {m.name: bytes(m) for m in listeners},
        CLUSTER: {m.name: bytes(m) for m in clusters},
        SECRET: {m.name: bytes(m) for m in secrets},
    }


def tls_listener(name, port, secret, *, ads=True):
    lst = tcp_listener(name, port, "up")
    sds = SdsSecretConfig(
        name=secret, sds_config=ConfigSource(ads=AggregatedConfigSource()) if ads else None
    )
    ctx = DownstreamTlsContext(
        common_tls_context=CommonTlsContext(tls_certificate_sds_secret_configs=[sds])
    )
    lst.filter_chains[0].transport_socket = TransportSocket(
        name="envoy.transport_sockets.tls", typed_config=Any.pack(ctx)
    )
    return lst


def test_consistent_set_has_no_problems():
    assert check(resources([tcp_listener("l", 1000, "up")], [static_cluster("up", 2000)])) == []


def test_empty_set_is_consistent():
    assert check(resources()) == []


def test_missing_cluster_is_named():
    problems = check(resources([tcp_listener("l", 1000, "nowhere")], [static_cluster("up", 1)]))
    assert problems == ["Listener 'l': references missing cluster 'nowhere'"]


def test_cluster_referenced_inside_any_is_found():
    assert referenced_clusters(tcp_listener("l", 1, "c9")) == {"c9"}


def test_missing_secret_is_named_and_present_secret_is_fine():
    lst = tls_listener("l", 1000, "leaf")
    up = static_cluster("up", 1)
    assert check(resources([lst], [up])) == ["Listener 'l': references missing secret 'leaf'"]
    assert check(resources([lst], [up], [Secret(name="leaf")])) == []


def test_static_bootstrap_secret_need_not_be_in_snapshot():
    assert (
        check(resources([tls_listener("l", 1000, "boot", ads=False)], [static_cluster("up", 1)]))
        == []
    )


def test_two_listeners_on_one_address():
    ls = [tcp_listener("a", 1000, "up"), tcp_listener("b", 1000, "up")]
    assert check(resources(ls, [static_cluster("up", 1)])) == [
        "Listener 'b': address 127.0.0.1:1000 is also bound by listener 'a'"
    ]


def test_wildcard_address_clashes_with_specific_one_of_same_family():
    ls = [tcp_listener("a", 1000, "up", host="0.0.0.0"), tcp_listener("b", 1000, "up")]
    assert len(check(resources(ls, [static_cluster("up", 1)]))) == 1
    ls = [tcp_listener("a", 1000, "up", host="::"), tcp_listener("b", 1000, "up")]
    assert check(resources(ls, [static_cluster("up", 1)])) == []


def test_different_ports_or_addresses_do_not_clash():
    ls = [
        tcp_listener("a", 1000, "up"),
        tcp_listener("b", 1001, "up"),
        tcp_listener("c", 1000, "up", host="127.0.0.2"),
    ]
    assert check(resources(ls, [static_cluster("up", 1)])) == []


def test_name_must_match_the_key_it_is_stored_under():
    res = resources([], [static_cluster("up", 1)])
    res[CLUSTER] = {"other": res[CLUSTER]["up"]}
    assert check(res) == ["Cluster 'other': stored under a different name than its own ('up')"]


def test_bad_bytes_and_unknown_types_are_problems_not_crashes():
    res = resources()
    res[CLUSTER] = {"x": b"\x0a\xff"}
    res["type.googleapis.com/nope"] = {}
    problems = check(res)
    assert any("does not parse" in p for p in problems)
    assert "unknown resource type type.googleapis.com/nope" in problems


def test_a_packed_message_whose_any_got_other_bytes_is_read_from_the_bytes():
    betterproto_speed.install()
    proxy = betterproto_speed.pack(TcpProxy(stat_prefix="p", cluster="packed"))
    proxy.value = bytes(TcpProxy(stat_prefix="p", cluster="sent"))
    chain = FilterChain(
        filters=[Filter(name="envoy.filters.network.tcp_proxy", typed_config=proxy)]
    )
    assert referenced_clusters(Listener(name="l", filter_chains=[chain])) == {"sent"}


def test_translated_listeners_name_what_their_parsed_bytes_name():
    """The translator's packed messages are looked into without parsing; what is found
    is what Envoy would read from the bytes, on every golden case."""
    betterproto_speed.install()
    for case in cases():
        compiled = yaml.safe_load((GOLDEN / case / COMPILED).read_text())
        for plain in compiled["gateways"].values():
            gateway = translate_gateway(from_plain(plain), cache=ChainCache(), **options(case))
            for message in (*gateway.listeners, *gateway.clusters):
                parsed = type(message).parse(bytes(message))
                assert referenced_clusters(message) == referenced_clusters(parsed)
                assert referenced_secrets(message) == referenced_secrets(parsed)
