"""Encryption at rest and compression, over every backend of the contract suite.

Round trip, wrong key, missing key, key rotation, altered ciphertext and mixed
compressed/plain entries: each is a miss counted as a corrupt entry, never an exception
and never plaintext.
"""

from __future__ import annotations

import logging

import pytest

from asynccache import MemoryCache
from asynccache.exceptions import ConfigurationError
from asynccache.protection import ValueProtection, generate_key
from tests.helpers import chat_completion

KEY_A, KEY_B = generate_key(), generate_key()


async def stored_bytes(cache, key: str) -> bytes:
    stored = cache._stored_key(key, cache.namespace)
    data = (await cache.backend.read_many([stored]))[0]
    assert data is not None
    return bytes(data)


async def replace_stored(cache, key: str, data: bytes) -> None:
    stored = cache._stored_key(key, cache.namespace)
    await cache.backend.write_many([(stored, data, None)])


def reopen_with(cache, **settings) -> None:
    """The same store read by a process configured with other protection settings."""
    cache._protection = ValueProtection(**settings)


async def test_encrypted_round_trip_and_nothing_readable_at_rest(make_cache):
    cache = make_cache(encryption_keys=[KEY_A])
    value = chat_completion("a confidential answer about the patient")
    assert await cache.async_set_cache("secret", value) is True
    assert await cache.async_get_cache("secret") == value
    assert await cache.async_batch_get_cache(["secret", "absent"]) == [value, None]
    raw = await stored_bytes(cache, "secret")
    assert b"patient" not in raw and b"confidential" not in raw


async def test_a_wrong_or_missing_key_is_a_counted_miss_never_plaintext(make_cache):
    cache = make_cache(encryption_keys=[KEY_A])
    await cache.async_set_cache("k", {"answer": "classified"})
    reopen_with(cache, encryption_keys=[KEY_B])
    assert await cache.async_get_cache("k") is None
    reopen_with(cache)  # no key at all
    assert await cache.async_get_cache("k") is None
    assert cache.stats()["corrupt_entries"] == 2


async def test_rotation_first_key_encrypts_every_key_decrypts(make_cache):
    cache = make_cache(encryption_keys=[KEY_A])
    await cache.async_set_cache("old", "written under A")
    reopen_with(cache, encryption_keys=[KEY_B, KEY_A])
    await cache.async_set_cache("new", "written under B")
    assert await cache.async_get_cache("old") == "written under A"
    assert await cache.async_get_cache("new") == "written under B"
    reopen_with(cache, encryption_keys=[KEY_B])  # A retired
    assert await cache.async_get_cache("new") == "written under B"
    assert await cache.async_get_cache("old") is None


@pytest.mark.parametrize("where", ["ciphertext", "header"])
async def test_altered_entries_fail_authentication(make_cache, where):
    cache = make_cache(encryption_keys=[KEY_A])
    await cache.async_set_cache("k", "genuine", ttl=60)
    raw = bytearray(await stored_bytes(cache, "k"))
    # The last byte is in the tag; byte 13 is inside expires-at (an attacker extending
    # the entry's life).
    raw[-1 if where == "ciphertext" else 13] ^= 0x01
    await replace_stored(cache, "k", bytes(raw))
    assert await cache.async_get_cache("k") is None
    assert cache.stats()["corrupt_entries"] == 1


async def test_an_encrypting_cache_refuses_plaintext_entries(make_cache):
    cache = make_cache()
    await cache.async_set_cache("k", "planted in clear text")
    reopen_with(cache, encryption_keys=[KEY_A])
    assert await cache.async_get_cache("k") is None


async def test_compressed_and_plain_entries_mix(make_cache):
    cache = make_cache(compression="zlib", compression_min_size=100)
    big, small = chat_completion(size=4000), {"short": True}
    await cache.async_set_cache("big", big)
    await cache.async_set_cache("small", small)
    assert len(await stored_bytes(cache, "big")) < 2000
    reopen_with(cache)  # a reader with compression off still reads both
    assert await cache.async_batch_get_cache(["big", "small"]) == [big, small]
    reopen_with(cache, compression="auto", encryption_keys=[KEY_A])
    await cache.async_set_cache("sealed", big)
    assert await cache.async_get_cache("sealed") == big
    assert await cache.async_get_cache("big") is None  # plaintext refused once encrypting


async def test_bytes_values_and_ttl_survive_protection(make_cache):
    cache = make_cache(encryption_keys=[KEY_A], compression="auto", compression_min_size=0)
    audio = bytes(range(256)) * 40
    await cache.async_set_cache("audio", audio, ttl=300)
    assert await cache.async_get_cache("audio") == audio
    assert 0 < await cache.async_get_ttl("audio") <= 300


# -- settings ----------------------------------------------------------------------------

def test_keys_never_appear_in_repr_stats_settings_or_errors(caplog):
    caplog.set_level(logging.DEBUG)
    cache = MemoryCache(encryption_keys=[KEY_A, KEY_B])
    cache.set_cache("k", "v")
    shown = repr(cache) + repr(cache.stats()) + repr(cache._protection) + caplog.text
    assert KEY_A not in shown and KEY_B not in shown
    assert "2 key(s)" in repr(cache)


@pytest.mark.parametrize("bad, message", [
    ("c2hvcnQ=", "16, 24 or 32 bytes"),
    (12345, "bytes or a base64 str"),
    (b"x" * 31, "16, 24 or 32 bytes"),
])
def test_bad_keys_are_named_without_echoing_them(bad, message):
    with pytest.raises(ConfigurationError, match=message) as raised:
        MemoryCache(encryption_keys=["A" * 43 + "=", bad])
    assert "encryption_keys[1]" in str(raised.value)
    assert str(bad) not in str(raised.value)


def test_unknown_compression_is_named():
    with pytest.raises(ConfigurationError, match="compression must be"):
        MemoryCache(compression="brotli")


async def test_counters_count_on_an_encrypting_cache():
    cache = MemoryCache(encryption_keys=[KEY_A])
    assert await cache.async_increment("n") == 1
    assert await cache.async_increment("n", 2) == 3
    assert await cache.async_get_cache("n") == 3
