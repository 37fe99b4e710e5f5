"""Stats kept by every cache: counters, per-namespace counters, latency histograms, exporters."""

from __future__ import annotations

import importlib.util
import math
import threading
from collections.abc import Sequence

import pytest

from asynccache import BaseCache, MemoryCache
from asynccache.contract import Backend, WriteItem
from asynccache.stats import COUNTERS, LATENCY_BUCKETS, SAMPLE_EVERY, CacheStats
from tests.helpers import chat_completion


def test_counters_totals_and_per_namespace():
    stats = CacheStats()
    stats.add("hits", namespace="eu")
    stats.add("hits", 2, namespace="us")
    stats.add("misses", namespace="eu")
    stats.add("sets", 3)
    stats.add("errors")
    snap = stats.snapshot()
    assert (snap["hits"], snap["misses"], snap["sets"], snap["errors"]) == (3, 1, 3, 1)
    assert snap["hit_rate"] == 0.75
    assert snap["namespaces"]["eu"] == {"hits": 1, "misses": 1, "sets": 0, "hit_rate": 0.5}
    assert snap["namespaces"]["us"]["hits"] == 2
    assert snap["namespaces"][""]["sets"] == 3  # no namespace
    assert "errors" not in snap["namespaces"]["eu"]
    assert stats["hits"] == 3
    assert set(COUNTERS) <= set(snap)


def test_reset_clears_counters_and_histograms():
    stats = CacheStats()
    stats.add("hits", namespace="eu")
    stats.observe("get", 0.001)
    stats.reset()
    snap = stats.snapshot()
    assert snap["hits"] == 0 and snap["namespaces"] == {} and snap["latency"] == {}


def test_histogram_counts_and_quantiles_within_one_bucket():
    stats = CacheStats()
    durations = [0.001 * (i + 1) for i in range(100)]  # 1 ms .. 100 ms
    for seconds in durations:
        stats.observe("get", seconds)
    histogram = stats.latency("get")
    assert histogram is not None
    assert histogram.count == 100 and sum(histogram.counts) == 100
    assert histogram.min == pytest.approx(0.001) and histogram.max == pytest.approx(0.1)
    assert histogram.sum == pytest.approx(sum(durations))
    width = LATENCY_BUCKETS[1] / LATENCY_BUCKETS[0]  # one bucket's ratio
    assert 0.050 / width <= histogram.quantile(0.5) <= 0.050 * width
    assert 0.099 / width <= histogram.quantile(0.99) <= 0.1
    summary = stats.snapshot()["latency"]["get"]
    assert summary["count"] == 100
    assert summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"] == 100.0
    assert summary["mean_ms"] == pytest.approx(50.5)


def test_single_observation_is_its_own_quantile_and_bad_durations_are_zero():
    stats = CacheStats()
    stats.observe("set", 0.0042)
    histogram = stats.latency("set")
    assert histogram is not None
    assert histogram.quantile(0.5) == pytest.approx(0.0042)
    assert histogram.quantile(0.99) == pytest.approx(0.0042)
    stats.observe("clear", -1.0)
    stats.observe("clear", math.nan)
    clear = stats.latency("clear")
    assert clear is not None and clear.count == 2 and clear.max == 0.0
    assert stats.latency("never") is None
    with pytest.raises(ValueError, match="quantile"):
        histogram.quantile(1.5)


def test_slow_operations_land_in_the_overflow_bucket():
    stats = CacheStats()
    stats.observe("get", 500.0)
    histogram = stats.latency("get")
    assert histogram is not None
    assert histogram.counts[-1] == 1
    assert histogram.quantile(0.5) == 500.0
    pairs = histogram.cumulative()
    assert pairs[-1] == (math.inf, 1)
    assert [count for _, count in pairs] == sorted(count for _, count in pairs)


def test_observe_is_thread_safe():
    stats = CacheStats()

    def work() -> None:
        for _ in range(2000):
            stats.observe("get", 0.0001)
            stats.add("hits", namespace="t")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    histogram = stats.latency("get")
    assert histogram is not None and histogram.count == 8000
    assert stats.snapshot()["namespaces"]["t"]["hits"] == 8000


async def test_cache_stats_show_latency_and_namespaces():
    cache = MemoryCache(namespace="eu")
    try:
        value = chat_completion()
        await cache.async_set_cache("a", value)
        await cache.async_get_cache("a")
        await cache.async_get_cache("missing")
        await cache.async_get_cache("a", namespace="us")
        await cache.async_batch_get_cache(["a", "b", "c"])
        stats = cache.stats()
        # An in-process cache times the first call of each path (single key, batch),
        # then one in SAMPLE_EVERY (the batch is one backend call); the counters count
        # every call.
        assert stats["latency"]["set"]["count"] == 1
        assert stats["latency"]["get"]["count"] == 2
        for _ in range(SAMPLE_EVERY):
            await cache.async_get_cache("a")
        assert cache.stats()["latency"]["get"]["count"] == 3
        assert cache.stats()["namespaces"]["eu"]["hits"] == 2 + SAMPLE_EVERY
        assert stats["namespaces"]["eu"]["hits"] == 2
        assert stats["namespaces"]["eu"]["misses"] == 3
        assert stats["namespaces"]["us"]["misses"] == 1
        assert stats["bytes_read"] > len(value["choices"][0]["message"]["content"]) * 2
        cache.reset_stats()
        assert cache.stats()["latency"] == {}
    finally:
        await cache.aclose()


async def test_lean_counters_from_many_threads_lose_nothing():
    cache = MemoryCache()
    await cache.async_set_cache("k", 1)

    def work() -> None:
        for _ in range(500):
            assert cache.get_cache("k") == 1
            cache.get_cache("absent")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = cache.stats()
    assert stats["hits"] == 2000 and stats["misses"] == 2000
    assert stats["namespaces"][""]["hits"] == 2000
    await cache.aclose()


class _Broken(Backend):
    name = "broken"
    remote = False

    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        raise ConnectionError("down")

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        raise ConnectionError("down")

    async def remove_many(self, keys: Sequence[str]) -> int:
        return 0

    async def remove_prefix(self, prefix: str) -> int:
        return 0


async def test_failed_operations_are_timed_and_counted():
    cache = BaseCache(_Broken(), breaker_threshold=0)
    try:
        assert await cache.async_get_cache("k") is None
        assert await cache.async_set_cache("k", 1) is False
        stats = cache.stats()
        assert stats["errors"] == 2
        assert stats["latency"]["get"]["count"] == 1
        assert stats["latency"]["set"]["count"] == 1
    finally:
        await cache.aclose()


# -- exporters -----------------------------------------------------------------------

needs_prometheus = pytest.mark.skipif(
    importlib.util.find_spec("prometheus_client") is None,
    reason="prometheus-client is not installed",
)


@needs_prometheus
async def test_prometheus_exporter_reads_cache_stats():
    import prometheus_client

    from asynccache.metrics import PrometheusExporter

    registry = prometheus_client.CollectorRegistry()
    first, second = MemoryCache(namespace="eu"), MemoryCache(namespace="eu")
    try:
        await first.async_set_cache("k", {"a": 1})
        await first.async_get_cache("k")
        await first.async_get_cache("nope")
        exporter = PrometheusExporter([first, second], registry=registry)
        assert list(exporter.caches) == ["memory:eu", "memory:eu#2"]
        labels = {"cache": "memory:eu", "backend": "memory"}
        assert registry.get_sample_value("asynccache_hits_total", labels) == 1
        assert registry.get_sample_value("asynccache_misses_total", labels) == 1
        assert registry.get_sample_value(
            "asynccache_namespace_hits_total", {**labels, "namespace": "eu"}) == 1
        assert registry.get_sample_value("asynccache_hit_ratio", labels) == 0.5
        gets = {**labels, "operation": "get"}
        # In-process caches sample their timings: the first get of two is timed.
        assert registry.get_sample_value("asynccache_operation_seconds_count", gets) == 1
        assert registry.get_sample_value(
            "asynccache_operation_seconds_bucket", {**gets, "le": "+Inf"}) == 1
        assert registry.get_sample_value(
            "asynccache_hits_total", {"cache": "memory:eu#2", "backend": "memory"}) == 0
        # Values are read at scrape time.
        await first.async_get_cache("k")
        assert registry.get_sample_value("asynccache_hits_total", labels) == 2
        text = prometheus_client.generate_latest(registry).decode()
        assert 'asynccache_operation_seconds_bucket{backend="memory"' in text
        exporter.unregister()
        assert registry.get_sample_value("asynccache_hits_total", labels) is None
    finally:
        await first.aclose()
        await second.aclose()


@needs_prometheus
def test_prometheus_exporter_rejects_non_caches():
    from asynccache.exceptions import ConfigurationError
    from asynccache.metrics import PrometheusExporter

    with pytest.raises(ConfigurationError, match="expected an asynccache cache"):
        PrometheusExporter([object()], registry=None)  # type: ignore[list-item]


class _FakeMeter:
    """Records the instruments and their callbacks, like an OpenTelemetry meter."""

    def __init__(self) -> None:
        self.callbacks: dict[str, list] = {}

    def _make(self, name: str, callbacks=None, unit: str = "", description: str = "") -> str:
        self.callbacks[name] = list(callbacks or [])
        return name

    create_observable_counter = _make
    create_observable_gauge = _make

    def read(self, name: str) -> list[tuple[float, dict]]:
        return [(o.value, dict(o.attributes)) for cb in self.callbacks[name] for o in cb(None)]


@pytest.mark.skipif(importlib.util.find_spec("opentelemetry") is None,
                    reason="opentelemetry-api is not installed")
async def test_opentelemetry_callbacks_report_cache_stats():
    from asynccache.metrics import enable_opentelemetry

    meter = _FakeMeter()
    cache = MemoryCache(namespace="eu")
    try:
        handle = enable_opentelemetry({"answers": cache}, meter=meter)
        assert "asynccache.hits" in meter.callbacks and handle.instruments
        await cache.async_set_cache("k", 1)
        await cache.async_get_cache("k")
        base = {"cache": "answers", "backend": "memory"}
        assert meter.read("asynccache.hits") == [(1.0, base)]
        assert meter.read("asynccache.namespace.sets") == [(1.0, {**base, "namespace": "eu"})]
        counts = dict((a["operation"], v) for v, a in meter.read("asynccache.operation.count"))
        assert counts == {"get": 1.0, "set": 1.0}
        p99 = meter.read("asynccache.operation.p99")
        assert all(value >= 0 for value, _ in p99) and len(p99) == 2
    finally:
        await cache.aclose()


async def test_backend_counters_reach_stats():
    cache = MemoryCache(max_entries=2)
    for key in ("a", "b", "c"):
        await cache.async_set_cache(key, 1)
    assert cache.stats()["backend_counters"] == {"evictions": 1}
