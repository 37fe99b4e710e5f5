"""What asynccache stores: a small fixed header, then the value encoded with orjson.

An entry is ``header + payload``. The 21-byte header is ``b"\x00AC"``, the format
version, a flags byte, created-at and expires-at (little-endian float64 seconds). The
payload is the value's orjson bytes, or the raw bytes when the value is ``bytes`` (no
base64). Keeping created-at and expires-at inside the entry lets every backend answer
``s-maxage`` and TTL questions the same way, including object stores that have no native
expiry.

Why a binary header rather than a JSON object around the value: decoding then parses
only the value (no wrapper dict to build and check), reading the expiry never parses the
value, and ``header + payload`` is a fresh exact-size ``bytes``. The leading NUL byte can
never start JSON text, so an entry can never be mistaken for a counter or for foreign data.

Counters (:meth:`BaseCache.async_increment`) have one codec here too: stores without an
atomic increment keep them as ordinary entries holding a number (so the counter's expiry
travels with it like any entry's), stores with one (Redis ``INCRBYFLOAT``) keep them as
bare JSON numbers, which decode as a value with no timestamps. Either way a counter is
an ``int`` or a ``float`` and never a ``bool`` (:func:`is_counter_value`), and it reads
back as an ``int`` when it is whole (:func:`counter_number`).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import struct
from typing import Any, NamedTuple

import orjson

from .config import NOT_GIVEN, NotGiven
from .exceptions import SerializationError
from .protection import FLAGS as _PROTECTION_FLAGS
from .protection import PLAIN, Unreadable, ValueProtection

__all__ = [
    "Entry", "counter_number", "counter_value", "decode", "encode", "encode_counter",
    "is_counter_value", "peek_expires_at", "read_counter",
]

FORMAT_VERSION = 2
MAGIC = b"\x00AC"
_HEADER = struct.Struct("<3sBBdd")
# The header without its flags byte: authenticated with an encrypted payload.
_SEALED_FIELDS = struct.Struct("<3sBdd")
HEADER_SIZE = _HEADER.size
_HAS_EXPIRY = 1
_IS_BYTES = 2
# A counter: a number kept in the clear even when values are encrypted, like the bare
# numbers Redis counters are (the stores without an atomic increment need its expiry).
_IS_COUNTER = 32
_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_dumps = orjson.dumps
_pack_header = _HEADER.pack
_isfinite = math.isfinite


class Entry(NamedTuple):
    """A decoded cache entry (a named tuple: cheap to build on the read path)."""

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


def _plain_non_finite(children: Any) -> bool | None:
    """Whether plain JSON ``children`` hold a NaN or an infinity; ``None`` when one of them
    is not a plain JSON type (then :func:`_find_non_finite` walks the value).

    The fast scan of a typical completion: recursion is cheaper than an explicit stack in
    CPython, and it is bounded because orjson has already refused anything nested deeper
    than 255 levels.
    """
    for child in children:
        kind = type(child)
        if kind is str or child is None or kind is int or kind is bool:
            continue
        if kind is dict:
            found = _plain_non_finite(child.values())
        elif kind is list:
            found = _plain_non_finite(child)
        elif kind is float:
            found = bool(child - child)  # NaN - NaN and inf - inf are NaN, which is truthy
        else:
            return None
        if found is not False:
            return found
    return False


def _has_non_finite(value: Any) -> bool:
    """Whether ``value`` holds a NaN or an infinity anywhere."""
    found = _plain_non_finite((value,))
    return _find_non_finite(value) if found is None else found


def _find_non_finite(value: Any) -> bool:
    """Whether ``value`` holds a NaN or an infinity anywhere (iterative, no recursion).

    Containers are walked child by child with exact-type checks, so the strings, ints
    and ``None`` that make up most of a completion cost one comparison each and are
    never pushed on the stack.
    """
    stack = [value]
    pop, push = stack.pop, stack.append
    while stack:
        item = pop()
        kind = type(item)
        if kind is dict:
            children: Any = item.values()
        elif kind is list or kind is tuple:
            children = item
        else:
            if _leaf_is_non_finite(item, push):
                return True
            continue
        for child in children:
            kind = type(child)
            if kind is str or kind is int or child is None or kind is bool:
                continue
            if kind is float:
                if not _isfinite(child):
                    return True
            else:
                push(child)
    return False


def _leaf_is_non_finite(item: Any, push: Any) -> bool:
    """Check one non-container item; push what it holds (dataclass fields, enum values)."""
    if isinstance(item, str | int) or item is None:
        return False
    if isinstance(item, float):
        return not _isfinite(item)
    if isinstance(item, dict):
        for child in item.values():
            push(child)
    elif isinstance(item, list | tuple):
        for child in item:
            push(child)
    elif dataclasses.is_dataclass(item) and not isinstance(item, type):
        for field in dataclasses.fields(item):
            push(getattr(item, field.name))
    elif isinstance(item, enum.Enum):
        push(item.value)
    elif getattr(getattr(item, "dtype", None), "kind", None) in ("f", "c"):
        # numpy arrays and scalars: orjson writes their NaN/Infinity as null too.
        import numpy

        return not bool(numpy.isfinite(item).all())
    return False


def _json_default(value: Any) -> Any:
    """orjson's fallback: pydantic models (a LiteLLM ``ModelResponse``) as their JSON form."""
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return dump(mode="json")
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def encode(value: Any, created_at: float, expires_at: float | None, key: str = "",
           protection: ValueProtection | None = None) -> bytes:
    """Encode ``value`` as an entry; raise :class:`SerializationError` naming ``key``.

    ``protection`` compresses and/or encrypts the payload (see :mod:`asynccache.protection`).
    """
    flags = 0 if expires_at is None else _HAS_EXPIRY
    if type(value) is not dict and isinstance(value, bytes | bytearray | memoryview):
        payload = bytes(value)
        flags |= _IS_BYTES
    else:
        try:
            payload = _dumps(value, default=_json_default, option=_DUMP_OPTIONS)
        except (orjson.JSONEncodeError, TypeError) as exc:
            raise SerializationError(
                f"cannot cache the value for key {key[:200]!r}: {exc} "
                "(values must be JSON types, bytes, dataclasses, datetimes or pydantic "
                "models)"
            ) from exc
        # orjson writes NaN/Infinity as null, which would silently change the value; the
        # scan only runs when a null is present at all.
        if b"null" in payload and _has_non_finite(value):
            raise SerializationError(
                f"cannot cache the value for key {key[:200]!r}: it contains NaN or Infinity, "
                "which JSON cannot represent"
            )
    stored_expiry = 0.0 if expires_at is None else expires_at
    if protection is not None and protection.active:
        flags, payload = protection.seal(
            _SEALED_FIELDS.pack(MAGIC, FORMAT_VERSION, created_at, stored_expiry), flags, payload
        )
    return _pack_header(MAGIC, FORMAT_VERSION, flags, created_at, stored_expiry) + payload



def _open_payload(body: bytes | bytearray | memoryview, version: int, flags: int,
                  created_at: float, expires_at: float, protection: ValueProtection) -> bytes:
    """The plain payload of a compressed and/or encrypted entry (the header is
    authenticated with it); an entry that cannot be opened is a :class:`CorruptEntry`."""
    try:
        return protection.open(_SEALED_FIELDS.pack(MAGIC, version, created_at, expires_at),
                               flags, bytes(body))
    except Unreadable as exc:
        raise CorruptEntry(str(exc)) from exc

def decode(data: bytes | bytearray | memoryview,
           protection: ValueProtection = PLAIN) -> Entry:
    """Decode stored bytes; raise :class:`CorruptEntry` if they are not an entry.

    Compressed entries decode with any ``protection``; encrypted ones need a
    ``protection`` holding their key, and a ``protection`` that encrypts refuses
    unencrypted entries (all as :class:`CorruptEntry`: a counted miss).
    """
    plain = _plain_header(data, protection)
    if plain is not None:
        flags, created_at, expires_at = plain
        return Entry(_parse_payload(data), created_at, expires_at if flags else None)
    if data[:3] == MAGIC:
        if len(data) < HEADER_SIZE:
            raise CorruptEntry("entry header is truncated")
        _, version, flags, created_at, expires_at = _HEADER.unpack_from(data)
        if version != FORMAT_VERSION or flags & ~(_HAS_EXPIRY | _IS_BYTES | _IS_COUNTER
                                                   | _PROTECTION_FLAGS):
            raise CorruptEntry(f"unknown entry format version {version} / flags {flags}")
        if not (math.isfinite(created_at) and math.isfinite(expires_at)):
            raise CorruptEntry("entry timestamps are malformed")
        # A bytes slice, not a memoryview: orjson parses a memoryview about 2x slower
        # (4.3 us vs 2.3 us for a 2 KB completion), far more than the 0.1 us copy.
        body = data[HEADER_SIZE:]
        if flags & _PROTECTION_FLAGS or (protection.encrypts and not flags & _IS_COUNTER):
            body = _open_payload(body, version, flags, created_at, expires_at, protection)
        if flags & _IS_BYTES:
            value: Any = bytes(body)
        else:
            try:
                value = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise CorruptEntry(f"entry payload is not JSON: {exc}") from exc
        if flags & _IS_COUNTER and not is_counter_value(value):
            raise CorruptEntry("a counter entry holds something other than a number")
        return Entry(value, created_at, expires_at if flags & _HAS_EXPIRY else None)
    # Counters are bare JSON numbers (so Redis INCRBYFLOAT can update them in place).
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CorruptEntry(f"not an asynccache entry: {exc}") from exc
    # bool is an int in Python (True == 1): a JSON true is not a counter.
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return Entry(raw, None, None)
    raise CorruptEntry("not an asynccache entry (no header)")


class Miss:
    """Why :func:`decode_live` found no live value (a sentinel, never a stored value)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"<{self.reason}>"


#: :func:`decode_live` results for an entry past its expiry, and one older than max-age.
EXPIRED = Miss("expired")
TOO_OLD = Miss("too old")
_unpack_header = _HEADER.unpack_from
_KNOWN_FLAGS = _HAS_EXPIRY | _IS_BYTES | _PROTECTION_FLAGS
_loads = orjson.loads
_INF = math.inf


def _plain_header(data: bytes | bytearray | memoryview,
                  protection: ValueProtection) -> tuple[int, float, float] | None:
    """``(flags, created_at, expires_at)`` when ``data`` is a plain JSON entry of this format
    (not compressed, encrypted, bytes or a counter; finite timestamps), else ``None``.

    The one check in front of both decoders' fast paths.
    """
    try:
        magic, version, flags, created_at, expires_at = _unpack_header(data)
    except struct.error:
        return None  # shorter than a header: a bare counter, a truncated entry or junk
    # Chained comparisons reject NaN and infinities without a call.
    if (magic == MAGIC and version == FORMAT_VERSION and flags <= _HAS_EXPIRY
            and -_INF < created_at < _INF and -_INF < expires_at < _INF
            and not protection.encrypts):
        return flags, created_at, expires_at
    return None


def _parse_payload(data: bytes | bytearray | memoryview) -> Any:
    try:
        return _loads(data[HEADER_SIZE:])
    except orjson.JSONDecodeError as exc:
        raise CorruptEntry(f"entry payload is not JSON: {exc}") from exc


def decode_live(data: bytes, now: float, max_age: float | None = None,
                protection: ValueProtection = PLAIN) -> Any:
    """The value of a live entry, :data:`EXPIRED` or :data:`TOO_OLD`; raise :class:`CorruptEntry`.

    The read hot path: the header is unpacked in place, no :class:`Entry` is built, the
    expiry is checked before the payload is touched, and the payload is parsed from one
    exact-size slice (orjson parses a memoryview about 2x slower than the 0.1 us copy
    costs). ``protection`` as in :func:`decode`.
    """
    # _plain_header's check, inlined: a call costs 4% of a memory get.
    try:
        magic, version, flags, created_at, expires_at = _unpack_header(data)
    except struct.error:
        magic = None
    if (magic == MAGIC and version == FORMAT_VERSION and flags <= _HAS_EXPIRY
            and -_INF < created_at < _INF and -_INF < expires_at < _INF
            and not protection.encrypts):
        if flags and now >= expires_at:
            return EXPIRED
        if max_age is not None and now - created_at > max_age:
            return TOO_OLD
        try:
            return _loads(data[HEADER_SIZE:])
        except orjson.JSONDecodeError as exc:
            raise CorruptEntry(f"entry payload is not JSON: {exc}") from exc
    return _decode_live_other(data, now, max_age, protection)


def _decode_live_other(data: bytes, now: float, max_age: float | None,
                       protection: ValueProtection) -> Any:
    """:func:`decode_live` for everything but a plain JSON entry."""
    if len(data) >= HEADER_SIZE:
        magic, version, flags, created_at, expires_at = _unpack_header(data)
        if magic == MAGIC:
            if version != FORMAT_VERSION or flags & ~_KNOWN_FLAGS:
                if flags & _IS_COUNTER:  # off the hot path: counters are rare reads
                    return _live_value(decode(data, protection), now, max_age)
                raise CorruptEntry(f"unknown entry format version {version} / flags {flags}")
            if not (_isfinite(created_at) and _isfinite(expires_at)):
                raise CorruptEntry("entry timestamps are malformed")
            if flags & _HAS_EXPIRY and now >= expires_at:
                return EXPIRED
            if max_age is not None and now - created_at > max_age:
                return TOO_OLD
            body = data[HEADER_SIZE:]
            if flags & _PROTECTION_FLAGS or protection.encrypts:
                body = _open_payload(body, version, flags, created_at, expires_at, protection)
            if flags & _IS_BYTES:
                return bytes(body)
            try:
                return _loads(body)
            except orjson.JSONDecodeError as exc:
                raise CorruptEntry(f"entry payload is not JSON: {exc}") from exc
    elif data[:3] == MAGIC:
        raise CorruptEntry("entry header is truncated")
    # A bare counter (no timestamps), or not an entry at all.
    return decode(data, protection).value


def _live_value(entry: Entry, now: float, max_age: float | None) -> Any:
    if entry.is_expired(now):
        return EXPIRED
    if max_age is not None and entry.created_at is not None and now - entry.created_at > max_age:
        return TOO_OLD
    return entry.value


def peek_expires_at(data: bytes) -> float | None:
    """The expiry of stored bytes, or ``None`` (no expiry, counter or unreadable).

    Reads the header only; the value is not parsed.
    """
    if len(data) < HEADER_SIZE or data[:3] != MAGIC:
        return None
    _, _, flags, _, expires_at = _HEADER.unpack_from(data)
    return expires_at if flags & _HAS_EXPIRY else None


# -- counters ---------------------------------------------------------------------------

#: Integers orjson can write: a whole float outside this range stays a float.
_INT_RANGE = (-(2**63), 2**63)


def is_counter_value(value: object) -> bool:
    """Whether ``value`` can be a counter: an int or a float, never a bool (``True == 1``)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def counter_number(value: int | float) -> int | float:
    """A counter's value as every backend returns it: an ``int`` when whole, else a float.

    Redis answers ``INCRBYFLOAT`` with text such as ``b"3"``; the memory backend adds
    Python ints. Both come back as ``3``.
    """
    if isinstance(value, float) and value.is_integer() and _INT_RANGE[0] <= value < _INT_RANGE[1]:
        return int(value)
    return value


def read_counter(data: bytes | None, now: float) -> tuple[int | float, float | NotGiven | None]:
    """``(value, expires_at)`` of a stored counter; ``(0, NOT_GIVEN)`` when there is none.

    A missing, expired, unreadable or non-numeric entry starts a new counter (at 0, with
    the caller's TTL: ``NOT_GIVEN``). A bare number has no expiry of its own either.
    """
    if data is None:
        return 0, NOT_GIVEN
    try:
        entry = decode(data)
    except CorruptEntry:
        return 0, NOT_GIVEN
    if entry.is_expired(now) or not is_counter_value(entry.value):
        return 0, NOT_GIVEN
    if entry.created_at is None:
        return entry.value, NOT_GIVEN
    return entry.value, entry.expires_at


def encode_counter(value: int | float, now: float, expires_at: float | None) -> bytes:
    """A counter as an entry, keeping its absolute expiry (``None``: never).

    Never compressed or encrypted (it is a number, as a Redis counter is), so the
    backend's default increment needs no keys.
    """
    if not is_counter_value(value):
        raise SerializationError(f"a counter must be an int or a float, got {value!r:.80}")
    flags = _IS_COUNTER | (0 if expires_at is None else _HAS_EXPIRY)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, flags, now,
                          0.0 if expires_at is None else expires_at)
    return header + orjson.dumps(value)


def counter_value(data: bytes | None) -> int | float:
    """The number a stored counter holds (its expiry aside): 0 when missing, unreadable or
    not a number. Backends whose increment is a read-modify-write start from this value."""
    return read_counter(data, -math.inf)[0]
