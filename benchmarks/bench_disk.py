"""Disk benchmarks: get and set of a ~2 KB chat completion, asynccache vs LiteLLM's DiskCache.

Run with ``python -m benchmarks.bench_disk`` (add ``--quick`` for a short run). Each
contender gets a fresh temporary folder, so the figures include the page cache but no
earlier entries. Contenders: ``Cache(type="disk")`` (a new folder: the SQLite store),
``Cache(type="disk", store="files")`` (the file store, a file per entry) and LiteLLM's
DiskCache. Every row records the event loop's p99 lag while it runs (a 1 ms ticker):
LiteLLM's DiskCache (``diskcache.Cache`` called from ``async def`` methods) never
yields, so its whole run counts as one stall; asynccache's calls suspend once each.
The printout ends with issue 15's disk targets, met or not, from this run's rows.

LiteLLM removed its disk backend in recent releases; when ``litellm.caching.disk_cache``
is absent the peer row makes the same calls it made (``diskcache.Cache.set(key, value,
expire=ttl)`` and ``.get(key)`` from ``async def`` methods), so the comparison stands.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks._measure import Result, measure_in_turns, target_lines
from benchmarks.bench_core import completion

TTL = 3600
TASKS = 64
#: Contenders that could not run, read by the harness.
notes: list[str] = []


class _DiskCacheCalls:
    """The calls LiteLLM's DiskCache made on ``diskcache.Cache``, from async methods."""

    def __init__(self, folder: str) -> None:
        import diskcache

        self.disk_cache = diskcache.Cache(folder)

    async def async_set_cache(self, key: str, value: Any, **kwargs: Any) -> None:
        self.disk_cache.set(key, value, expire=kwargs.get("ttl"))

    async def async_get_cache(self, key: str, **kwargs: Any) -> Any:
        return self.disk_cache.get(key)

    def close(self) -> None:
        self.disk_cache.close()


def _litellm_disk(folder: str) -> Any:
    try:
        from litellm.caching.disk_cache import DiskCache  # type: ignore[import-not-found]
    except ImportError:
        return _DiskCacheCalls(folder)
    return DiskCache(disk_cache_dir=folder)


def _asynccache_disk(folder: str) -> Any:
    from asynccache import Cache

    return Cache(type="disk", disk_cache_dir=folder, ttl=TTL)


def _asynccache_files(folder: str) -> Any:
    from asynccache import Cache

    return Cache(type="disk", disk_cache_dir=folder, ttl=TTL, store="files")


Build = Callable[[str], Any]
OURS = "asynccache Cache(type='disk')"
PEER = "litellm DiskCache"
#: Issue 15's disk targets: (scenario, our row, the peer's row, minimum ratio).
TARGETS = [
    ("disk get 2KB (sequential)", OURS, PEER, 0.5),
    ("disk set 2KB (sequential)", OURS, PEER, 1.0),
    (f"disk get 2KB x{TASKS} tasks", OURS, PEER, 2.0),
    (f"disk set 2KB x{TASKS} tasks", OURS, PEER, 2.0),
]
#: Issue 15: the loop stays responsive (p99 lag of the 1 ms ticker, in ms).
MAX_STALL_MS = 1.0


def _contenders() -> list[tuple[str, Build]]:
    contenders: list[tuple[str, Build]] = [
        (OURS, _asynccache_disk),
        ("asynccache Cache(type='disk', store='files')", _asynccache_files),
    ]
    try:
        import diskcache  # noqa: F401
    except ImportError:
        notes.append("litellm DiskCache: skipped, diskcache is not installed")
    else:
        contenders.append((PEER, _litellm_disk))
    return contenders


Operation = Callable[[Any, list[str], Any], Callable[[], Awaitable[None]]]


def _sequential_set(cache: Any, keys: list[str], value: Any) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        for key in keys:
            await cache.async_set_cache(key, value, ttl=TTL)
    return run


def _sequential_get(cache: Any, keys: list[str], value: Any) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        for key in keys:
            await cache.async_get_cache(key)
    return run


def _in_tasks(op: Callable[[Any, str, Any], Awaitable[Any]]) -> Operation:
    def make(cache: Any, keys: list[str], value: Any) -> Callable[[], Awaitable[None]]:
        async def worker(share: list[str]) -> None:
            for key in share:
                await op(cache, key, value)

        async def run() -> None:
            await asyncio.gather(*(worker(keys[i::TASKS]) for i in range(TASKS)))
        return run
    return make


async def _get(cache: Any, key: str, value: Any) -> Any:
    return await cache.async_get_cache(key)


async def _set(cache: Any, key: str, value: Any) -> Any:
    return await cache.async_set_cache(key, value, ttl=TTL)


SCENARIOS: list[tuple[str, Operation]] = [
    ("disk set 2KB (sequential)", _sequential_set),
    ("disk get 2KB (sequential)", _sequential_get),
    (f"disk get 2KB x{TASKS} tasks", _in_tasks(_get)),
    (f"disk set 2KB x{TASKS} tasks", _in_tasks(_set)),
]


async def _close(cache: Any) -> None:
    closer = getattr(cache, "aclose", None)
    if closer is not None:
        await closer()
    else:
        cache.close()


async def run(quick: bool) -> list[Result]:
    """Sequential and 64-task get/set for asynccache's disk stores and LiteLLM's DiskCache,
    the contenders taking turns run by run (:func:`~benchmarks._measure.measure_in_turns`)."""
    notes.clear()
    ops = 1000 if quick else 2000
    repeats = 5 if quick else 9
    value = completion()
    keys = [f"bench-{i}" for i in range(ops)]
    results: list[Result] = []
    with contextlib.ExitStack() as folders:
        caches = [(library, build(folders.enter_context(
                      tempfile.TemporaryDirectory(prefix="asynccache-bench-"))))
                  for library, build in _contenders()]
        try:
            for scenario, operation in SCENARIOS:
                results.extend(await measure_in_turns(
                    scenario, [(library, operation(cache, keys, value), True)
                               for library, cache in caches],
                    ops, repeats=repeats, count_final_stall=True))
                if scenario.startswith("disk set"):
                    for library, cache in caches:
                        if await cache.async_get_cache(keys[-1]) != value:
                            raise AssertionError(f"{library} read back a wrong value")
        finally:
            for _, cache in caches:
                await _close(cache)
    return results


def stall_lines(results: list[Result]) -> list[str]:
    """One line per scenario: our row's loop-lag p99 against :data:`MAX_STALL_MS`."""
    lines = []
    for result in results:
        lag = result.loop_lag_p99_ms
        if result.library == OURS and lag is not None:
            lines.append(f"target {result.scenario}: loop-stall p99 {lag:.2f} ms "
                         f"(< {MAX_STALL_MS} ms) {'met' if lag < MAX_STALL_MS else 'NOT met'}")
    return lines


def table(results: list[Result]) -> str:
    """The rows, then each disk target met or not (ratios from this run's rows)."""
    lines = []
    for result in results:
        lag_ms = result.loop_lag_p99_ms
        lag = "" if lag_ms is None else f"  loop lag p99 {lag_ms:8.2f} ms"
        lines.append(f"{result.scenario:26s} {result.library:46s} "
                     f"{result.ops_per_s:10,.0f} ops/s{lag}")
    lines.append("")
    lines.extend(target_lines(results, TARGETS))
    lines.extend(stall_lines(results))
    lines.extend(f"note: {line}" for line in notes)
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(asyncio.run(run(quick="--quick" in sys.argv))))
