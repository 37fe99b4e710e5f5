"""Real faults on a three-node memcached group: a node killed, frozen or restarted.

Every test starts its own three memcached processes (the session's nodes are never
touched) and stops them by process. Waits are on observable conditions with a generous
upper bound (``WAIT_LIMIT``), never on the clock.
"""

from __future__ import annotations

import asyncio

import pytest

from asynccache import Cache
from benchmarks.fault_report import WAIT_LIMIT
from tests.helpers import unique
from tests.plugins.services import service_unavailable
from tests.servers.memcached import item_expiries, start_memcached_nodes
from tests.servers.processes import ServiceUnavailable

KEYS = [f"k{i}" for i in range(150)]


@pytest.fixture
def private_nodes():
    try:
        nodes = start_memcached_nodes(3)
    except ServiceUnavailable as exc:
        service_unavailable("memcached", exc)
    yield nodes
    nodes.stop()  # resumes a paused node first; a no-op on a killed one


async def poll(condition, what: str) -> None:
    """Await ``condition()`` until it is true (bounded by WAIT_LIMIT)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {WAIT_LIMIT} s waiting for {what}")
        await asyncio.sleep(0.02)


def keys_on(node, namespace: str) -> set[str]:
    """The keys of ``namespace`` that this node holds, read from the server itself."""
    names = item_expiries(node.port)
    return {key for key in KEYS if any(n.endswith(f"={namespace}:{key}") for n in names)}


async def test_a_killed_node_is_misses_the_others_serve_and_it_comes_back(private_nodes):
    namespace = unique("kill")
    cache = Cache(type="memcached", servers=private_nodes.servers, namespace=namespace)
    try:
        assert await cache.async_set_cache_pipeline({k: k for k in KEYS}) == [True] * len(KEYS)
        victim = private_nodes.nodes[1]
        lost = keys_on(victim, namespace)
        kept = [k for k in KEYS if k not in lost]
        assert lost and kept

        stop = asyncio.Event()
        errors: list[BaseException] = []
        calls = 0

        async def worker(index: int) -> None:
            nonlocal calls
            while not stop.is_set():
                key = KEYS[(index * 7 + calls) % len(KEYS)]
                try:
                    await cache.async_get_cache(key)
                    await cache.async_set_cache(key, key)
                    await cache.async_batch_get_cache(KEYS[index:index + 10])
                except BaseException as exc:  # any exception reaching a caller fails the test
                    errors.append(exc)
                calls += 1

        workers = [asyncio.create_task(worker(i)) for i in range(64)]
        await asyncio.sleep(0)
        calls_before = calls
        await asyncio.to_thread(victim.kill)
        await poll(lambda: _after(calls, calls_before + 500), "calls after the kill")
        stop.set()
        await asyncio.gather(*workers)
        assert errors == []

        got = await cache.async_batch_get_cache(KEYS)
        assert [got[KEYS.index(k)] for k in lost] == [None] * len(lost)
        assert [got[KEYS.index(k)] for k in kept] == kept
        assert all(await asyncio.gather(*(cache.async_set_cache(k, "new") for k in kept)))
        assert cache.stats()["circuit"] == "closed"  # the live nodes kept the cache usable
        assert await cache.async_get_cache(sorted(lost)[0]) is None
        assert cache.backend.describe()["nodes_down"] == [f"127.0.0.1:{victim.port}"]

        await asyncio.to_thread(victim.start)
        probe = sorted(lost)[0]
        await poll(lambda: cache.async_set_cache(probe, "back"), "the restarted node")
        assert await cache.async_get_cache(probe) == "back"
        assert await cache.async_set_cache_pipeline({k: k for k in lost}) == [True] * len(lost)
        assert await cache.async_batch_get_cache(KEYS) == [
            k if k in lost else "new" for k in KEYS]
        assert cache.backend.describe()["nodes_down"] == []
    finally:
        await cache.aclose()


async def _after(value: int, target: int) -> bool:
    return value >= target


async def test_a_frozen_node_times_out_alone_and_serves_when_resumed(private_nodes):
    namespace = unique("freeze")
    cache = Cache(type="memcached", servers=private_nodes.servers, namespace=namespace,
                  socket_timeout=0.2)
    try:
        await cache.async_set_cache_pipeline({k: k for k in KEYS})
        frozen = private_nodes.nodes[2]
        lost = keys_on(frozen, namespace)
        frozen.pause()
        try:
            got = await asyncio.wait_for(cache.async_batch_get_cache(KEYS), WAIT_LIMIT)
            assert [k for k, v in zip(KEYS, got, strict=True) if v is None] == sorted(
                lost, key=KEYS.index)
            # While it is skipped, its keys are answered at once (no 0.2 s wait each).
            assert await cache.async_get_cache(sorted(lost)[0]) is None
            assert cache.stats()["circuit"] == "closed"
        finally:
            frozen.resume()
        await poll(lambda: _equals(cache.async_get_cache(sorted(lost)[0]), sorted(lost)[0]),
                   "the resumed node")
        assert await cache.async_batch_get_cache(KEYS) == KEYS
    finally:
        await cache.aclose()


async def _equals(call, expected) -> bool:
    return await call == expected


async def test_every_node_down_is_misses_and_opens_the_circuit(private_nodes):
    cache = Cache(type="memcached", servers=private_nodes.servers, namespace=unique("all"),
                  breaker_threshold=3, breaker_cooldown=3600)
    try:
        await cache.async_set_cache_pipeline({k: k for k in KEYS})
        for node in private_nodes.nodes:
            await asyncio.to_thread(node.kill)
        for key in KEYS[:10]:
            assert await cache.async_get_cache(key) is None
            assert await cache.async_set_cache(key, 1) is False
        assert await cache.async_batch_get_cache(KEYS) == [None] * len(KEYS)
        assert await cache.async_clear() == 0
        stats = cache.stats()
        assert stats["errors"] + stats["timeouts"] >= 3, stats
        assert stats["circuit"] == "open"
        assert stats["skipped_open_circuit"] > 0
        assert await cache.async_ping() is False
    finally:
        await cache.aclose()
