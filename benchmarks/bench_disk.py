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
import sys
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks._measure import Result, measure, target_lines
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


async def _one(library: str, build: Build, ops: int, repeats: int) -> list[Result]:
    value = completion()
    keys = [f"bench-{i}" for i in range(ops)]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="asynccache-bench-") as folder:
        cache = build(folder)

        async def set_sequential() -> None:
            for key in keys:
                await cache.async_set_cache(key, value, ttl=TTL)

        async def get_sequential() -> None:
            for key in keys:
                await cache.async_get_cache(key)

        def tasks(op: Callable[[str], Awaitable[Any]]) -> Callable[[], Awaitable[None]]:
            async def worker(share: list[str]) -> None:
                for key in share:
                    await op(key)

            async def run() -> None:
                await asyncio.gather(*(worker(keys[i::TASKS]) for i in range(TASKS)))
            return run

        async def set_one(key: str) -> None:
            await cache.async_set_cache(key, value, ttl=TTL)

        try:
            for scenario, contender in (
                ("disk set 2KB (sequential)", set_sequential),
                ("disk get 2KB (sequential)", get_sequential),
                (f"disk get 2KB x{TASKS} tasks", tasks(cache.async_get_cache)),
                (f"disk set 2KB x{TASKS} tasks", tasks(set_one)),
            ):
                results.append(await measure(scenario, library, contender, ops,
                                             repeats=repeats, probe_loop=True,
                                             count_final_stall=True))
                if scenario.startswith("disk set"):
                    found = await cache.async_get_cache(keys[-1])
                    if found != value:
                        raise AssertionError(f"{library} read back a wrong value")
        finally:
            closer = getattr(cache, "aclose", None)
            if closer is not None:
                await closer()
            else:
                cache.close()
    return results


async def run(quick: bool) -> list[Result]:
    """Sequential and 64-task get/set for asynccache's disk store and LiteLLM's DiskCache."""
    notes.clear()
    ops = 500 if quick else 2000
    repeats = 3 if quick else 5
    by_library = [await _one(name, build, ops, repeats) for name, build in _contenders()]
    # Rows grouped by scenario, asynccache first.
    return [row for rows in zip(*by_library, strict=True) for row in rows]


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
