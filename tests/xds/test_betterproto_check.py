"""The type check at serialization refuses whatever pydantic's validation refuses, on every
message class the translator uses, and accepts the right values of every field (the
translator's real output: test_betterproto_speed's digests and the golden files)."""

from __future__ import annotations

import datetime
import functools
import typing

import betterproto2
import pydantic
import pydantic.dataclasses
import pydantic_core
import pytest
import yaml
from envoy_data_plane.envoy.admin.v3 import BootstrapConfigDump
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    ApiConfigSource,
    GrpcServiceGoogleGrpcChannelArgs,
    GrpcServiceGoogleGrpcChannelArgsValue,
    RateLimitSettings,
    RuntimeDouble,
    SocketAddress,
    SocketAddressProtocol,
)
from envoy_data_plane.envoy.config.listener.v3 import FilterChain, Listener
from envoy_data_plane.envoy.type.matcher.v3 import StringMatcher
from envoy_data_plane.envoy.type.v3 import (
    HttpStatus,
    Int32Range,
    Int64Range,
    Percent,
    StatusCode,
)
from envoy_data_plane.google.protobuf import Any, DescriptorProtoExtensionRange, FloatValue
from envoy_data_plane.xds.type.matcher.v3 import StringMatcher as XdsStringMatcher
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.decide_bench import policy_documents
from clrk.api import load_objects
from clrk.policy.loaded import compile_loaded
from clrk_runtime.policy_messages import from_plain
from clrk_xds import betterproto_speed
from clrk_xds.betterproto_check import InvalidMessage, check
from clrk_xds.betterproto_speed import build
from clrk_xds.translate import translate, translate_gateway
from tests.golden_cases import COMPILED, GOLDEN, cases, options


def _messages(value) -> typing.Iterator[betterproto2.Message]:
    if isinstance(value, betterproto2.Message):
        yield value
        if isinstance(value, Any) and value.type_url:
            yield from _messages(value.unpack())
        for name in value._betterproto.meta_by_field_name:
            yield from _messages(getattr(value, name))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _messages(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _messages(item)


def _translated_classes() -> list[type]:
    gateways = list(translate(compile_loaded(load_objects(policy_documents(30))).compiled).values())
    for case in cases():
        compiled = yaml.safe_load((GOLDEN / case / COMPILED).read_text())
        for plain in compiled["gateways"].values():
            gateways.append(translate_gateway(from_plain(plain), **options(case)))
    classes = {type(m) for gw in gateways for m in _messages([*gw.listeners, *gw.clusters])}
    classes |= {type(m) for gw in gateways for m in _messages(list(gw.secrets))}
    return sorted(classes, key=lambda c: f"{c.__module__}.{c.__qualname__}")


CLASSES = _translated_classes()


def test_the_translator_uses_many_classes_and_every_one_has_a_plan():
    assert len(CLASSES) > 60
    for cls in CLASSES:
        check(build(cls))


@functools.cache
def _pydantic(cls: type) -> pydantic_core.SchemaValidator:
    pydantic.dataclasses.rebuild_dataclass(cls)
    return pydantic_core.SchemaValidator(cls.__pydantic_core_schema__)


def pydantic_refuses(message: betterproto2.Message) -> bool:
    """betterproto2's own validation at serialization (`Message._validate`)."""
    fields = dict(message.__dict__)
    del fields["_unknown_fields"]
    try:
        _pydantic(type(message)).validate_python(fields)
    except pydantic.ValidationError:
        return True
    return False


def check_refuses(message: betterproto2.Message) -> bool:
    try:
        check(message)
    except InvalidMessage:
        return True
    return False


_INTS = {
    betterproto2.TYPE_INT32: (-(2**31), 2**31 - 1),
    betterproto2.TYPE_SINT32: (-(2**31), 2**31 - 1),
    betterproto2.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    betterproto2.TYPE_UINT32: (0, 2**32 - 1),
    betterproto2.TYPE_FIXED32: (0, 2**32 - 1),
    betterproto2.TYPE_INT64: (-(2**63), 2**63 - 1),
    betterproto2.TYPE_SINT64: (-(2**63), 2**63 - 1),
    betterproto2.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    betterproto2.TYPE_UINT64: (0, 2**64 - 1),
    betterproto2.TYPE_FIXED64: (0, 2**64 - 1),
}


def _one(proto_type: str, cls: type | None, unwrap) -> st.SearchStrategy:
    """One right value of a proto type, written independently of the plan."""
    if unwrap is not None:
        wrapper = unwrap()
        if wrapper.__name__ == "Duration":
            days = datetime.timedelta(days=9999)
            return st.timedeltas(min_value=-days, max_value=days)
        if wrapper.__name__ == "Timestamp":
            return st.datetimes(timezones=st.just(datetime.UTC))
        value = wrapper._betterproto.meta_by_field_name["value"]
        return _one(value.proto_type, None, None)
    if proto_type == betterproto2.TYPE_MESSAGE:
        return st.builds(build, st.just(cls))
    if proto_type == betterproto2.TYPE_ENUM:
        return st.sampled_from(list(cls))
    if proto_type in _INTS:
        return st.integers(*_INTS[proto_type])
    return {
        betterproto2.TYPE_STRING: st.text(max_size=4),
        betterproto2.TYPE_BYTES: st.binary(max_size=4),
        betterproto2.TYPE_BOOL: st.booleans(),
        betterproto2.TYPE_DOUBLE: st.floats(),
        betterproto2.TYPE_FLOAT: st.floats(width=32),
    }[proto_type]


def right(cls: type, name: str) -> st.SearchStrategy:
    meta = cls._betterproto.meta_by_field_name[name]
    by_field = cls._betterproto.cls_by_field
    if meta.map_meta is not None:
        k, v = meta.map_meta
        key = _one(k.proto_type, None, None)
        value = _one(v.proto_type, by_field.get(f"{name}.value"), v.unwrap)
        return st.dictionaries(key, value, max_size=2)
    one = _one(meta.proto_type, by_field.get(name), meta.unwrap)
    if meta.repeated:
        return st.lists(one, max_size=2)
    if type(None) in typing.get_args(cls._type_hints()[name]):
        return st.none() | one
    return one


WRONG_VALUES = [
        None, 0, 1, -1, 2**31, -(2**31) - 1, 2**32, 2**63, -(2**63) - 1, 2**64, 1.5,
        float("inf"), True, False, "", "x", "\ud800", b"", b"x", bytearray(b"x"), [], [None],
        ["x"], [1], [b"x"], ("x",), (), {}, {"k": "v"}, {"k": 1}, {1: "v"}, {"k": None},
        datetime.timedelta(seconds=1), datetime.datetime(2020, 1, 1), object(),
        build(StringMatcher), build(XdsStringMatcher), [build(StringMatcher)],
        [build(XdsStringMatcher)], build(Any), {"k": build(Any)}, build(Listener), 10**400,
        float("nan"), {"k": 2**64}, {"k": "\ud800"}, {"\ud800": "v"}, {"k": [1]},
]  # fmt: skip
_WRONG = st.sampled_from(WRONG_VALUES)


def wrong(cls: type) -> st.SearchStrategy:
    """A value likely not of the field's type: odd ones, or another field's right value
    (a message of another class, another enum, a list of those)."""
    names = sorted(cls._betterproto.meta_by_field_name)
    if not names:
        return _WRONG
    other = st.sampled_from(names).flatmap(lambda n: right(cls, n))
    return _WRONG | other | st.lists(other, min_size=1, max_size=2)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__qualname__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_the_check_refuses_every_message_pydantic_refuses(cls, data):
    names = sorted(cls._betterproto.meta_by_field_name)
    chosen = data.draw(st.lists(st.sampled_from(names), unique=True, max_size=4)) if names else []
    fields = {n: data.draw(right(cls, n) | wrong(cls)) for n in chosen}
    if data.draw(st.integers(0, 9)) == 0:
        fields["not_a_field"] = "x"
    message = build(cls, **fields)
    if pydantic_refuses(message):
        assert check_refuses(message), fields


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__qualname__)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_the_check_accepts_right_values_which_serialize_as_betterproto2_writes_them(cls, data):
    betterproto_speed.install()
    fields = {}
    taken = set()  # oneof groups with a member set: pydantic refuses a second one
    for name, meta in cls._betterproto.meta_by_field_name.items():
        if meta.group is not None and meta.group in taken:
            continue
        if data.draw(st.booleans()):
            fields[name] = data.draw(right(cls, name))
            if meta.group is not None and fields[name] is not None:
                taken.add(meta.group)
    message = build(cls, **fields)
    assert not pydantic_refuses(message), fields
    check(message)
    assert bytes(message) == betterproto_speed._plain_bytes(message)


# Classes with the field kinds the translator's own classes lack (int32, int64, double,
# float, the Timestamp, DoubleValue and FloatValue wrappers, a map of messages): the
# check's rules for them are held to pydantic too.
EXTRA_CLASSES = [
    Int32Range, Int64Range, Percent, RuntimeDouble, RateLimitSettings, BootstrapConfigDump,
    GrpcServiceGoogleGrpcChannelArgs, GrpcServiceGoogleGrpcChannelArgsValue, FloatValue,
    ApiConfigSource, DescriptorProtoExtensionRange,
]  # fmt: skip


@pytest.mark.parametrize("cls", CLASSES + EXTRA_CLASSES, ids=lambda c: c.__qualname__)
def test_every_field_refuses_every_odd_value_pydantic_refuses(cls):
    """Deterministic, unlike the sampled test above: every field of every class against
    every value of WRONG_VALUES."""
    by_field = cls._betterproto.cls_by_field
    for name, meta in cls._betterproto.meta_by_field_name.items():
        odd = list(WRONG_VALUES)
        if meta.map_meta is not None:  # a key of the wrong type beside a right value
            value_cls = by_field.get(f"{name}.value")
            odd.append({1: build(value_cls) if value_cls is not None else ""})
        for value in odd:
            message = build(cls, **{name: value})
            if pydantic_refuses(message):
                assert check_refuses(message), (name, value)
    extra = build(cls, not_a_field="x")
    assert pydantic_refuses(extra) and check_refuses(extra)


def test_a_double_too_large_for_the_wire_and_an_enum_number_past_int32_are_refused():
    """pydantic refuses the first; the second it takes, and Envoy would read another
    number.  A number the enum does not name is taken, as pydantic does: a deny
    response's HTTP status may be one StatusCode does not list."""
    assert check_refuses(build(Percent, value=10**400))
    assert check_refuses(build(SocketAddress, protocol=SocketAddressProtocol(2**40)))
    assert check_refuses(build(SocketAddress, protocol=SocketAddressProtocol(-(2**31) - 1)))
    check(build(SocketAddress, protocol=SocketAddressProtocol.UDP))
    check(build(HttpStatus, code=StatusCode(451)))
    check(build(Percent, value=10**300))


def test_a_message_of_the_wrong_class_in_a_message_field_is_refused_where_it_is_written():
    """Serialization alone would write it (the bytes of a SocketAddress as an Address)."""
    betterproto_speed.install()
    for message in (
        build(Listener, address=build(SocketAddress, address="10.0.0.1")),
        build(Listener, filter_chains=[build(FilterChain), build(Listener)]),
        build(Listener, address=build(Address, pipe=build(StringMatcher))),  # deeper down
    ):
        with pytest.raises(InvalidMessage):
            bytes(message)
