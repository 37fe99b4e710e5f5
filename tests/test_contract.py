"""The behaviour every backend shares, run async and again through the sync twins.

Backends join by declaring ``CONTRACT_BACKENDS`` in a plugin (see conftest.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from asynccache import CacheClosedError, ItemTooLargeError, SerializationError, cached
from asynccache.base import SYNC_TWINS, BaseCache
from asynccache.integrations import cache_info
from tests.fake_llm import FakeLLM
from tests.helpers import FakeClock, chat_completion, unique

#: Backends whose counters are bare numbers updated in place by the server.
NATIVE_COUNTERS = {"redis", "redis-cluster", "memcached"}

_ASYNC_TO_SYNC = {async_name: sync_name for sync_name, async_name in SYNC_TWINS.items()}


class SyncFacade:
    """Calls the sync twin of each async method from a worker thread (as a script would)."""

    def __init__(self, cache: BaseCache) -> None:
        self.cache = cache

    def __getattr__(self, name: str) -> Any:
        twin = getattr(self.cache, _ASYNC_TO_SYNC[name])

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(twin, *args, **kwargs)

        return call


@pytest.fixture(params=["async", "sync"])
def api_for(request):
    def wrap(cache: BaseCache) -> Any:
        return cache if request.param == "async" else SyncFacade(cache)

    return wrap


async def test_set_then_get_round_trips_a_realistic_completion(make_cache, api_for):
    api = api_for(make_cache())
    value = chat_completion()
    assert await api.async_set_cache("k1", value) is True
    assert await api.async_get_cache("k1") == value


async def test_missing_key_is_none(make_cache, api_for):
    api = api_for(make_cache())
    assert await api.async_get_cache(unique("absent")) is None


async def test_ttl_expires_and_none_never_expires(make_cache, api_for):
    clock = FakeClock()
    api = api_for(make_cache(clock=clock))
    await api.async_set_cache("short", "v", ttl=30)
    await api.async_set_cache("forever", "v", ttl=None)
    assert await api.async_get_cache("short") == "v"
    clock.advance(31)
    assert await api.async_get_cache("short") is None
    clock.advance(10 * 365 * 24 * 3600)
    assert await api.async_get_cache("forever") == "v"


async def test_default_ttl_applies_when_ttl_is_not_passed(make_cache, api_for):
    clock = FakeClock()
    api = api_for(make_cache(clock=clock, ttl=20))
    await api.async_set_cache("k", 1)
    await api.async_set_cache("kept", 1, ttl=None)
    clock.advance(21)
    assert await api.async_get_cache("k") is None
    assert await api.async_get_cache("kept") == 1


async def test_batch_get_keeps_order_with_misses_and_repeats(make_cache, api_for):
    api = api_for(make_cache())
    await api.async_set_cache("a", 1)
    await api.async_set_cache("b", {"x": [2]})
    got = await api.async_batch_get_cache(["b", "missing", "a", "b"])
    assert got == [{"x": [2]}, None, 1, {"x": [2]}]


async def test_pipeline_stores_every_item_with_its_ttl(make_cache, api_for):
    clock = FakeClock()
    api = api_for(make_cache(clock=clock))
    items = [(f"p{i}", {"n": i}) for i in range(50)] + [("short", "s", 5)]
    results = await api.async_set_cache_pipeline(items, ttl=100)
    assert results == [True] * 51
    assert await api.async_batch_get_cache([f"p{i}" for i in range(50)]) == [
        {"n": i} for i in range(50)
    ]
    clock.advance(6)
    assert await api.async_get_cache("short") is None
    assert await api.async_get_cache("p7") == {"n": 7}


async def test_pipeline_rejects_a_bad_item_before_writing_any(make_cache, api_for):
    api = api_for(make_cache())
    with pytest.raises(SerializationError, match="bad"):
        await api.async_set_cache_pipeline([("good", 1), ("bad", object())])
    assert await api.async_get_cache("good") is None


async def test_delete_and_delete_many(make_cache, api_for):
    api = api_for(make_cache())
    await api.async_set_cache_pipeline({"d1": 1, "d2": 2, "d3": 3})
    assert await api.async_delete_cache("d1") is True
    assert await api.async_delete_cache("d1") is False
    assert await api.async_delete_many(["d2", "d3", "nope"]) == 2
    assert await api.async_batch_get_cache(["d1", "d2", "d3"]) == [None, None, None]


async def test_clear_of_one_namespace_leaves_others_intact(make_cache, api_for):
    base = unique("ns")
    api = api_for(make_cache(namespace=base))
    await api.async_set_cache("k", "mine")
    await api.async_set_cache("k", "other", namespace=base + ":sub")
    await api.async_set_cache("k", "third", namespace=base + "x")
    assert await api.async_get_cache("k") == "mine"
    assert await api.async_clear() >= 1
    assert await api.async_get_cache("k") is None
    assert await api.async_get_cache("k", namespace=base + ":sub") == "other"
    assert await api.async_get_cache("k", namespace=base + "x") == "third"


async def test_get_ttl_reports_remaining_seconds(make_cache, api_for):
    api = api_for(make_cache())
    await api.async_set_cache("t", 1, ttl=100)
    await api.async_set_cache("never", 1, ttl=None)
    remaining = await api.async_get_ttl("t")
    assert remaining is not None and 0 < remaining <= 100
    assert await api.async_get_ttl("never") is None
    assert await api.async_get_ttl(unique("absent")) is None


async def test_increment_counts(make_cache, api_for):
    api = api_for(make_cache())
    assert await api.async_increment("hits") == 1
    assert await api.async_increment("hits", 2.5) == 3.5
    assert await api.async_get_cache("hits") == 3.5


async def test_increment_returns_the_same_types_on_every_backend(make_cache, api_for):
    api = api_for(make_cache())
    first = await api.async_increment("typed")
    assert first == 1 and type(first) is int
    half = await api.async_increment("typed", 0.5)
    assert half == 1.5 and type(half) is float
    whole = await api.async_increment("typed", 0.5)
    assert whole == 2 and type(whole) is int  # whole again: an int, as Redis answers "2"


async def test_increment_over_a_cached_value_or_bool_starts_a_new_counter(make_cache, api_for):
    api = api_for(make_cache())
    await api.async_set_cache("was-a-value", {"not": "a number"})
    await api.async_set_cache("was-a-bool", True)
    assert await api.async_increment("was-a-value", 2) == 2
    assert await api.async_increment("was-a-bool", 2) == 2  # True is not the number 1
    with pytest.raises(ValueError, match="amount"):
        await api.async_increment("was-a-bool", True)


async def test_counter_keeps_the_expiry_of_its_first_write(make_cache, api_for):
    clock = FakeClock()
    cache = make_cache(clock=clock)
    if cache.backend.name in NATIVE_COUNTERS:
        pytest.skip("Redis counters expire on the server's clock (INCRBYFLOAT + PEXPIRE NX)")
    api = api_for(cache)
    await api.async_increment("window", ttl=60)
    clock.advance(40)
    assert await api.async_increment("window", ttl=60) == 2  # no new 60 s window
    clock.advance(30)
    assert await api.async_get_cache("window") is None
    assert await api.async_increment("window", ttl=60) == 1


# -- every cache is a full LLM cache --------------------------------------------------------


async def test_every_cache_serves_cached_llm_calls(make_cache):
    cache = make_cache()
    llm = FakeLLM()
    completion = cached(llm.chat, cache=cache)
    question = [{"role": "user", "content": unique("question")}]
    first = await completion(model="gpt-4o", messages=question)
    second = await completion(model="gpt-4o", messages=question)
    assert llm.chat_calls == 1
    assert cache_info(second).cache_hit
    assert second.model_dump() == first.model_dump()


async def test_every_cache_stores_a_pydantic_response(make_cache):
    cache = make_cache()
    request = {"model": "gpt-4o", "messages": [{"role": "user", "content": unique("q")}]}
    response = await FakeLLM().chat(**request)
    assert await cache.async_set_cache("response", response) is True
    assert await cache.async_get_cache("response") == response.model_dump(mode="json")
    assert await cache.async_store(request, response) is True
    hit = await cache.async_lookup(request)
    assert hit is not None and hit.value == response.model_dump(mode="json")
    assert cache.get_cache_key(**request) == hit.key.rpartition(":")[2]


async def test_values_are_isolated_from_caller_mutation(make_cache, api_for):
    api = api_for(make_cache())
    value = {"choices": [{"text": "original"}]}
    await api.async_set_cache("m", value)
    value["choices"][0]["text"] = "mutated after set"
    got = await api.async_get_cache("m")
    assert got == {"choices": [{"text": "original"}]}
    got["choices"].append("mutated after get")
    assert await api.async_get_cache("m") == {"choices": [{"text": "original"}]}


async def test_corrupt_stored_bytes_are_a_counted_miss(make_cache, api_for):
    cache = make_cache()
    api = api_for(cache)
    stored_key = cache._stored_key("corrupt", cache.namespace)
    for garbage in (b"\xff\xfe not json", b'{"v": 99, "d": 1}', b"[1, 2]"):
        await cache.backend.write_many([(stored_key, garbage, None)])
        assert await api.async_get_cache("corrupt") is None
    assert cache.stats()["corrupt_entries"] == 3


async def test_unserializable_value_raises_naming_the_key(make_cache, api_for):
    api = api_for(make_cache())
    with pytest.raises(SerializationError, match="the-key"):
        await api.async_set_cache("the-key", {"obj": object()})
    with pytest.raises(SerializationError, match="NaN"):
        await api.async_set_cache("nan-key", {"x": float("nan")})
    assert await api.async_get_cache("the-key") is None


async def test_item_over_max_size_is_rejected(make_cache, api_for):
    api = api_for(make_cache(max_item_size=1000))
    with pytest.raises(ItemTooLargeError, match="big"):
        await api.async_set_cache("big", "x" * 2000)
    assert await api.async_set_cache("small", "x" * 10) is True


async def test_max_age_rejects_older_entries(make_cache, api_for):
    clock = FakeClock()
    api = api_for(make_cache(clock=clock))
    await api.async_set_cache("aged", "v", ttl=None)
    clock.advance(30)
    assert await api.async_get_cache("aged", max_age=60) == "v"
    assert await api.async_get_cache("aged", max_age=10) is None



async def test_get_entry_says_where_and_when_the_value_came_from(make_cache, api_for):
    clock = FakeClock()
    cache = make_cache(clock=clock, namespace="entries")
    api = api_for(cache)
    value = chat_completion()
    await api.async_set_cache("e1", value, ttl=100)
    clock.advance(30)
    hit = await api.async_get_entry("e1")
    assert hit.value == value and hit.key == "entries:e1" and hit.backend == cache.backend.name
    assert hit.age == pytest.approx(30) and hit.expires_at - hit.created_at == pytest.approx(100)
    with pytest.raises(AttributeError):
        hit.value = "changed"  # a hit is immutable
    assert await api.async_get_entry("e1", max_age=10) is None
    assert await api.async_get_entry(unique("absent")) is None
    clock.advance(71)
    assert await api.async_get_entry("e1") is None

async def test_bytes_and_unicode_values_round_trip(make_cache, api_for):
    api = api_for(make_cache())
    await api.async_set_cache("raw", b"\x00\xffbinary audio")
    await api.async_set_cache("text", "naïve — 日本語 🎉")
    assert await api.async_get_cache("raw") == b"\x00\xffbinary audio"
    assert await api.async_get_cache("text") == "naïve — 日本語 🎉"


@pytest.mark.parametrize("key", [
    "../../etc/passwd", "a/b/c", "line\nbreak", "nul\x00byte", "ключ-🔑", "k" * 10_000, ".", "..",
])
async def test_hostile_keys_round_trip_and_stay_distinct(make_cache, key):
    cache = make_cache()
    await cache.async_set_cache(key, {"key": key})
    await cache.async_set_cache(key + "-other", "other")
    assert await cache.async_get_cache(key) == {"key": key}
    assert await cache.async_get_cache(key + "-other") == "other"


async def test_ping_and_test_connection(make_cache, api_for):
    api = api_for(make_cache())
    assert await api.async_ping() is True
    report = await api.async_test_connection()
    assert report["status"] == "healthy"


async def test_closed_cache_says_so(make_cache):
    cache = make_cache()
    await cache.aclose()
    await cache.aclose()  # idempotent
    with pytest.raises(CacheClosedError):
        await cache.async_get_cache("k")


async def test_async_with_closes(make_cache):
    async with make_cache() as cache:
        await cache.async_set_cache("k", 1)
    assert cache.closed


async def test_concurrent_gets_each_get_their_own_value(make_cache):
    cache = make_cache()
    await cache.async_set_cache_pipeline({f"c{i}": i for i in range(100)})
    keys = [f"c{i % 120}" for i in range(300)]
    got = await asyncio.gather(*(cache.async_get_cache(k) for k in keys))
    assert got == [i % 120 if i % 120 < 100 else None for i in range(300)]


async def test_keys_without_a_namespace_never_meet_namespaced_ones(make_cache):
    cache = make_cache(namespace=None)
    ns = unique("ns")
    await cache.async_set_cache(f"{ns}:k", "no namespace")
    await cache.async_set_cache("k", "namespaced", namespace=ns)
    assert await cache.async_get_cache(f"{ns}:k") == "no namespace"
    assert await cache.async_get_cache("k", namespace=ns) == "namespaced"
    await cache.async_clear(namespace=ns)
    assert await cache.async_get_cache(f"{ns}:k") == "no namespace"
    await cache.async_delete_cache(f"{ns}:k")
