"""What asynccache stores: an envelope around the value, encoded with orjson.

An envelope is the JSON object ``{"v": 1, "c": created_at, "e": expires_at, "d": value}``
(``"b"`` holds base64 instead of ``"d"`` when the value is ``bytes``). Keeping created-at
and expires-at inside the entry lets every backend answer ``s-maxage`` and TTL questions
the same way, including object stores that have no native expiry.

Counters written by :meth:`BaseCache.async_increment` are stored as bare JSON numbers so
stores with an atomic increment (Redis ``INCRBYFLOAT``) can update them in place; a bare
number decodes as a value with no timestamps.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any

import orjson

from .exceptions import SerializationError

FORMAT_VERSION = 1
_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True, slots=True)
class Entry:
    """A decoded cache entry."""

    value: Any
    created_at: float | None
    expires_at: float | None

    def is_expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def age(self, now: float) -> float | None:
        return None if self.created_at is None else max(0.0, now - self.created_at)

    def remaining_ttl(self, now: float) -> float | None:
        return None if self.expires_at is None else max(0.0, self.expires_at - now)


class CorruptEntry(ValueError):
    """Stored bytes that are not an asynccache entry (internal: callers see a miss)."""


def _find_non_finite(value: Any) -> bool:
    """Whether ``value`` holds a NaN or an infinity anywhere (iterative, no recursion).

    Exact-type checks first: strings and ints, most of a completion, cost one
    comparison each.
    """
    stack = [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None:
            continue
        if kind is dict:
            extend(item.values())
        elif kind is list or kind is tuple:
            extend(item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            extend(item.values())
        elif isinstance(item, list | tuple):
            extend(item)
    return False


def encode(value: Any, created_at: float, expires_at: float | None, key: str = "") -> bytes:
    """Encode ``value`` in an envelope; raise :class:`SerializationError` naming ``key``."""
    envelope: dict[str, Any] = {"v": FORMAT_VERSION, "c": created_at, "e": expires_at}
    if isinstance(value, bytes | bytearray | memoryview):
        envelope["b"] = base64.b64encode(bytes(value)).decode("ascii")
    else:
        envelope["d"] = value
    try:
        data = orjson.dumps(envelope, option=_DUMP_OPTIONS)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise SerializationError(
            f"cannot cache the value for key {key[:200]!r}: {exc} "
            "(values must be JSON types, bytes, dataclasses or datetimes; "
            "convert objects, e.g. pydantic models with .model_dump())"
        ) from exc
    # orjson writes NaN/Infinity as null, which would silently change the value; the
    # walk only runs when a null is present at all.
    if b"null" in data and _find_non_finite(value):
        raise SerializationError(
            f"cannot cache the value for key {key[:200]!r}: it contains NaN or Infinity, "
            "which JSON cannot represent"
        )
    return data


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def decode(data: bytes | bytearray | memoryview | str) -> Entry:
    """Decode stored bytes; raise :class:`CorruptEntry` if they are not an entry."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CorruptEntry(f"not JSON: {exc}") from exc
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return Entry(raw, None, None)
    version = raw.get("v") if isinstance(raw, dict) else None
    # bool is an int in Python (True == 1): reject it explicitly wherever a number is due.
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise CorruptEntry("not an asynccache envelope of a known version")
    created_at, expires_at = raw.get("c"), raw.get("e")
    if not _is_number(created_at) or not (expires_at is None or _is_number(expires_at)):
        raise CorruptEntry("envelope timestamps are malformed")
    if "d" in raw:
        return Entry(raw["d"], float(created_at), expires_at)
    if isinstance(raw.get("b"), str):
        try:
            return Entry(base64.b64decode(raw["b"], validate=True), float(created_at), expires_at)
        except (binascii.Error, ValueError) as exc:
            raise CorruptEntry("envelope bytes are not base64") from exc
    raise CorruptEntry("envelope has no value")


def peek_expires_at(data: bytes) -> float | None:
    """The expiry of stored bytes, or ``None`` (no expiry, counter or unreadable)."""
    try:
        return decode(data).expires_at
    except CorruptEntry:
        return None
