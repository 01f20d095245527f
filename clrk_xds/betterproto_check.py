"""`check(message)`: the type check a message passes before `betterproto_speed` writes it,
in place of pydantic's validation of every field of every message.

Messages are built unvalidated (`betterproto_speed.build`), so this is the one check of
what reaches Envoy.  It is planned once per class from betterproto2's field metadata and
accepts only values of a field's own Python type: a message of exactly the declared class
(serialization alone would write one of any class), a list of such for a repeated field,
str, bytes, bool, an int in the proto type's range, a float (or an int a double holds), the
field's own enum (an int32), a dict of typed keys and values for a map, the
unwrapped type of a wrapper (timedelta for a Duration, ...), None only where the field
may be unset, at most one member of a oneof, and no attribute that is not a field.
That is stricter than pydantic (which coerces "7" or 7.0 to an int, a dict to a message,
a tuple to a list, and takes an enum number past int32); the tests hold it to refusing
whatever pydantic refuses, and to accepting what the translator builds.

A field of a kind the plan does not know (none of envoy_data_plane's) fails its class's
every check: a translation that makes one fails closed.
"""

from __future__ import annotations

import datetime
import struct
import typing
from collections.abc import Callable

import betterproto2


class InvalidMessage(ValueError):
    """A message holds a value its field does not take: it must not be serialized."""


_NONE = type(None)
_INT_RANGES = {
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
_SCALARS = {
    betterproto2.TYPE_STRING: str,
    betterproto2.TYPE_BYTES: bytes,
    betterproto2.TYPE_BOOL: bool,
}
_UNWRAPPED = {"Duration": datetime.timedelta, "Timestamp": datetime.datetime}
# What betterproto_speed keeps on a message besides its fields (memos, no fields).
MEMOS = ("_clrk_wire", "_clrk_derived", "_clrk_packed")

# A value check: (exact types accepted, a check of a non-empty value or None).
Check = tuple[frozenset, Callable[[object], None] | None]


def _fail(reason: str) -> typing.NoReturn:
    raise InvalidMessage(reason)


def _utf8(value: str) -> None:
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            _fail("not valid UTF-8")


def _int_range(low: int, high: int) -> Callable[[object], None]:
    def within(value) -> None:
        if not low <= value <= high:
            _fail(f"{value} is out of range [{low}, {high}]")

    return within


def _double(value) -> None:
    if type(value) is int:  # an int the wire's double cannot hold would fail to pack
        try:
            float(value)
        except OverflowError:
            _fail(f"{value} is not a double")


def _enum_number(value) -> None:
    # An enum is an int32 on the wire: a number past it would be read as another one.
    # Numbers the enum does not name pass, as in pydantic: Envoy takes some (an HTTP
    # status such as 451 that StatusCode does not list).
    if not -(2**31) <= int(value) <= 2**31 - 1:
        _fail(f"{int(value)} is out of an enum's range")


def _float32(value) -> None:
    try:
        struct.pack("!f", value)
    except (struct.error, OverflowError):
        _fail(f"{value} is not a float")


def _single(proto_type: str, cls: type | None, unwrap: Callable[[], type] | None) -> Check:
    """The check of one value of `proto_type` (`cls`: its message or enum class)."""
    if unwrap is not None:
        wrapper = unwrap()
        if wrapper.__name__ in _UNWRAPPED:
            return frozenset((_UNWRAPPED[wrapper.__name__],)), None
        meta = wrapper._betterproto.meta_by_field_name.get("value")
        if meta is None or meta.repeated or meta.proto_type == betterproto2.TYPE_MESSAGE:
            _fail(f"no check for a field of wrapper {wrapper.__name__}")
        return _single(meta.proto_type, None, None)
    if proto_type == betterproto2.TYPE_MESSAGE:
        return frozenset((cls,)), None
    if proto_type == betterproto2.TYPE_ENUM:
        return frozenset((cls,)), _enum_number
    if proto_type in _INT_RANGES:
        return frozenset((int,)), _int_range(*_INT_RANGES[proto_type])
    if proto_type == betterproto2.TYPE_DOUBLE:
        return frozenset((float, int)), _double
    if proto_type == betterproto2.TYPE_FLOAT:
        return frozenset((float, int)), _float32
    if proto_type in _SCALARS:
        return frozenset((_SCALARS[proto_type],)), _utf8 if proto_type == "string" else None
    _fail(f"no check for a field of type {proto_type}")


def _each(item: Check) -> Callable[[object], None]:
    accept, deeper = item

    def each(values) -> None:
        for value in values:
            if type(value) not in accept:
                _fail(f"an item of type {type(value).__name__}")
            if deeper is not None and value:
                deeper(value)

    return each


def _entries(key: Check, value: Check) -> Callable[[object], None]:
    keys, values = _each(key), _each(value)

    def entries(mapping) -> None:
        keys(mapping.keys())
        values(mapping.values())

    return entries


def _field(cls: type, name: str, meta: betterproto2.FieldMetadata) -> Check:
    by_field = cls._betterproto.cls_by_field
    if meta.map_meta is not None:
        k, v = meta.map_meta
        key = _single(k.proto_type, None, None)  # maps are keyed by scalars
        value = _single(v.proto_type, by_field.get(f"{name}.value"), v.unwrap)
        return frozenset((dict,)), _entries(key, value)
    single = _single(meta.proto_type, by_field.get(name), meta.unwrap)
    if meta.repeated:
        return frozenset((list,)), _each(single)
    accept, deeper = single
    if meta.optional or meta.group is not None:  # typed `X | None`: it may be unset
        accept |= {_NONE}
    return accept, deeper


class _Plan(typing.NamedTuple):
    fields: tuple[tuple[str, frozenset, Callable[[object], None] | None], ...]
    oneofs: tuple[tuple[str, tuple[str, ...]], ...]
    size: int  # len(__dict__) with every field and the unknown fields, no memo
    names: frozenset  # what __dict__ may hold


def _plan(cls: type) -> _Plan:
    metas = cls._betterproto.meta_by_field_name
    try:
        fields = tuple((name, *_field(cls, name, meta)) for name, meta in metas.items())
    except InvalidMessage as exc:
        raise InvalidMessage(f"{cls.__name__}: {exc}") from None
    oneofs = []
    for group, members in cls._betterproto.oneof_field_by_group.items():
        # A one-member group of an `optional` field is no oneof (as betterproto2 has it).
        if len(members) == 1 and metas[next(iter(members)).name].optional:
            continue
        oneofs.append((group, tuple(sorted(f.name for f in members))))
    names = frozenset((*metas, "_unknown_fields", *MEMOS))
    return _Plan(fields, tuple(oneofs), len(metas) + 1, names)


_plans: dict[type, _Plan] = {}
_ABSENT = object()


def check(message: betterproto2.Message) -> None:
    """Raises InvalidMessage unless every field of `message` holds a value of its type
    (the fields only: a message in a field is checked when it is serialized)."""
    cls = type(message)
    plan = _plans.get(cls)
    if plan is None:
        plan = _plans[cls] = _plan(cls)
    state = message.__dict__
    if len(state) != plan.size or type(state.get("_unknown_fields")) is not bytes:
        extra = state.keys() - plan.names
        if extra:
            _fail(f"{cls.__name__} has no field {sorted(extra)[0]!r}")
        if type(state.get("_unknown_fields")) is not bytes:
            _fail(f"{cls.__name__} has no unknown fields' bytes")
    for name, accept, deeper in plan.fields:
        value = state.get(name, _ABSENT)
        if type(value) not in accept:
            what = "nothing" if value is _ABSENT else f"a {type(value).__name__}"
            _fail(f"{cls.__name__}.{name} holds {what}, not a value of its type")
        if deeper is not None and value:
            try:
                deeper(value)
            except InvalidMessage as exc:
                raise InvalidMessage(f"{cls.__name__}.{name}: {exc}") from None
    for group, members in plan.oneofs:
        chosen = False
        for name in members:
            if state[name] is not None:
                if chosen:
                    _fail(f"{cls.__name__}: more than one member of oneof {group} is set")
                chosen = True
