"""The sync bridge's cost: blocking ``get_cache`` on Redis and in memory, side by side.

Scenarios (2 KB chat completion values under SHA-256 keys, read back as hits):

* ``sync redis get``: asynccache ``Cache(type="redis").get_cache`` called from a plain
  thread (a script, a WSGI worker), against LiteLLM's sync ``RedisCache.get_cache`` and
  redis-py's sync client (``get`` + ``orjson.loads``, the floor), with the awaited
  ``async_get_cache`` on the caller's own loop for reference;
* ``sync redis get (thread with a running loop)``: the same call from a thread whose own
  loop is running (Jupyter), which has to go through the bridge thread;
* ``sync memory get``: the in-memory cache's ``get_cache`` against its awaited get (from
  :mod:`benchmarks.bench_core`).

    python -m benchmarks.run --quick --scenarios bridge
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from benchmarks._measure import Result, measure, target_lines
from benchmarks.bench_core import run_sync_shim
from benchmarks.bench_redis import completion, sha_key

TTL = 3600
#: (scenario, contender, baseline, least ratio) from the bridge work's targets.
TARGETS = [
    ("sync redis get 2KB (hit)", "asynccache get_cache (sync)",
     "litellm RedisCache.get_cache (sync)", 0.9),
    ("sync get 2KB (hit)", "asynccache get_cache (sync shim)",
     "asynccache await async_get_cache", 0.9),
]


def _thread_runner(fn: Callable[[], None]) -> Callable[[], Any]:
    async def run() -> None:
        await asyncio.to_thread(fn)

    return run


async def interleaved(scenario: str, contenders: list[tuple[str, Callable[[], Any]]],
                      ops: int, repeats: int) -> list[Result]:
    """Time the contenders round-robin, run by run, so they share the machine's load."""
    durations: dict[str, list[float]] = {label: [] for label, _ in contenders}
    for _, run in contenders:  # warm-up
        await run()
    for _ in range(repeats):
        for label, run in contenders:
            started = time.perf_counter()
            await run()
            durations[label].append(time.perf_counter() - started)
    return [Result(scenario, label, ops, statistics.median(taken), min(taken), max(taken))
            for label, taken in durations.items()]


async def run_sync_redis(quick: bool, port: int) -> list[Result]:
    from asynccache import Cache

    ops = 200 if quick else 1000
    repeats = 5 if quick else 15
    keys = [sha_key("bridge", i) for i in range(ops)]
    value = completion(0)
    ours = Cache(type="redis", host="127.0.0.1", port=port, namespace="bench-bridge", ttl=TTL)
    await ours.async_set_cache_pipeline({key: value for key in keys}, ttl=TTL)
    contenders: list[tuple[str, Callable[[], Any]]] = []

    def ours_sync() -> None:
        for key in keys:
            ours.get_cache(key)

    async def ours_awaited() -> None:
        for key in keys:
            await ours.async_get_cache(key)

    def ours_from_running_loop() -> None:
        async def inside() -> None:
            for key in keys:
                ours.get_cache(key)  # blocking on purpose: the Jupyter shape

        asyncio.run(inside())

    if ours.get_cache(keys[0]) != value:
        raise AssertionError("sync get_cache did not return the stored value")
    contenders.append(("asynccache get_cache (sync)", _thread_runner(ours_sync)))

    import redis

    raw = redis.Redis(host="127.0.0.1", port=port)
    raw_keys = [sha_key("bridge-raw", i) for i in range(ops)]
    raw.mset({key: orjson.dumps(value) for key in raw_keys})

    def raw_sync() -> None:
        for key in raw_keys:
            orjson.loads(raw.get(key))  # type: ignore[arg-type]

    contenders.append(("raw redis-py get + orjson (sync)", _thread_runner(raw_sync)))
    litellm_cache = None
    try:
        logging.getLogger("LiteLLM").setLevel(logging.ERROR)
        from litellm.caching.redis_cache import RedisCache

        litellm_cache = RedisCache(host="127.0.0.1", port=port)
        lite_keys = [sha_key("bridge-litellm", i) for i in range(ops)]
        for key in lite_keys:
            litellm_cache.set_cache(key, value, ttl=TTL)

        def litellm_sync() -> None:
            for key in lite_keys:
                litellm_cache.get_cache(key)

        if litellm_cache.get_cache(lite_keys[0]) != value:
            raise AssertionError("litellm returned something else")
        contenders.append(("litellm RedisCache.get_cache (sync)", _thread_runner(litellm_sync)))
    except ImportError as exc:
        print(f"  (skipping litellm: {exc})")
    contenders.append(("asynccache await async_get_cache", ours_awaited))
    results = await interleaved("sync redis get 2KB (hit)", contenders, ops, repeats)
    results.append(await measure(
        "sync redis get 2KB (hit, thread with a running loop)",
        "asynccache get_cache (via bridge)", _thread_runner(ours_from_running_loop), ops,
        repeats=repeats,
    ))
    raw.close()
    await ours.aclose()
    return results


async def run(quick: bool, port: int | None = None) -> list[Result]:
    server = None
    if port is None:
        from tests.servers.processes import start_valkey

        server = start_valkey(search=False, name="bench-bridge-valkey")
        port = server.port
    try:
        results = await run_sync_redis(quick, port)
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)
    results.extend(await run_sync_shim(quick))
    return results


def table(results: list[Result]) -> str:
    lines = [f"{'scenario':<54} {'library':<38} {'ops/s':>9} {'median ms':>10}"]
    for r in results:
        lines.append(f"{r.scenario:<54} {r.library:<38} {r.ops_per_s:>9,.0f} "
                     f"{r.median_s * 1000:>10.2f}")
    lines.append("")
    lines.extend(target_lines(results, TARGETS))
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(asyncio.run(run(quick=True))))
