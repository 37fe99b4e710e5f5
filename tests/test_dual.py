"""DualCache specifics: L1 in front of L2, fills, batch planning and L2 failures.

(The shared behaviour runs in the contract suite; this file holds only what is DualCache's.)
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from asynccache import DualCache, MemoryCache
from asynccache.backends.memory import MemoryBackend
from asynccache.base import Backend, BaseCache, WriteItem
from tests.helpers import FakeClock


class CountingBackend(MemoryBackend):
    """Memory backend that records which keys each call asked for."""

    name = "counting"

    def __init__(self) -> None:
        super().__init__()
        self.gets: list[list[str]] = []
        self.sets: list[list[str]] = []

    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self.gets.append(list(keys))
        return await super().read_many(keys)

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        self.sets.append([key for key, _, _ in items])
        return await super().write_many(items)


class DownBackend(Backend):
    """A store that is unreachable: every call raises ConnectionError."""

    name = "down"
    remote = False

    def __init__(self) -> None:
        self.calls = 0

    def _fail(self) -> None:
        self.calls += 1
        raise ConnectionError("connection refused")

    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self._fail()
        return []

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        self._fail()
        return None

    async def remove_many(self, keys: Sequence[str]) -> int:
        self._fail()
        return 0

    async def remove_prefix(self, prefix: str) -> int:
        self._fail()
        return 0


def tiers(clock: FakeClock | None = None, *, l1_ttl: float | None = None, **l2_settings):
    clock = clock or FakeClock()
    l1 = MemoryCache(ttl=l1_ttl, clock=clock)
    counting = CountingBackend()
    l2 = BaseCache(counting, clock=clock, **l2_settings)
    return DualCache(l1, l2, clock=clock), l1, l2, counting


async def test_read_goes_to_l2_on_an_l1_miss_and_fills_l1():
    dual, l1, l2, counting = tiers()
    await l2.async_set_cache("k", {"v": 1}, ttl=100)
    assert await l1.async_get_cache("k") is None
    assert await dual.async_get_cache("k") == {"v": 1}
    assert await l1.async_get_cache("k") == {"v": 1}  # filled
    counting.gets.clear()
    assert await dual.async_get_cache("k") == {"v": 1}
    assert counting.gets == []  # the second read never reached L2


async def test_l1_fill_ttl_is_capped_by_l1_ttl_and_by_the_entry_expiry():
    clock = FakeClock()
    dual, l1, l2, _ = tiers(clock, l1_ttl=10)
    await l2.async_set_cache("long", "L", ttl=100)
    await l2.async_set_cache("short", "S", ttl=4)
    await l2.async_set_cache("forever", "F", ttl=None)
    assert await dual.async_batch_get_cache(["long", "short", "forever"]) == ["L", "S", "F"]
    assert 0 < await l1.async_get_ttl("long") <= 10
    assert 0 < await l1.async_get_ttl("short") <= 4
    assert 0 < await l1.async_get_ttl("forever") <= 10
    clock.advance(11)
    # L1 dropped its copies; the long-lived entries come back from L2 and refill L1.
    assert await l1.async_batch_get_cache(["long", "short", "forever"]) == [None] * 3
    assert await dual.async_batch_get_cache(["long", "short", "forever"]) == ["L", None, "F"]
    assert await l1.async_get_cache("long") == "L"


async def test_l1_without_ttl_keeps_the_entry_expiry():
    clock = FakeClock()
    dual, l1, l2, _ = tiers(clock)
    await l2.async_set_cache("k", "v", ttl=30)
    await l2.async_set_cache("forever", "v", ttl=None)
    await dual.async_batch_get_cache(["k", "forever"])
    assert 0 < await l1.async_get_ttl("k") <= 30
    assert await l1.async_get_ttl("forever") is None


async def test_batch_get_asks_l2_only_for_l1_misses():
    dual, l1, _, counting = tiers()
    await dual.async_set_cache_pipeline({"a": 1, "b": 2, "c": 3})
    await l1.async_delete_cache("b")
    counting.gets.clear()
    got = await dual.async_batch_get_cache(["a", "b", "c", "missing"])
    assert got == [1, 2, 3, None]
    assert counting.gets == [["b", "missing"]]
    counting.gets.clear()
    assert await dual.async_batch_get_cache(["a", "b", "c"]) == [1, 2, 3]
    assert counting.gets == []


async def test_writes_reach_both_tiers_in_one_batch_each():
    dual, l1, l2, counting = tiers()
    assert await dual.async_set_cache_pipeline({"x": 1, "y": 2}) == [True, True]
    assert await dual.async_set_cache("z", 3) is True
    for tier in (l1, l2):
        assert await tier.async_batch_get_cache(["x", "y", "z"]) == [1, 2, 3]
    assert counting.sets == [["x", "y"], ["z"]]


async def test_deletes_and_clear_reach_both_tiers():
    dual, l1, l2, _ = tiers()
    await dual.async_set_cache_pipeline({"d": 1, "e": 2})
    assert await dual.async_delete_cache("d") is True
    assert await l1.async_get_cache("d") is None and await l2.async_get_cache("d") is None
    assert await dual.async_clear() == 1
    assert await l1.async_get_cache("e") is None and await l2.async_get_cache("e") is None


async def test_increment_counts_in_l2_and_never_serves_a_stale_l1_copy():
    dual, _, l2, _ = tiers()
    assert await dual.async_increment("n") == 1
    assert await dual.async_get_cache("n") == 1  # now also in L1
    assert await dual.async_increment("n", 2) == 3
    assert await dual.async_get_cache("n") == 3
    assert await l2.async_get_cache("n") == 3


async def test_l1_keeps_serving_when_l2_is_down():
    down = DownBackend()
    l1 = MemoryCache()
    dual = DualCache(l1, BaseCache(down, breaker_threshold=0))  # breaker off: every call tries
    # The durable write failed, so the call reports False, but L1 holds the value.
    assert await dual.async_set_cache("k", "v") is False
    assert await l1.async_get_cache("k") == "v"
    assert await dual.async_get_cache("k") == "v"
    assert await dual.async_get_cache("absent") is None  # L2 failure is a miss, no raise
    assert await dual.async_batch_get_cache(["k", "absent"]) == ["v", None]
    assert dual.l2.stats()["errors"] >= 3
    assert dual.stats()["l2"]["errors"] == dual.l2.stats()["errors"]


async def test_l2_circuit_opens_and_l1_still_answers():
    down = DownBackend()
    l1 = MemoryCache()
    l2 = BaseCache(down, breaker_threshold=2, breaker_cooldown=3600)
    dual = DualCache(l1, l2)
    await l1.async_set_cache("warm", "from L1")
    for i in range(3):
        assert await dual.async_get_cache(f"cold{i}") is None
    assert dual.stats()["l2"]["circuit"] == "open"
    calls, probes = down.calls, l2.stats()["probes"]
    for i in range(20):
        assert await dual.async_get_cache(f"cold{i}") is None
        assert await dual.async_get_cache("warm") == "from L1"
    # An open circuit keeps the dead store out of the callers' path: only the background
    # probes (if one fell due meanwhile) reach it.
    assert down.calls - calls == l2.stats()["probes"] - probes
    assert dual.stats()["l2"]["skipped_open_circuit"] >= 20
    assert dual.stats()["circuit"] == "closed"  # the dual cache itself stays healthy


def test_dual_cache_needs_an_l2():
    with pytest.raises(TypeError, match="L2"):
        DualCache(MemoryCache())


async def test_default_l1_is_memory_and_stats_show_both_tiers():
    dual = DualCache(l2=MemoryCache())
    assert isinstance(dual.l1, MemoryCache)
    await dual.async_set_cache("k", 1)
    stats = dual.stats()
    assert stats["l1"]["backend"] == "memory" and stats["l2"]["backend"] == "memory"
    assert "dual" in repr(dual)
