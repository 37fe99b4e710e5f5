"""Memory footprint: bytes per entry of 2 KB chat completions in each in-memory cache.

Each library is measured in a fresh child process (so nothing another library allocated
is counted). The child imports the library, creates the cache, takes a baseline, stores
``entries`` distinct completions (TTL set), collects garbage and measures the growth:

* ``tracemalloc`` (default, deterministic): bytes allocated by Python and still alive,
  divided by the number of entries; what the cache retains, whatever the allocator does;
* ``rss`` (full runs only): growth of the process's resident set, which also shows the
  allocator's overhead and fragmentation.

``payload_bytes`` is the compact JSON size of one completion, for reference. The limit
row is a plain dict of key -> exact-size entry bytes (header + orjson payload): what
asynccache must keep at the very least.
Run alone: ``python -m benchmarks.bench_memory_footprint [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks._measure import Result

LIBRARIES = (
    "asynccache MemoryCache",
    "dict + exact-size bytes (limit)",
    "litellm InMemoryCache",
    "aiocache SimpleMemoryCache",
    "cashews mem://",
)
TTL = 3600
_ROOT = Path(__file__).resolve().parent.parent
#: Libraries that could not be measured, read by the harness.
notes: list[str] = []


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _fill(library: str, entries: int) -> tuple[Any, float]:
    """Create ``library``'s cache, store ``entries`` completions; return it and fill time."""
    from benchmarks.bench_core import completion, sha_keys

    keys = sha_keys(entries, "footprint")
    if library == "asynccache MemoryCache":
        from asynccache import MemoryCache

        cache: Any = MemoryCache(ttl=TTL, max_entries=entries + 1, max_bytes=2**40)

        async def put(key: str, value: Any) -> None:
            await cache.async_set_cache(key, value, ttl=TTL)
    elif library == "dict + exact-size bytes (limit)":
        # What asynccache keeps: the key and one exact-size bytes per entry (its 21-byte
        # header plus the orjson payload), with nothing else.
        from benchmarks.bench_core import ENTRY_HEADER

        cache = {}

        async def put(key: str, value: Any) -> None:
            cache[key] = ENTRY_HEADER + orjson.dumps(value)
    elif library == "litellm InMemoryCache":
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        from litellm.caching.in_memory_cache import InMemoryCache

        cache = InMemoryCache(max_size_in_memory=entries + 1, max_size_per_item=1024 * 1024,
                              default_ttl=TTL)

        async def put(key: str, value: Any) -> None:
            await cache.async_set_cache(key, value, ttl=TTL)
    elif library == "aiocache SimpleMemoryCache":
        from aiocache import SimpleMemoryCache

        cache = SimpleMemoryCache()

        async def put(key: str, value: Any) -> None:
            await cache.set(key, value, ttl=TTL)
    elif library == "cashews mem://":
        from cashews import Cache as CashewsCache

        cache = CashewsCache()
        cache.setup(f"mem://?size={entries + 1}")

        async def put(key: str, value: Any) -> None:
            await cache.set(key, value, expire=TTL)
    else:
        raise ValueError(f"unknown library {library!r}; choose one of {LIBRARIES}")
    started = time.perf_counter()
    for index, key in enumerate(keys):
        # A distinct object per entry, as real responses are: nothing shared between entries.
        await put(key, completion(index))
    return cache, time.perf_counter() - started


async def _child(library: str, entries: int, method: str) -> dict[str, Any]:
    import tracemalloc

    from benchmarks.bench_core import completion

    payload = len(orjson.dumps(completion(entries // 2)))
    # Import the library and warm its code paths before the baseline.
    warm, _ = await _fill(library, 10)
    del warm
    gc.collect()
    if method == "tracemalloc":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = _rss()
    cache, seconds = await _fill(library, entries)
    gc.collect()
    if method == "tracemalloc":
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    else:
        after = _rss()
    del cache
    return {"library": library, "entries": entries, "method": method, "seconds": seconds,
            "bytes": after - before, "bytes_per_entry": (after - before) / entries,
            "payload_bytes": payload}


async def measure_one(library: str, entries: int, method: str) -> dict[str, Any]:
    """Run one child process and return what it measured (raises with its stderr)."""
    root = _ROOT
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.bench_memory_footprint", "--child", library,
        "--entries", str(entries), "--method", method,
        cwd=str(root), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"exit {process.returncode}: {last[0]}")
    line = out.decode().strip().splitlines()[-1]
    found: dict[str, Any] = json.loads(line)
    return found


async def run(quick: bool) -> list[Result]:
    """Bytes per entry for each library (quick: 20k entries, tracemalloc only)."""
    notes.clear()
    entries = 20_000 if quick else 100_000
    methods = ("tracemalloc",) if quick else ("tracemalloc", "rss")
    scenario = f"memory footprint ({entries // 1000}k x 2KB)"
    figures: dict[tuple[str, str], dict[str, Any]] = {}

    async def one(library: str, method: str) -> None:
        try:
            figures[(library, method)] = await measure_one(library, entries, method)
        except Exception as exc:
            notes.append(f"footprint {library} ({method}): skipped, {exc}")

    # tracemalloc counts only what each child's Python allocates, so children may run
    # side by side; RSS runs one at a time so they do not compete for memory.
    gate = asyncio.Semaphore(2)

    async def gated(library: str) -> None:
        async with gate:
            await one(library, "tracemalloc")

    await asyncio.gather(*(gated(library) for library in LIBRARIES))
    if "rss" in methods:
        for library in LIBRARIES:
            await one(library, "rss")
    results: list[Result] = []
    for library in LIBRARIES:
        main = figures.get((library, "tracemalloc")) or figures.get((library, "rss"))
        if main is None:
            continue
        extra: dict[str, Any] = {
            "bytes_per_entry": round(main["bytes_per_entry"], 1),
            "method": main["method"],
            "payload_bytes": main["payload_bytes"],
            "entries": entries,
        }
        rss = figures.get((library, "rss"))
        if rss is not None:
            extra["rss_bytes_per_entry"] = round(rss["bytes_per_entry"], 1)
        if library == "dict + exact-size bytes (limit)":
            extra["role"] = "limit"
        seconds = main["seconds"]
        results.append(Result(scenario, library, entries, seconds, seconds, seconds,
                              extra=extra))
    return results


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child")
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--method", choices=("tracemalloc", "rss"), default="tracemalloc")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(asyncio.run(_child(args.child, args.entries, args.method))))
        return 0
    for result in asyncio.run(run(args.quick)):
        print(f"{result.library:30s} {result.extra['bytes_per_entry']:10,.0f} B/entry "
              f"({result.extra['method']}; payload {result.extra['payload_bytes']} B)")
    for line in notes:
        print("note:", line)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
