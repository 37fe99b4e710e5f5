"""What is stored: the envelope around a value, and what happens to bad input."""

from __future__ import annotations

import math
import tracemalloc

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asynccache import NOT_GIVEN, SerializationError, envelope
from asynccache.envelope import (
    FORMAT_VERSION,
    HEADER_SIZE,
    MAGIC,
    CorruptEntry,
    Entry,
    decode,
    encode,
    peek_expires_at,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


@settings(max_examples=200, deadline=None)
@given(value=json_values, created=st.floats(0, 4e9), ttl=st.none() | st.floats(0.001, 1e7))
def test_any_json_value_round_trips_with_its_timestamps(value, created, ttl):
    expires = None if ttl is None else created + ttl
    entry = decode(encode(value, created, expires, "k"))
    assert entry == Entry(value, created, expires)


@pytest.mark.parametrize("raw", [b"", b"\x00\xff\xfe binary", bytes(range(256)) * 10,
                                 bytearray(b"array"), memoryview(b"view")])
def test_bytes_round_trip_exactly(raw):
    entry = decode(encode(raw, 1.0, None))
    assert entry.value == bytes(raw) and isinstance(entry.value, bytes)


def test_encoded_entry_is_exact_size_bytes_with_a_version():
    data = encode({"a": 1}, 10.0, 20.0)
    assert isinstance(data, bytes)
    assert data[:3] == MAGIC and data[3] == FORMAT_VERSION
    assert data[HEADER_SIZE:] == orjson.dumps({"a": 1})  # the payload is plain orjson
    assert len(data) == HEADER_SIZE + len(orjson.dumps({"a": 1}))


def test_encoded_entries_hold_no_spare_buffer():
    # orjson's own output can keep a growth buffer several times its length; a stored
    # entry must cost about its length, or max_bytes bounds would be fiction.
    value = {"content": "é" * 1000, "logprobs": None}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        entries = [encode(value, 1.0, None) for _ in range(500)]
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used / len(entries) < 2 * len(entries[0])


def test_unknown_format_version_is_corrupt():
    data = bytearray(encode({"a": 1}, 10.0, 20.0))
    data[3] = FORMAT_VERSION + 1
    with pytest.raises(CorruptEntry, match="version"):
        decode(bytes(data))


def test_entry_ages_and_expiry():
    entry = decode(encode("v", 100.0, 160.0))
    assert not entry.is_expired(159.9) and entry.is_expired(160.0)
    assert entry.age(130.0) == 30.0 and entry.remaining_ttl(130.0) == 30.0
    assert entry.age(50.0) == 0.0  # a clock that went backwards never gives a negative age
    forever = decode(encode("v", 100.0, None))
    assert not forever.is_expired(1e12) and forever.remaining_ttl(1e12) is None


@pytest.mark.parametrize("value", [
    math.nan, math.inf, -math.inf, {"scores": [0.1, math.nan]}, [[{"x": math.inf}]],
])
def test_nan_and_infinity_are_rejected_naming_the_key(value):
    with pytest.raises(SerializationError, match=r"the-key.*NaN or Infinity"):
        encode(value, 1.0, None, "the-key")


def test_none_inside_values_is_not_mistaken_for_nan():
    value = {"tool_calls": None, "logprobs": [None, 0.5]}
    assert decode(encode(value, 1.0, None)).value == value


def test_deep_nesting_raises_a_serialization_error():
    assert decode(encode(nested(200), 1.0, None)).value == nested(200)
    for depth in (255, 300, 10_000):
        with pytest.raises(SerializationError, match="deep"):
            encode(nested(depth), 1.0, None, "deep")


@pytest.mark.parametrize("value", [{1: "a"}, {"ok": {(1, 2): "tuple key"}}, {None: 1}])
def test_non_string_dict_keys_raise(value):
    with pytest.raises(SerializationError, match="bad-keys"):
        encode(value, 1.0, None, "bad-keys")


@pytest.mark.parametrize("value", [object(), {"fn": len}, {1, 2}, 2**70])
def test_unserializable_values_raise_a_type_error_naming_the_key(value):
    with pytest.raises(SerializationError, match="odd") as caught:
        encode(value, 1.0, None, "odd")
    assert isinstance(caught.value, TypeError)


@pytest.mark.parametrize("data", [
    b"", b"not json", b"\xff\xfe\x00", b"[1, 2]", b'"text"', b"null", b"true",
    b'{"v": 99, "c": 1, "e": null, "d": 1}',
    b'{"c": 1, "e": null, "d": 1}',
    b'{"v": true, "c": 1, "e": null, "d": 1}',
    b'{"v": 1, "c": "yesterday", "e": null, "d": 1}',
    b'{"v": 1, "c": 1, "e": "never", "d": 1}',
    b'{"v": 1, "c": true, "e": null, "d": 1}',
    b'{"v": 1, "c": 1, "e": false, "d": 1}',
    b'{"v": 1, "c": 1, "e": null}',
    b'{"v": 1, "c": 1, "e": null, "b": "***not base64***"}',
    b'{"v": 1, "c": 1, "e": null, "b": 5}',
    b'{"v": 1, "c": 1, "e": null, "d": 1',
])
def test_corrupt_inputs_raise_corrupt_entry(data):
    with pytest.raises(CorruptEntry):
        decode(data)
    assert peek_expires_at(data) is None


@pytest.mark.parametrize(("data", "value"), [(b"3", 3), (b"-2", -2), (b"3.5", 3.5),
                                             (b"0", 0)])
def test_counters_decode_as_bare_numbers(data, value):
    entry = decode(data)
    assert entry == Entry(value, None, None)
    assert entry.age(100.0) is None and not entry.is_expired(1e12)


def test_peek_expires_at_reads_the_expiry():
    assert peek_expires_at(encode("v", 1.0, 61.0)) == 61.0
    assert peek_expires_at(encode("v", 1.0, None)) is None


def test_decode_accepts_bytearray_and_memoryview():
    data = encode({"a": "é"}, 1.0, None)
    assert decode(bytearray(data)).value == {"a": "é"}
    assert decode(memoryview(data)).value == {"a": "é"}


# -- counters -----------------------------------------------------------------------------


def test_counter_round_trips_with_its_expiry():
    data = envelope.encode_counter(3, 100.0, 160.0)
    assert envelope.read_counter(data, 120.0) == (3, 160.0)
    assert envelope.read_counter(data, 160.0) == (0, NOT_GIVEN)  # expired: a new counter


def test_counter_reads_bare_numbers_and_refuses_bools():
    assert envelope.read_counter(b"2.5", 0.0) == (2.5, NOT_GIVEN)
    assert envelope.read_counter(b"true", 0.0) == (0, NOT_GIVEN)
    assert envelope.read_counter(envelope.encode(True, 0.0, None), 0.0) == (0, NOT_GIVEN)
    assert envelope.read_counter(envelope.encode("text", 0.0, None), 0.0) == (0, NOT_GIVEN)
    with pytest.raises(SerializationError):
        envelope.encode_counter(True, 0.0, None)


def test_counter_number_is_an_int_when_whole():
    assert type(envelope.counter_number(3.0)) is int
    assert type(envelope.counter_number(2.5)) is float
    assert type(envelope.counter_number(1e300)) is float  # past what orjson writes as an int
