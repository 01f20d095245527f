"""Two serialization shortcuts for betterproto2 messages, installed by `install()`.

- betterproto2 (0.9) validates a pydantic message on every serialization by building a
  fresh `SchemaValidator` from the class schema - for every nested message, every
  time.  For a 1,000-route listener that is half of the serialization time.  The
  validator depends only on the class, so building it once per class keeps the
  validation and drops the cost.
- A message the translator will never change can be `freeze`d: its wire bytes (and,
  for `consistency`, its nested messages) are kept on the message itself, so a
  reload that reuses it does not serialize or walk it again.

Both patch `betterproto2.Message` for the whole process, so nothing installs them on
import: `clrk_xds.translate.ChainCache` does when a control plane creates one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import betterproto2
import pydantic_core

_validators: dict[type, pydantic_core.SchemaValidator] = {}


def _cached_validate(self) -> None:  # same contract as betterproto2.Message._validate
    cls = type(self)
    validator = _validators.get(cls)
    if validator is None:
        if not self._is_pydantic():
            raise TypeError("Validation is only available for pydantic dataclasses.")
        validator = _validators[cls] = pydantic_core.SchemaValidator(self.__pydantic_core_schema__)
    fields = self.__dict__.copy()
    del fields["_unknown_fields"]
    fields.pop(_WIRE, None)
    fields.pop(_NESTED, None)
    validator.validate_python(fields)


def install() -> None:
    """Both shortcuts, once per process (idempotent)."""
    original = getattr(betterproto2.Message, "_validate", None)
    if original is not None and original is not _cached_validate:
        betterproto2.Message._validate = _cached_validate  # type: ignore[method-assign]
    if betterproto2.Message.__bytes__ is not _bytes_with_memo:
        betterproto2.Message.__bytes__ = _bytes_with_memo  # type: ignore[method-assign]


# --- wire bytes of unchanging sub-messages -----------------------------------------------

_WIRE = "_clrk_wire"
_NESTED = "_clrk_nested"
_plain_bytes = betterproto2.Message.__bytes__


def _bytes_with_memo(self) -> bytes:
    wire = self.__dict__.get(_WIRE)
    return wire if wire is not None else _plain_bytes(self)


def freeze(message) -> None:
    """Remember `message`'s wire bytes: the translator never changes a message it built,
    and a 1,000-route listener reuses nearly all of its route parts from the last run.
    Does nothing before `install()`: betterproto2's own validation refuses the memo."""
    if betterproto2.Message.__bytes__ is _bytes_with_memo:
        message.__dict__[_WIRE] = _plain_bytes(message)


def is_frozen(message) -> bool:
    """True for a message `freeze` marked: it will not change while it lives."""
    return _WIRE in getattr(message, "__dict__", {})


def nested(message, walk: Callable[[object], Iterable]) -> list:
    """`list(walk(message))`, kept on a frozen message so that it is walked once."""
    if not is_frozen(message):
        return list(walk(message))
    found = message.__dict__.get(_NESTED)
    if found is None:
        found = message.__dict__[_NESTED] = list(walk(message))
    return found
