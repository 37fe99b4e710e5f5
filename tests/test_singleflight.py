"""Single-flight: N concurrent identical misses, one upstream call."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from asynccache import Cache, ConfigurationError, cached
from asynccache.integrations import LeaseOptions, SingleFlight, cache_info
from asynccache.integrations.singleflight import CacheLease
from tests.fake_llm import FakeLLM, UpstreamError, messages
from tests.helpers import settle, unique


@pytest.fixture
async def cache():
    made = Cache()
    yield made
    await made.aclose()


async def hold(llm: FakeLLM) -> asyncio.Event:
    gate = asyncio.Event()
    llm.gate = gate
    return gate


async def test_100_concurrent_identical_calls_make_one_upstream_call(cache):
    llm = FakeLLM()
    gate = await hold(llm)
    acompletion = cached(llm.chat, cache=cache)
    tasks = [asyncio.create_task(acompletion(model="gpt-4o", messages=messages()))
             for _ in range(100)]
    await llm.started.wait()
    await settle()
    gate.set()
    results = await asyncio.gather(*tasks)
    assert llm.chat_calls == 1
    assert len({r.choices[0].message.content for r in results}) == 1
    assert len({id(r) for r in results}) == 100  # every caller owns its object
    infos = [cache_info(r) for r in results]
    assert sum(info.coalesced for info in infos) == 99
    assert all(not info.cache_hit for info in infos)
    assert cache.stats()["sets"] == 1


async def test_error_reaches_every_waiter_and_is_not_cached(cache):
    llm = FakeLLM()
    gate = await hold(llm)
    llm.fail = True
    acompletion = cached(llm.chat, cache=cache)
    tasks = [asyncio.create_task(acompletion(model="gpt-4o", messages=messages()))
             for _ in range(10)]
    await llm.started.wait()
    await settle()
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, UpstreamError) for r in results)
    assert llm.chat_calls == 1
    llm.fail = False
    await acompletion(model="gpt-4o", messages=messages())
    assert llm.chat_calls == 2


async def test_different_requests_are_not_coalesced(cache):
    llm = FakeLLM()
    gate = await hold(llm)
    acompletion = cached(llm.chat, cache=cache)
    tasks = [asyncio.create_task(acompletion(model="gpt-4o", messages=messages(f"q{i}")))
             for i in range(5)]
    await llm.started.wait()
    await settle()
    gate.set()
    await asyncio.gather(*tasks)
    assert llm.chat_calls == 5


async def test_disabled_single_flight_calls_upstream_each_time(cache):
    llm = FakeLLM()
    gate = await hold(llm)
    acompletion = cached(llm.chat, cache=cache, single_flight=False)
    tasks = [asyncio.create_task(acompletion(model="gpt-4o", messages=messages()))
             for _ in range(10)]
    await llm.started.wait()
    await settle()
    gate.set()
    await asyncio.gather(*tasks)
    assert llm.chat_calls == 10


async def test_no_cache_calls_do_not_join_a_flight(cache):
    llm = FakeLLM()
    gate = await hold(llm)
    acompletion = cached(llm.chat, cache=cache)
    first = asyncio.create_task(acompletion(model="gpt-4o", messages=messages()))
    await llm.started.wait()
    fresh = asyncio.create_task(
        acompletion(model="gpt-4o", messages=messages(), cache={"no-cache": True}))
    await settle()
    gate.set()
    await asyncio.gather(first, fresh)
    assert llm.chat_calls == 2


async def test_cancelled_leader_hands_over_to_a_waiter(cache):
    llm = FakeLLM()
    gate = await hold(llm)
    acompletion = cached(llm.chat, cache=cache)
    leader = asyncio.create_task(acompletion(model="gpt-4o", messages=messages()))
    await llm.started.wait()
    waiter = asyncio.create_task(acompletion(model="gpt-4o", messages=messages()))
    await settle()
    leader.cancel()
    await settle()
    gate.set()
    result = await waiter
    assert leader.cancelled()
    assert result.choices[0].message.content
    assert llm.chat_calls == 2  # the waiter became the new leader


async def test_cancelled_waiter_does_not_disturb_the_flight():
    flights: SingleFlight[int] = SingleFlight()
    release = asyncio.Event()

    async def work() -> int:
        await release.wait()
        return 7

    leader = asyncio.create_task(flights.run("k", work))
    await settle()
    waiter = asyncio.create_task(flights.run("k", work))
    await settle()
    assert flights.in_flight("k")
    waiter.cancel()
    await settle()
    release.set()
    assert await leader == (7, True)
    assert waiter.cancelled()
    assert len(flights) == 0


# -- distributed lease on Redis -----------------------------------------------------------

HAS_REDIS_BACKEND = importlib.util.find_spec("asynccache.backends.redis") is not None
needs_redis = pytest.mark.skipif(not HAS_REDIS_BACKEND,
                                 reason="asynccache.backends.redis is not written yet")


@pytest.fixture
def lease_refused(monkeypatch):
    """An event set when some caller finds the lease taken (so it is now polling)."""
    refused = asyncio.Event()
    real = CacheLease.acquire

    async def acquire(self):
        token = await real(self)
        if token is None:
            refused.set()
        return token

    monkeypatch.setattr(CacheLease, "acquire", acquire)
    return refused


@pytest.fixture
async def two_processes(request):
    """Two caches on one Redis namespace: each has its own in-process flight table."""
    server = request.getfixturevalue("valkey_server")
    namespace = unique("lease")
    caches = [Cache(type="redis", host="127.0.0.1", port=server.port, namespace=namespace)
              for _ in range(2)]
    yield caches
    for cache in caches:
        await cache.aclose()


@needs_redis
async def test_lease_makes_other_processes_wait_for_the_answer(two_processes, lease_refused):
    cache_a, cache_b = two_processes
    llm = FakeLLM()
    gate = await hold(llm)
    in_a = cached(llm.chat, cache=cache_a, lease=LeaseOptions(poll_initial=0.01))
    in_b = cached(llm.chat, cache=cache_b, lease=LeaseOptions(poll_initial=0.01))
    first = asyncio.create_task(in_a(model="gpt-4o", messages=messages()))
    await llm.started.wait()  # A holds the lease and is calling upstream
    second = asyncio.create_task(in_b(model="gpt-4o", messages=messages()))
    await lease_refused.wait()  # B found the lease taken and polls
    gate.set()
    a, b = await asyncio.gather(first, second)
    assert llm.chat_calls == 1
    assert b.choices[0].message.content == a.choices[0].message.content
    assert cache_info(b).cache_hit and cache_info(b).coalesced


@needs_redis
async def test_lease_is_released_when_the_holder_fails(two_processes, lease_refused):
    cache_a, cache_b = two_processes
    release = asyncio.Event()
    entered = asyncio.Event()

    async def failing(**kwargs):
        entered.set()
        await release.wait()
        raise UpstreamError("holder failed")

    llm = FakeLLM()
    in_a = cached(failing, cache=cache_a, lease=True)
    in_b = cached(llm.chat, cache=cache_b, lease=LeaseOptions(poll_initial=0.01))
    first = asyncio.create_task(in_a(model="gpt-4o", messages=messages()))
    await entered.wait()
    second = asyncio.create_task(in_b(model="gpt-4o", messages=messages()))
    await lease_refused.wait()
    release.set()
    with pytest.raises(UpstreamError):
        await first
    result = await second  # B took the freed lease and called upstream itself
    assert llm.chat_calls == 1 and result.choices[0].message.content


def test_lease_needs_a_redis_backend():
    with pytest.raises(ConfigurationError, match="Redis"):
        cached(FakeLLM().chat, cache=Cache(), lease=True)
    with pytest.raises(ConfigurationError, match="poll_max"):
        LeaseOptions(poll_max=0)
