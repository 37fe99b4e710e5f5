"""The write-behind FlushQueue: batching, read-your-writes, no loss, backpressure, drain.

A gated backend lets each test decide when a flush is in flight and when it lands, so no
test depends on timing: what must wait is checked by letting the loop run (``settle``)
and observing that it still waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from asynccache import ConfigurationError, MemoryCache
from asynccache.backends.memory import MemoryBackend
from asynccache.base import BaseCache, WriteItem
from asynccache.flush import FlushQueue
from asynccache.stats import CacheStats
from tests.helpers import settle

LONG = 3600.0  # a flush interval no test waits for


class GatedBackend(MemoryBackend):
    """Memory backend whose writes wait for the test to open the gate.

    ``gate_calls`` limits the gate to the first N set_many calls (None: every call).
    Every batch is recorded in ``batches``; ``arrived`` yields each batch as it starts.
    """

    name = "gated"

    def __init__(self, gate_calls: int | None = None) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.gate_calls = gate_calls
        self.batches: list[list[str]] = []
        self.arrived: asyncio.Queue[list[str]] = asyncio.Queue()

    def close_gate(self) -> None:
        self.gate.clear()

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        keys = [key for key, _, _ in items]
        self.batches.append(keys)
        self.arrived.put_nowait(keys)
        if self.gate_calls is None or len(self.batches) <= self.gate_calls:
            await self.gate.wait()
        return await super().write_many(items)

    def stored(self, key: str) -> bool:
        return key in self._data

    async def next_batch(self) -> list[str]:
        return await asyncio.wait_for(self.arrived.get(), 30)


def behind(backend: MemoryBackend, **settings) -> BaseCache:
    settings.setdefault("flush_interval", LONG)
    return BaseCache(backend, write_behind=True, **settings)


@pytest.fixture
async def track():
    caches: list[BaseCache] = []

    def add(cache: BaseCache) -> BaseCache:
        caches.append(cache)
        return cache

    yield add
    for cache in caches:
        if isinstance(cache.backend, GatedBackend):
            cache.backend.gate.set()
        await cache.aclose()


# -- read-your-writes ---------------------------------------------------------------------


async def test_queued_entries_are_read_back_before_they_are_flushed(track):
    backend = GatedBackend()
    cache = track(behind(backend, flush_size=100))
    assert await cache.async_set_cache("k", {"v": 1}) is True
    assert await cache.async_set_cache_pipeline({"a": 1, "b": 2}) == [True, True]
    await settle()
    assert backend.batches == [] and cache.queued_writes == 3
    assert await cache.async_get_cache("k") == {"v": 1}
    assert await cache.async_batch_get_cache(["a", "missing", "b"]) == [1, None, 2]
    assert cache.stats()["queued"] == 3


async def test_in_flight_entries_are_read_back_until_they_land(track):
    backend = GatedBackend()
    backend.close_gate()
    cache = track(behind(backend, flush_size=2))
    await cache.async_set_cache_pipeline({"a": 1, "b": 2})
    assert await backend.next_batch() == ["a", "b"]
    assert not backend.stored("a")
    assert await cache.async_batch_get_cache(["a", "b"]) == [1, 2]
    backend.gate.set()
    await cache.async_flush()
    assert backend.stored("a") and backend.stored("b") and cache.queued_writes == 0
    assert await cache.async_batch_get_cache(["a", "b"]) == [1, 2]


# -- no entry lost ------------------------------------------------------------------------


async def test_a_hundred_concurrent_writers_lose_nothing(track):
    backend = GatedBackend()
    cache = track(behind(backend, flush_size=10, max_queue_size=20))
    results = await asyncio.gather(
        *(cache.async_set_cache(f"w{i}", {"writer": i}) for i in range(100))
    )
    assert results == [True] * 100
    await cache.async_flush()
    assert sorted(k for batch in backend.batches for k in batch) == sorted(
        f"w{i}" for i in range(100))
    assert all(len(batch) <= 10 for batch in backend.batches)
    for i in range(100):
        assert backend.stored(f"w{i}")
    assert await cache.async_batch_get_cache([f"w{i}" for i in range(100)]) == [
        {"writer": i} for i in range(100)]
    stats = cache.stats()
    assert stats["flushed"] == 100 and stats["dropped"] == 0 and stats["given_up"] == 0


async def test_entries_written_during_a_flush_are_not_lost(track):
    backend = GatedBackend()
    backend.close_gate()
    cache = track(behind(backend, flush_size=2))
    await cache.async_set_cache_pipeline({"a": 1, "b": 1})
    assert await backend.next_batch() == ["a", "b"]
    # While [a, b] is in flight: new keys and a newer value of b.
    await cache.async_set_cache_pipeline({"c": 3, "d": 4, "b": 2})
    assert await cache.async_batch_get_cache(["a", "b", "c", "d"]) == [1, 2, 3, 4]
    backend.gate.set()
    await cache.async_flush()
    assert sorted(backend.batches[0]) == ["a", "b"]
    assert sorted(k for batch in backend.batches[1:] for k in batch) == ["b", "c", "d"]
    assert cache.queued_writes == 0
    reader = BaseCache(backend)  # straight to the store
    assert await reader.async_batch_get_cache(["a", "b", "c", "d"]) == [1, 2, 3, 4]


async def test_an_older_in_flight_write_never_overwrites_a_newer_one(track):
    # Only the first flush is held: a drain running next to the worker must not send
    # the newer value of "k" before the older one has landed.
    backend = GatedBackend(gate_calls=1)
    backend.close_gate()
    cache = track(behind(backend, flush_size=1))
    await cache.async_set_cache("k", "old")
    assert await backend.next_batch() == ["k"]
    await cache.async_set_cache("k", "new")
    flushing = asyncio.ensure_future(cache.async_flush())
    await settle()
    assert not flushing.done()
    backend.gate.set()
    await asyncio.wait_for(flushing, 30)
    assert await BaseCache(backend).async_get_cache("k") == "new"
    assert await cache.async_get_cache("k") == "new"


# -- when a batch is sent -----------------------------------------------------------------


async def test_a_full_batch_is_sent_at_once_and_the_rest_waits_for_the_interval(track):
    backend = GatedBackend()
    cache = track(behind(backend, flush_size=5))
    await cache.async_set_cache_pipeline({f"k{i}": i for i in range(7)})
    assert await backend.next_batch() == [f"k{i}" for i in range(5)]
    await settle()
    assert len(backend.batches) == 1 and cache.queued_writes == 2  # k5, k6 wait
    await cache.async_set_cache_pipeline({f"k{i}": i for i in range(7, 10)})
    assert await backend.next_batch() == [f"k{i}" for i in range(5, 10)]
    await settle()
    assert [len(b) for b in backend.batches] == [5, 5] and cache.queued_writes == 0


async def test_a_partial_batch_is_sent_when_the_interval_passes(track):
    backend = GatedBackend()
    cache = track(behind(backend, flush_size=100, flush_interval=0.01))
    await cache.async_set_cache_pipeline({"x": 1, "y": 2, "z": 3})
    assert await backend.next_batch() == ["x", "y", "z"]
    await cache.async_set_cache("later", 4)
    assert await backend.next_batch() == ["later"]
    assert [len(b) for b in backend.batches] == [3, 1]


async def test_single_writes_accumulate_into_one_batch(track):
    backend = GatedBackend()
    cache = track(behind(backend, flush_size=4))
    for i in range(4):
        await cache.async_set_cache(f"s{i}", i)
    assert await backend.next_batch() == ["s0", "s1", "s2", "s3"]
    await settle()
    assert len(backend.batches) == 1


# -- bounded memory -----------------------------------------------------------------------


async def test_a_full_queue_makes_the_writer_wait_for_space(track):
    backend = GatedBackend()
    backend.close_gate()
    cache = track(behind(backend, flush_size=2, max_queue_size=2))
    await cache.async_set_cache_pipeline({"a": 1, "b": 2})
    assert await backend.next_batch() == ["a", "b"]
    writer = asyncio.ensure_future(cache.async_set_cache("c", 3))
    await settle()
    assert not writer.done()  # backpressure: waits, neither dropped nor over the bound
    assert cache.queued_writes == 2
    backend.gate.set()
    assert await asyncio.wait_for(writer, 30) is True
    await cache.async_flush()
    assert all(backend.stored(k) for k in "abc")
    assert cache.stats()["dropped"] == 0


async def test_overflow_drop_counts_every_dropped_entry(track, caplog):
    backend = GatedBackend()
    backend.close_gate()
    cache = track(behind(backend, flush_size=2, max_queue_size=2, queue_overflow="drop"))
    await cache.async_set_cache_pipeline({"a": 1, "b": 2})
    assert await backend.next_batch() == ["a", "b"]
    with caplog.at_level(logging.WARNING, logger="asynccache.flush"):
        assert await cache.async_set_cache_pipeline({"c": 3, "d": 4}) == [False, False]
        assert await cache.async_set_cache("e", 5) is False
    stats = cache.stats()
    assert stats["dropped"] == 3 and stats["set_failures"] == 3
    assert all(f"'{k}'" in caplog.text for k in "cde")
    backend.gate.set()
    await cache.async_flush()
    assert backend.stored("a") and not any(backend.stored(k) for k in "cde")


# -- failures -----------------------------------------------------------------------------


class FlakyBackend(MemoryBackend):
    """Refuses every write of the keys in ``refuse``; the others land."""

    name = "flaky"

    def __init__(self, refuse: set[str] | None = None, raise_all: bool = False) -> None:
        super().__init__()
        self.refuse = refuse or set()
        self.raise_all = raise_all
        self.batches: list[list[str]] = []
        self.attempted = asyncio.Event()

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        self.batches.append([key for key, _, _ in items])
        if len(self.batches) >= 2:
            self.attempted.set()
        if self.raise_all:
            raise ConnectionError("store unreachable")
        await super().write_many([item for item in items if item[0] not in self.refuse])
        return [item[0] not in self.refuse for item in items]


async def test_a_failing_backend_is_retried_then_entries_are_given_up_and_logged(track,
                                                                                 caplog):
    backend = FlakyBackend(raise_all=True)
    cache = track(behind(backend, flush_size=10, flush_retries=2, breaker_threshold=0,
                         namespace="app"))
    cache._queue.retry_backoff = 0  # the retry schedule itself is not under test
    with caplog.at_level(logging.ERROR, logger="asynccache.flush"):
        await cache.async_set_cache_pipeline({"k1": 1, "k2": 2})
        await cache.async_flush()
    assert backend.batches == [["app:k1", "app:k2"]] * 3  # first try + 2 retries
    stats = cache.stats()
    assert stats["given_up"] == 2 and stats["flush_retries"] == 4 and stats["flushed"] == 0
    assert "gave up writing 2 queued entries" in caplog.text
    assert "'app:k1'" in caplog.text and "'app:k2'" in caplog.text
    assert cache.queued_writes == 0
    assert await cache.async_get_cache("k1") is None  # given up means gone, not stuck


async def test_only_the_refused_entries_are_retried(track, caplog):
    backend = FlakyBackend(refuse={"bad"})
    cache = track(behind(backend, flush_size=10, flush_retries=3))
    cache._queue.retry_backoff = 0
    with caplog.at_level(logging.ERROR, logger="asynccache.flush"):
        await cache.async_set_cache_pipeline({"good": 1, "bad": 2, "fine": 3})
        await cache.async_flush()
    assert backend.batches[0] == ["good", "bad", "fine"]
    assert backend.batches[1:] == [["bad"]] * 3
    stats = cache.stats()
    assert stats["flushed"] == 2 and stats["given_up"] == 1 and stats["flush_retries"] == 3
    assert "'bad'" in caplog.text and "'good'" not in caplog.text
    assert await cache.async_batch_get_cache(["good", "bad", "fine"]) == [1, None, 3]


async def test_a_store_that_recovers_gets_everything(track):
    backend = FlakyBackend(refuse={"k"})
    cache = track(behind(backend, flush_size=1, flush_retries=5))
    cache._queue.retry_backoff = 0.001
    await cache.async_set_cache("k", "v")
    await asyncio.wait_for(backend.attempted.wait(), 30)  # refused twice by now
    backend.refuse.clear()
    await cache.async_flush()
    assert await BaseCache(backend).async_get_cache("k") == "v"
    assert cache.stats()["given_up"] == 0


# -- close, delete, clear -----------------------------------------------------------------


async def test_aclose_drains_the_queue():
    backend = GatedBackend()
    cache = behind(backend, flush_size=100)
    await cache.async_set_cache_pipeline({f"q{i}": i for i in range(30)})
    await settle()
    assert backend.batches == []
    await cache.aclose()
    assert all(backend.stored(f"q{i}") for i in range(30))
    assert cache.queued_writes == 0


async def test_deleting_a_queued_key_is_not_undone_by_a_later_flush(track):
    backend = GatedBackend()
    cache = track(behind(backend, flush_size=100))
    await cache.async_set_cache_pipeline({"gone": 1, "kept": 2})
    assert await cache.async_delete_cache("gone") is False  # never reached the store
    await cache.async_flush()
    assert not backend.stored("gone") and backend.stored("kept")
    assert await cache.async_get_cache("gone") is None


async def test_deleting_an_in_flight_key_waits_for_the_flush_then_deletes(track):
    backend = GatedBackend()
    backend.close_gate()
    cache = track(behind(backend, flush_size=1))
    await cache.async_set_cache("k", "v")
    assert await backend.next_batch() == ["k"]
    deleting = asyncio.ensure_future(cache.async_delete_cache("k"))
    await settle()
    assert not deleting.done()
    backend.gate.set()
    assert await asyncio.wait_for(deleting, 30) is True
    await cache.async_flush()
    assert not backend.stored("k") and await cache.async_get_cache("k") is None


async def test_clear_drops_queued_entries_of_the_namespace_only(track):
    backend = GatedBackend()
    cache = track(behind(backend, flush_size=100, namespace="a"))
    await cache.async_set_cache("k", 1)
    await cache.async_set_cache("k", 2, namespace="b")
    await cache.async_clear()
    await cache.async_flush()
    assert not backend.stored("a:k") and backend.stored("b:k")


async def test_increment_of_a_queued_key_is_not_overwritten_by_the_queue(track):
    backend = GatedBackend()
    cache = track(behind(backend, flush_size=100))
    await cache.async_set_cache("n", 10)
    assert await cache.async_increment("n") == 1  # the queued set was dropped first
    await cache.async_flush()
    assert await cache.async_get_cache("n") == 1


# -- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(("settings", "named"), [
    ({"flush_size": 0}, "flush_size"),
    ({"flush_interval": 0}, "flush_interval"),
    ({"flush_size": 10, "max_size": 5}, "max_queue_size"),
    ({"overflow": "discard"}, "queue_overflow"),
])
def test_bad_queue_settings_are_named(settings, named):
    with pytest.raises(ConfigurationError, match=named):
        FlushQueue(lambda items: asyncio.sleep(0, [True] * len(items)), CacheStats(),
                   **settings)


def test_passing_flush_size_turns_write_behind_on():
    assert MemoryCache(flush_size=5).queued_writes == 0
    assert MemoryCache(flush_size=5)._queue is not None
    assert MemoryCache()._queue is None
    assert MemoryCache(flush_size=5, write_behind=False)._queue is None
