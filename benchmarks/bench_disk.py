"""Disk backend micro-benchmark: get and set of a ~2 KB chat completion.

Run with ``python -m benchmarks.bench_disk`` (add ``--quick`` for a short run). The
folder is a fresh temporary directory, so the figures include the page cache but no
earlier entries. Each scenario also records the event loop's p99 lag while it runs,
which shows that file I/O stays off the loop.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import uuid

from asynccache.backends.disk import DiskCache
from benchmarks._measure import Result, measure


def _completion(size: int = 2000) -> dict[str, object]:
    text = "Bonjour, voilà la réponse — 你好 ✓ "
    body = text * (size // len(text.encode()) + 1)
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex,
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": body[:size]}}],
        "usage": {"prompt_tokens": 25, "completion_tokens": 412, "total_tokens": 437},
    }


async def run(quick: bool) -> list[Result]:
    """Measure disk set, get (hit), get (miss) and batch get; one :class:`Result` each."""
    ops = 200 if quick else 1000
    repeats = 3 if quick else 5
    value = _completion()
    keys = [f"bench-{i}" for i in range(ops)]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="asynccache-bench-") as folder:
        cache = DiskCache(disk_cache_dir=folder)
        try:
            async def set_sequential() -> None:
                for key in keys:
                    await cache.async_set_cache(key, value)

            async def set_concurrent() -> None:
                await asyncio.gather(*(cache.async_set_cache(key, value) for key in keys))

            async def get_sequential() -> None:
                for key in keys:
                    await cache.async_get_cache(key)

            async def get_concurrent() -> None:
                await asyncio.gather(*(cache.async_get_cache(key) for key in keys))

            async def get_missing() -> None:
                for key in keys:
                    await cache.async_get_cache("absent-" + key)

            async def batch_get() -> None:
                for start in range(0, ops, 100):
                    await cache.async_batch_get_cache(keys[start : start + 100])

            for scenario, contender in (
                ("disk set 2KB (sequential)", set_sequential),
                ("disk set 2KB (gather)", set_concurrent),
                ("disk get 2KB hit (sequential)", get_sequential),
                ("disk get 2KB hit (gather)", get_concurrent),
                ("disk get miss (sequential)", get_missing),
                ("disk batch get 100 x 2KB", batch_get),
            ):
                results.append(await measure(scenario, "asynccache", contender, ops,
                                             repeats=repeats, probe_loop=True))
            hits = await cache.async_batch_get_cache(keys)
            assert all(hit == value for hit in hits), "benchmark read back a wrong value"
        finally:
            await cache.aclose()
    return results


if __name__ == "__main__":
    for result in asyncio.run(run(quick="--quick" in sys.argv)):
        lag_ms = result.loop_lag_p99_ms
        lag = "" if lag_ms is None else f"  loop lag p99 {lag_ms:6.2f} ms"
        print(f"{result.scenario:32s} {result.ops_per_s:10,.0f} ops/s  "
              f"({result.median_s / result.ops * 1e6:7.1f} µs/op, "
              f"spread {result.min_s:.3f}-{result.max_s:.3f} s){lag}")
