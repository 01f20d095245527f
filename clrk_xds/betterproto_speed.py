"""Shortcuts for betterproto2 messages: three for serialization, installed by `install()`,
and `build`, a constructor that leaves the validation to serialization.

- betterproto2 (0.9) validates a pydantic message on every serialization by building a
  fresh `SchemaValidator` from the class schema - for every nested message, every
  time.  `_serialize` checks each message with `betterproto_check.check` instead, a
  type check planned once per class that refuses whatever that validation refuses (and
  the coercions it would have let through); `_validate`, which parsing still runs, builds
  its validator once per class.
- betterproto2 (0.9) looks up how to serialize each field on every serialization:
  whether the class is a pydantic one, each field's default (built afresh, under a
  `warnings` context), its tag.  `_serialize` reads a plan made once per class and
  writes the same bytes (tests compare it with betterproto2's own on translated
  listeners); with the check, it halves a cold translation.
- A message the translator will never change can be `freeze`d: its wire bytes (and,
  for `consistency`, what it names) are kept on the message itself, so a reload that
  reuses it does not serialize or look into it again.  `pack` keeps the message it
  packed on the Any, so that looking into it needs no parsing.
- `build(cls, **fields)` makes a message without pydantic's validation at construction:
  a 10,000-route translation makes ~300,000 messages, and validating each when it is
  made and again when it is serialized was most of its cost.  The one check kept is the
  one at serialization (betterproto2's `__bytes__` validates every message it writes,
  `_serialize` checks it), so what is checked is what is sent, even if a message
  changed after it was made; a value of the wrong type fails there, before any snapshot.
  Nor does `build` ask pydantic for anything: a class whose messages are only built
  never has its validation schema made (the first construction of a class does it).

The first three patch `betterproto2.Message` for the whole process, so nothing installs
them on import: `clrk_xds.translate.ChainCache` does when a control plane creates one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

import betterproto2
import pydantic.dataclasses
from envoy_data_plane.google.protobuf import Any
from envoy_data_plane.message_pool import default_message_pool

from clrk_xds.betterproto_check import MEMOS, check

M = TypeVar("M", bound=betterproto2.Message)


def _cached_validate(self) -> None:  # same contract as betterproto2.Message._validate
    """betterproto2's validation with the class's own validator, which pydantic builds
    once (and rebuilds from its schema if the class was only ever `build`-made)."""
    if not self._is_pydantic():
        raise TypeError("Validation is only available for pydantic dataclasses.")
    fields = self.__dict__.copy()
    del fields["_unknown_fields"]
    fields.pop(_WIRE, None)
    fields.pop(_DERIVED, None)
    fields.pop(_PACKED, None)
    type(self).__pydantic_validator__.validate_python(fields)


def install() -> None:
    """The shortcuts, once per process (idempotent)."""
    original = getattr(betterproto2.Message, "_validate", None)
    if original is not None and original is not _cached_validate:
        betterproto2.Message._validate = _cached_validate  # type: ignore[method-assign]
    if betterproto2.Message.__bytes__ is not _bytes_with_memo:
        betterproto2.Message.__bytes__ = _bytes_with_memo  # type: ignore[method-assign]


def installed() -> bool:
    """True once `install()` ran in this process (until then `freeze` does nothing)."""
    return betterproto2.Message.__bytes__ is _bytes_with_memo


# --- wire bytes of unchanging sub-messages -----------------------------------------------

_WIRE, _DERIVED, _PACKED = MEMOS
_plain_bytes = betterproto2.Message.__bytes__


def _bytes_with_memo(self) -> bytes:
    wire = self.__dict__.get(_WIRE)
    return wire if wire is not None else _serialize(self)


# --- betterproto2's __bytes__, planned once per class -------------------------------------

_MESSAGE, _MESSAGES, _STRING, _OTHER = range(4)
# class -> (validate?, [(field name, meta, default, kind, tag bytes)])
_plans: dict[type, tuple[bool, list[tuple]]] = {}


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:  # most nested messages: two bytes, without the general encoder
        return bytes((n & 0x7F | 0x80, n >> 7))
    return betterproto2.encode_varint(n)


def _plan(message) -> tuple[bool, list[tuple]]:
    cls = type(message)
    plan = _plans.get(cls)
    if plan is None:
        fields = []
        for name, meta in message._betterproto.meta_by_field_name.items():
            # The default is only compared with, never handed out: one per class will do.
            default = message._get_field_default(name)
            tag = betterproto2.encode_varint((meta.number << 3) | 2)
            kind = _OTHER
            if meta.proto_type == betterproto2.TYPE_MESSAGE and meta.unwrap is None:
                kind = _MESSAGES if meta.repeated else _MESSAGE
            elif meta.proto_type == betterproto2.TYPE_STRING and not meta.repeated:
                kind = _STRING
            fields.append((name, meta, default, kind, tag))
        plan = _plans[cls] = (message._is_pydantic(), fields)
    return plan


def _serialize(self) -> bytes:
    """betterproto2.Message.__bytes__ (0.9.1), field by field, from the class's plan."""
    validate, fields = _plan(self)
    if validate:
        check(self)
    out = []
    for name, meta, default, kind, tag in fields:
        value = getattr(self, name)
        if value is None or value == default:
            continue  # unset optional, or a default (zero) value: not serialized
        if kind == _MESSAGE:
            raw = bytes(value)
            out += (tag, _length(len(raw)), raw)
        elif kind == _MESSAGES:
            for item in value:
                raw = bytes(item)
                out += (tag, _length(len(raw)), raw)
        elif kind == _STRING:
            raw = value.encode("utf-8")
            out += (tag, _length(len(raw)), raw)
        else:
            out.append(_other_field(meta, value))
    out.append(self._unknown_fields)
    return b"".join(out)


def _other_field(meta, value) -> bytes:
    """Every other field exactly as betterproto2 writes it."""
    single = betterproto2._serialize_single
    if meta.repeated:
        if meta.proto_type in betterproto2.PACKED_TYPES:
            buf = bytearray()
            for item in value:
                buf += betterproto2._preprocess_single(meta.proto_type, None, item)
            return single(meta.number, betterproto2.TYPE_BYTES, buf)
        return b"".join(
            single(meta.number, meta.proto_type, item, unwrap=meta.unwrap) or b"\n\x00"
            for item in value
        )
    if meta.map_meta:
        out = []
        for k, v in value.items():
            sk = single(1, meta.map_meta[0].proto_type, k)
            sv = single(2, meta.map_meta[1].proto_type, v, unwrap=meta.map_meta[1].unwrap)
            out.append(single(meta.number, meta.proto_type, sk + sv))
        return b"".join(out)
    return single(meta.number, meta.proto_type, value, unwrap=meta.unwrap)


def freeze(message) -> None:
    """Remember `message`'s wire bytes: the translator never changes a message it built,
    and a 1,000-route listener reuses nearly all of its route parts from the last run.
    Does nothing before `install()`: betterproto2's own validation refuses the memo."""
    if installed():
        message.__dict__[_WIRE] = _serialize(message)


def is_frozen(message) -> bool:
    """True for a message `freeze` marked: it will not change while it lives."""
    return _WIRE in getattr(message, "__dict__", {})


def derived(message, compute: Callable[[object], object]) -> object:
    """`compute(message)`, kept on a frozen message (one per `compute`), so that what a
    reload asks of an unchanged chain again is computed once."""
    if not is_frozen(message):
        return compute(message)
    memo = message.__dict__.setdefault(_DERIVED, {})
    if compute not in memo:
        memo[compute] = compute(message)
    return memo[compute]


# --- construction, validated once: when serialized ------------------------------------

# class -> (every field at its default, the fields whose default is a fresh list or dict)
_blanks: dict[type, tuple[dict[str, object], tuple[str, ...]]] = {}


def _blank(cls: type) -> tuple[dict[str, object], tuple[str, ...]]:
    """`cls().__dict__` without constructing (which would make pydantic's schema, which
    only betterproto2's own serializer needs: not installed, it still gets it)."""
    if not installed():
        pydantic.dataclasses.rebuild_dataclass(cls)
    with warnings.catch_warnings():  # as betterproto2's defaults of deprecated fields
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        values = {name: make() for name, make in cls._betterproto.default_gen.items()}
    values["_unknown_fields"] = b""
    fresh = tuple(name for name, value in values.items() if isinstance(value, list | dict))
    return values, fresh


def build(cls: type[M], **fields: object) -> M:
    """`cls(**fields)` for values of each field's own type (a message, a list of
    messages, a str, ...: pydantic would coerce others, this keeps them as given),
    validated when it is serialized rather than now (see the module's docstring): a
    field the class does not have fails there too."""
    blank = _blanks.get(cls)
    if blank is None:
        blank = _blanks[cls] = _blank(cls)
    values, fresh = blank
    message = object.__new__(cls)
    state = message.__dict__
    state.update(values)
    for name in fresh:
        if name not in fields:
            state[name] = type(values[name])()  # never shared between two messages
    state.update(fields)
    return message


def pack(message: betterproto2.Message) -> Any:
    """`Any.pack(message)`, built as `build` builds (the bytes of `message` are
    validated as they are written).  With the shortcuts installed, `message` is frozen
    with those bytes and kept on the Any, so `packed` hands it back without parsing."""
    type_url = default_message_pool.type_to_url[type(message)]
    value = bytes(message)
    packed = build(Any, type_url=type_url, value=value)
    if installed():
        message.__dict__[_WIRE] = value
        packed.__dict__[_PACKED] = message
    return packed


def packed(value: Any) -> betterproto2.Message | None:
    """The message `pack` put into `value`, while `value` still holds its very bytes
    (None otherwise: then only parsing the bytes says what they hold)."""
    inner = value.__dict__.get(_PACKED)
    if inner is not None and inner.__dict__.get(_WIRE) is value.value:
        return inner
    return None
