"""Consistency of one Envoy snapshot, checked before it is sent (pure).

A snapshot that names a cluster or secret it does not carry, or binds two listeners on
one address, would be rejected by Envoy (or worse, half-applied: the listener warms
forever waiting for a cluster).  Checking first keeps the last good snapshot in force.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterator, Mapping

import betterproto2
from envoy_data_plane.envoy.config.cluster.v3 import Cluster
from envoy_data_plane.envoy.config.listener.v3 import Listener
from envoy_data_plane.envoy.config.route.v3 import RouteAction
from envoy_data_plane.envoy.extensions.filters.network.tcp_proxy.v3 import TcpProxy
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import SdsSecretConfig, Secret
from envoy_data_plane.google.protobuf import Any

from clrk_xds import betterproto_speed

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
MESSAGE_TYPES: dict[str, type[betterproto2.Message]] = {
    LISTENER: Listener,
    CLUSTER: Cluster,
    SECRET: Secret,
}

Resources = Mapping[str, Mapping[str, bytes]]  # type_url -> name -> serialized message


_UNPACKED: OrderedDict[tuple[str, bytes], betterproto2.Message | None] = OrderedDict()
_UNPACKED_LIMIT = 100_000


def _unpack(value: Any) -> betterproto2.Message | None:
    """Any.unpack, remembered by content: a reload re-checks the same filter configs.
    What the translator packed is handed back as it was packed, not parsed again."""
    inner = betterproto_speed.packed(value)
    if inner is not None:
        return inner
    key = (value.type_url, bytes(value.value))
    if key in _UNPACKED:
        _UNPACKED.move_to_end(key)
        return _UNPACKED[key]
    try:
        inner = value.unpack()
    except Exception:  # unknown type_url: nothing we can reference-check inside
        inner = None
    _UNPACKED[key] = inner
    if len(_UNPACKED) > _UNPACKED_LIMIT:
        _UNPACKED.popitem(last=False)
    return inner


def referenced_clusters(msg: betterproto2.Message) -> set[str]:
    """Clusters named by tcp_proxy filters and HTTP route actions inside `msg`."""
    names: set[str] = set()
    for holder in _reference_holders(msg):
        names |= _references(holder)[0]
    return names


def referenced_secrets(msg: betterproto2.Message) -> set[str]:
    """Secrets fetched over xDS (an SdsSecretConfig with an sds_config) inside `msg`.

    An SdsSecretConfig without sds_config names a static bootstrap secret, which the
    snapshot need not carry.
    """
    names: set[str] = set()
    for holder in _reference_holders(msg):
        names |= _references(holder)[1]
    return names


References = tuple[frozenset[str], frozenset[str]]  # (clusters, secrets)


def _references(message: object) -> References:
    """What `message` and every message inside it name, found once for a frozen one:
    what many chains share (their access log) is looked into once, and an unchanged
    chain is not looked into again on a reload."""
    return betterproto_speed.derived(message, _find_references)  # type: ignore[return-value]


def _find_references(message: object) -> References:
    clusters: set[str] = set()
    secrets: set[str] = set()
    if isinstance(message, TcpProxy | RouteAction):
        if message.cluster:
            clusters.add(message.cluster)
        if message.weighted_clusters is not None:
            clusters.update(c.name for c in message.weighted_clusters.clusters)
    elif isinstance(message, SdsSecretConfig) and message.sds_config is not None:
        secrets.add(message.name)
    for child in _children(message):
        inner_clusters, inner_secrets = _references(child)
        clusters |= inner_clusters
        secrets |= inner_secrets
    return frozenset(clusters), frozenset(secrets)


def _children(message: object) -> Iterator[betterproto2.Message]:
    """The messages directly inside `message` (an Any's unpacked where known), from
    the fields that can hold one: strings and numbers are not looked at."""
    for name in _message_fields(type(message)):
        value = getattr(message, name)
        if value is None:  # most message fields are unset
            continue
        if isinstance(value, dict):
            items = list(value.values())
        else:
            items = value if isinstance(value, list | tuple) else (value,)
        for item in items:
            if isinstance(item, Any):
                inner = _unpack(item)
                if inner is not None:
                    yield inner
            elif isinstance(item, betterproto2.Message):
                yield item


_fields_by_class: dict[type, tuple[str, ...]] = {}


def _message_fields(cls: type) -> tuple[str, ...]:
    """The fields of `cls` whose values can be messages (singly, repeated or as map
    values); the others (strings, numbers, enums, unwrapped well-known types) hold none."""
    names = _fields_by_class.get(cls)
    if names is None:
        meta = cls._betterproto.meta_by_field_name  # type: ignore[attr-defined]
        names = _fields_by_class[cls] = tuple(
            name
            for name, field in meta.items()
            if field.proto_type == betterproto2.TYPE_MESSAGE
            or (field.map_meta and field.map_meta[1].proto_type == betterproto2.TYPE_MESSAGE)
        )
    return names


def _bind_key(listener: Listener) -> tuple[int, str, int, int] | None:
    """(ip version, address, port, protocol) a listener binds, or None (pipe, internal)."""
    address = listener.address
    sock = address.socket_address if address is not None else None
    if sock is None:
        return None
    try:
        ip = ipaddress.ip_address(sock.address)
    except ValueError:
        return (0, sock.address, sock.port_value or 0, int(sock.protocol))
    return (ip.version, str(ip), sock.port_value or 0, int(sock.protocol))


def _clash(a: tuple[int, str, int, int], b: tuple[int, str, int, int]) -> bool:
    """Same port and protocol on the same address, or one of them the family wildcard."""
    if a[0] != b[0] or a[2:] != b[2:] or a[2] == 0:
        return False
    wildcard = {"0.0.0.0", "::"}
    return a[1] == b[1] or a[1] in wildcard or b[1] in wildcard


def _reference_holders(msg: betterproto2.Message) -> list[object]:
    """The parts of a resource that can name a cluster or secret.  A listener's filter
    chain matcher (the bulk of a large listener) names neither, so it is not walked.
    A message the translator froze never changes: what it names is found once."""
    if isinstance(msg, Listener):
        default = [msg.default_filter_chain] if msg.default_filter_chain is not None else []
        return [*msg.filter_chains, *default, *msg.access_log]
    return [msg]


def check(
    resources: Resources,
    messages: Mapping[str, Mapping[str, betterproto2.Message]] | None = None,
) -> list[str]:
    """Every reason `resources` cannot be sent as one snapshot; empty when consistent.

    `messages`: the objects `resources` were serialized from, when the caller has them;
    they are checked instead of parsing the bytes back.
    """
    problems: list[str] = []
    decoded: dict[str, dict[str, betterproto2.Message]] = {}
    if messages is not None:
        decoded = {t: dict(named) for t, named in messages.items()}
    for type_url, named in sorted(resources.items()) if messages is None else ():
        cls = MESSAGE_TYPES.get(type_url)
        if cls is None:
            problems.append(f"unknown resource type {type_url}")
            continue
        decoded[type_url] = {}
        for name, raw in sorted(named.items()):
            try:
                msg = cls.parse(raw)
            except Exception as exc:
                problems.append(f"{cls.__name__} {name!r}: does not parse: {exc}")
                continue
            # The map key is the name the cache serves it under; Envoy uses the embedded one.
            if msg.name != name:
                problems.append(
                    f"{cls.__name__} {name!r}: stored under a different name than its own "
                    f"({msg.name!r})"
                )
            decoded[type_url][name] = msg
    listeners = decoded.get(LISTENER, {})
    clusters = decoded.get(CLUSTER, {})
    secrets = decoded.get(SECRET, {})
    for name, lst in listeners.items():
        for missing in sorted(referenced_clusters(lst) - clusters.keys()):
            problems.append(f"Listener {name!r}: references missing cluster {missing!r}")
    for kind, owners in (("Listener", listeners), ("Cluster", clusters)):
        for name, msg in owners.items():
            for missing in sorted(referenced_secrets(msg) - secrets.keys()):
                problems.append(f"{kind} {name!r}: references missing secret {missing!r}")
    bound: list[tuple[tuple[int, str, int, int], str]] = []
    for name, lst in listeners.items():
        key = _bind_key(lst)
        if key is None:
            continue
        for other_key, other in bound:
            if _clash(key, other_key):
                problems.append(
                    f"Listener {name!r}: address {key[1]}:{key[2]} is also bound by "
                    f"listener {other!r}"
                )
        bound.append((key, name))
    return problems


def duplicate_names(names: list[str]) -> list[str]:
    """Names that occur more than once, in first-seen order."""
    seen: set[str] = set()
    dups: list[str] = []
    for n in names:
        if n in seen and n not in dups:
            dups.append(n)
        seen.add(n)
    return dups
