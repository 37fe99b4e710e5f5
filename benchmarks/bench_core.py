"""Core benchmarks: in-memory get/set, key building, sync-shim overhead, facade hit.

Every scenario runs asynccache side by side with what users would pick instead, when
installed (litellm's caching classes, aiocache, cashews) and with the plain-Python limit
(a dict, or sha256 over orjson), all in the same process and the same run. Values are a
~2 KB chat completion with non-ASCII text, keys are sha256 hex digests, TTLs are set.

Run alone: ``python -m benchmarks.bench_core [--quick]``; through the harness:
``python -m benchmarks.run --scenarios memory,core``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from benchmarks._measure import Result, measure_in_turns

# litellm fetches its model price map over the network at import time unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

TTL = 3600
#: Contenders that could not run (peer not installed...), read by the harness.
notes: list[str] = []

Contender = Callable[[], Awaitable[Any]]


def completion(index: int = 0, size: int = 2000) -> dict[str, Any]:
    """A realistic ~2 KB chat completion with non-ASCII text (distinct per ``index``)."""
    text = f"Bonjour, voilà la réponse n°{index} — 你好 ✓ Größe, naïve café. "
    body = (text * (size // len(text.encode()) + 1))[:size]
    return {
        "id": f"chatcmpl-{index:024d}",
        "object": "chat.completion",
        "created": 1_700_000_000 + index,
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": body, "tool_calls": None}}],
        "usage": {"prompt_tokens": 25, "completion_tokens": 412, "total_tokens": 437},
        "system_fingerprint": "fp_bench",
    }


def request(index: int = 0) -> dict[str, Any]:
    """A realistic chat request: system + multi-turn messages, tools, sampling settings."""
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful travel assistant. Réponds en "
                                          "français si l'utilisateur écrit en français."},
            {"role": "user", "content": "Je voudrais visiter Kyoto au printemps. 京都の桜は"
                                        "いつ見頃ですか\uff1f"},
            {"role": "assistant", "content": "Les cerisiers fleurissent début avril ; "
                                             "réservez tôt."},
            {"role": "user", "content": f"Merci ! Quels quartiers pour dormir ? (#{index})"},
        ],
        "temperature": 0.2,
        "top_p": 1,
        "max_tokens": 512,
        "seed": 42,
        "tools": [{"type": "function", "function": {
            "name": "search_hotels",
            "description": "Find hotels in a city for given dates",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string"}, "check_in": {"type": "string"},
                "nights": {"type": "integer"}}, "required": ["city"]}}}],
        "tool_choice": "auto",
        "user": "user-1234",
        "metadata": {"trace_id": f"trace-{index}"},
        "api_key": "sk-bench-not-a-real-key",
        "timeout": 30,
    }


def sha_keys(count: int, prefix: str = "bench") -> list[str]:
    """``count`` sha256 hex keys, as LLM caches produce them."""
    return [hashlib.sha256(f"{prefix}-{i}".encode()).hexdigest() for i in range(count)]


def _note(message: str) -> None:
    notes.append(message)


async def _try_peer(name: str, build: Callable[[], Any]) -> Any:
    try:
        made = build()
        if asyncio.iscoroutine(made):
            made = await made
        return made
    except ImportError as exc:
        _note(f"{name}: skipped, not installed ({exc.name or exc})")
    except Exception as exc:
        _note(f"{name}: skipped, {type(exc).__name__}: {exc}")
    return None


def _litellm_memory() -> Any:
    from litellm.caching.in_memory_cache import InMemoryCache

    # Its default bound (200 entries, 1 KB per item) would evict or refuse our entries.
    return InMemoryCache(max_size_in_memory=1_000_000, max_size_per_item=1024 * 1024,
                         default_ttl=TTL)


def _aiocache_memory() -> Any:
    from aiocache import SimpleMemoryCache

    return SimpleMemoryCache()


def _cashews_memory() -> Any:
    from cashews import Cache as CashewsCache

    cache = CashewsCache()
    cache.setup("mem://?size=1000000")
    return cache


def _litellm_cache() -> Any:
    from litellm.caching.caching import Cache as LiteLLMCache

    return LiteLLMCache(type="local")


async def _measure_all(scenario: str, contenders: list[tuple[str, Contender, bool, dict]],
                       ops: int, repeats: int) -> list[Result]:
    results = await measure_in_turns(scenario, [(library, run, ours)
                                                for library, run, ours, _ in contenders],
                                     ops, repeats=repeats)
    for result, (_, _, _, extra) in zip(results, contenders, strict=True):
        result.extra.update(extra)
    return results


def _sizes(quick: bool) -> tuple[int, int]:
    return (2000, 5) if quick else (10_000, 7)


# -- memory get / set -----------------------------------------------------------------

#: A stand-in for asynccache's 21-byte entry header: the limit rows build entries of the
#: same size with the same one concatenation (an exact-size copy).
ENTRY_HEADER = bytes(21)
BATCH = 1000


async def run_memory(quick: bool) -> list[Result]:
    """In-memory set, get (hit) and batch get of a 2 KB completion.

    The limit rows do the same work as the cache they bound: a set encodes with
    ``orjson.dumps`` and keeps one exact-size copy (header + payload) in a dict; a get
    looks the bytes up and decodes them with ``orjson.loads`` (a fresh object per call,
    as asynccache returns). Peers that keep the caller's object by reference skip both.
    """
    from asynccache import Cache, MemoryCache

    ops, repeats = _sizes(quick)
    keys = sha_keys(ops)
    value = completion()
    limit = {"role": "limit"}

    ours_direct = MemoryCache(ttl=TTL, max_entries=ops * 2)
    ours_facade = Cache(ttl=TTL, max_entries=ops * 2)
    entries: dict[str, bytes] = {}
    payloads: dict[str, bytes] = {}
    peers = {
        "litellm InMemoryCache": await _try_peer("litellm InMemoryCache", _litellm_memory),
        "aiocache SimpleMemoryCache": await _try_peer("aiocache", _aiocache_memory),
        "cashews mem://": await _try_peer("cashews", _cashews_memory),
    }
    dumps, loads, header = orjson.dumps, orjson.loads, ENTRY_HEADER

    async def limit_set() -> None:
        for key in keys:
            entries[key] = header + dumps(value)

    async def limit_get() -> None:
        for key in keys:
            loads(payloads[key])

    async def limit_batch_get() -> None:
        for start in range(0, ops, BATCH):
            [loads(payloads[key]) for key in keys[start : start + BATCH]]

    def ours_set(cache: Any) -> Contender:
        async def run() -> None:
            for key in keys:
                await cache.async_set_cache(key, value, ttl=TTL)
        return run

    def ours_get(cache: Any) -> Contender:
        async def run() -> None:
            for key in keys:
                await cache.async_get_cache(key)
        return run

    def ours_batch_get(cache: Any) -> Contender:
        async def run() -> None:
            for start in range(0, ops, BATCH):
                await cache.async_batch_get_cache(keys[start : start + BATCH])
        return run

    def peer_set(name: str, cache: Any) -> Contender:
        if name.startswith("litellm"):
            async def run() -> None:
                for key in keys:
                    await cache.async_set_cache(key, value, ttl=TTL)
        elif name.startswith("aiocache"):
            async def run() -> None:
                for key in keys:
                    await cache.set(key, value, ttl=TTL)
        else:
            async def run() -> None:
                for key in keys:
                    await cache.set(key, value, expire=TTL)
        return run

    def peer_get(name: str, cache: Any) -> Contender:
        if name.startswith("litellm"):
            async def run() -> None:
                for key in keys:
                    await cache.async_get_cache(key)
        else:
            async def run() -> None:
                for key in keys:
                    await cache.get(key)
        return run

    def peer_batch_get(name: str, cache: Any) -> Contender:
        if name.startswith("litellm"):
            async def run() -> None:
                for start in range(0, ops, BATCH):
                    await cache.async_batch_get_cache(keys[start : start + BATCH])
        elif name.startswith("aiocache"):
            async def run() -> None:
                for start in range(0, ops, BATCH):
                    await cache.multi_get(keys[start : start + BATCH])
        else:
            async def run() -> None:
                for start in range(0, ops, BATCH):
                    await cache.get_many(*keys[start : start + BATCH])
        return run

    set_contenders: list[tuple[str, Contender, bool, dict]] = [
        ("asynccache MemoryCache", ours_set(ours_direct), True, {}),
        ("asynccache Cache()", ours_set(ours_facade), True, {}),
        ("dict + orjson.dumps + exact-size copy (limit)", limit_set, False, limit),
    ]
    get_contenders: list[tuple[str, Contender, bool, dict]] = [
        ("asynccache MemoryCache", ours_get(ours_direct), True, {}),
        ("asynccache Cache()", ours_get(ours_facade), True, {}),
        ("dict + orjson.loads (limit)", limit_get, False, limit),
    ]
    batch_contenders: list[tuple[str, Contender, bool, dict]] = [
        ("asynccache MemoryCache", ours_batch_get(ours_direct), True, {}),
        ("asynccache Cache()", ours_batch_get(ours_facade), True, {}),
        ("dict + orjson.loads per item (limit)", limit_batch_get, False, limit),
    ]
    for name, cache in peers.items():
        if cache is not None:
            set_contenders.append((name, peer_set(name, cache), False, {}))
            get_contenders.append((name, peer_get(name, cache), False, {}))
            batch_contenders.append((name, peer_batch_get(name, cache), False, {}))

    results = await _measure_all("memory set 2KB", set_contenders, ops, repeats)
    for key in keys:
        payloads[key] = orjson.dumps(value)
    if len(entries[keys[0]]) != len(ours_direct.backend._data[keys[0]][0]):
        raise AssertionError("the set limit does not build entries of asynccache's size")
    # Every contender must really hit before its reads are timed.
    checks = {"asynccache MemoryCache": await ours_direct.async_get_cache(keys[-1]),
              "asynccache Cache()": await ours_facade.async_get_cache(keys[-1]),
              "limit": loads(payloads[keys[-1]])}
    for name, cache in peers.items():
        if cache is None:
            continue
        getter = cache.async_get_cache if name.startswith("litellm") else cache.get
        checks[name] = await getter(keys[-1])
    for name, found in checks.items():
        if found != value:
            raise AssertionError(f"{name} did not return the stored value before the get run")
    results += await _measure_all("memory get 2KB (hit)", get_contenders, ops, repeats)
    results += await _measure_all(f"memory batch get {BATCH} x 2KB (hit)", batch_contenders,
                                  ops, repeats)
    await ours_direct.aclose()
    await ours_facade.aclose()
    closer = getattr(peers.get("cashews mem://"), "close", None)
    if closer is not None:
        await closer()
    return results


# -- key building ---------------------------------------------------------------------


async def run_keys(quick: bool) -> list[Result]:
    """Cache key of a realistic chat request: asynccache vs litellm vs bare sha256."""
    from asynccache import Cache

    ops, repeats = _sizes(quick)
    ops //= 2
    call = request()
    ours = Cache()
    litellm_cache = await _try_peer("litellm Cache", _litellm_cache)

    async def ours_key() -> None:
        for _ in range(ops):
            ours.get_cache_key(**call)

    async def floor_key() -> None:
        for _ in range(ops):
            hashlib.sha256(orjson.dumps(call, option=orjson.OPT_SORT_KEYS)).hexdigest()

    contenders: list[tuple[str, Contender, bool, dict]] = [
        ("asynccache get_cache_key", ours_key, True, {}),
        ("sha256(orjson sorted) (limit)", floor_key, False, {"role": "limit"}),
    ]
    if litellm_cache is not None:
        async def litellm_key() -> None:
            for _ in range(ops):
                litellm_cache.get_cache_key(**call)

        contenders.append(("litellm Cache.get_cache_key", litellm_key, False, {}))
    results = await _measure_all("key building", contenders, ops, repeats)
    await ours.aclose()
    return results


# -- sync shim overhead ---------------------------------------------------------------


async def run_sync_shim(quick: bool) -> list[Result]:
    """Sync ``get_cache`` (through the bridge) vs ``await async_get_cache`` vs litellm sync.

    Sync callers run in a worker thread, as a script or a web worker thread would.
    """
    from asynccache import Cache

    ops, repeats = _sizes(quick)
    ops //= 2
    keys = sha_keys(ops, "shim")
    value = completion()
    ours = Cache(ttl=TTL)
    await ours.async_set_cache_pipeline({key: value for key in keys}, ttl=TTL)
    litellm_memory = await _try_peer("litellm InMemoryCache", _litellm_memory)

    def sync_loop() -> None:
        for key in keys:
            ours.get_cache(key)

    async def shim() -> None:
        await asyncio.to_thread(sync_loop)

    async def awaited() -> None:
        for key in keys:
            await ours.async_get_cache(key)

    if ours.get_cache(keys[0]) != value:
        raise AssertionError("sync shim did not return the stored value")
    contenders: list[tuple[str, Contender, bool, dict]] = [
        # No loop-lag probe on this row: its ticker would wake the harness's loop thread
        # every millisecond to contend for the GIL with the worker thread, a cost a script
        # calling get_cache (no loop running anywhere) never pays.
        ("asynccache get_cache (sync shim)", shim, False, {}),
        ("asynccache await async_get_cache", awaited, True, {"role": "limit"}),
    ]
    if litellm_memory is not None:
        for key in keys:
            litellm_memory.set_cache(key, value, ttl=TTL)

        def litellm_loop() -> None:
            for key in keys:
                litellm_memory.get_cache(key)

        async def litellm_sync() -> None:
            await asyncio.to_thread(litellm_loop)

        contenders.append(("litellm InMemoryCache.get_cache (sync)", litellm_sync, False, {}))
    results = await _measure_all("sync get 2KB (hit)", contenders, ops, repeats)
    await ours.aclose()
    return results


# -- facade hit -----------------------------------------------------------------------


async def run_facade(quick: bool) -> list[Result]:
    """A stored request looked up by its call arguments (key building + get + decode)."""
    from asynccache import Cache

    ops, repeats = _sizes(quick)
    ops //= 2
    distinct = 100
    calls = [request(i) for i in range(distinct)]
    answers = [completion(i) for i in range(distinct)]
    ours = Cache(ttl=TTL)
    for call, answer in zip(calls, answers, strict=True):
        await ours.async_store(call, answer)
    floor: dict[str, bytes] = {
        hashlib.sha256(orjson.dumps(c, option=orjson.OPT_SORT_KEYS)).hexdigest():
            orjson.dumps(a) for c, a in zip(calls, answers, strict=True)
    }
    litellm_cache = await _try_peer("litellm Cache", _litellm_cache)

    async def ours_lookup() -> None:
        for i in range(ops):
            await ours.async_lookup(calls[i % distinct])

    async def floor_lookup() -> None:
        for i in range(ops):
            key = hashlib.sha256(orjson.dumps(calls[i % distinct],
                                              option=orjson.OPT_SORT_KEYS)).hexdigest()
            orjson.loads(floor[key])

    hit = await ours.async_lookup(calls[3])
    if hit is None or hit.value != answers[3]:
        raise AssertionError("asynccache async_lookup missed a stored request")
    contenders: list[tuple[str, Contender, bool, dict]] = [
        ("asynccache Cache.async_lookup", ours_lookup, True, {}),
        ("dict + sha256 + orjson (limit)", floor_lookup, False, {"role": "limit"}),
    ]
    if litellm_cache is not None:
        for call, answer in zip(calls, answers, strict=True):
            await litellm_cache.async_add_cache(answer, **call)
        found = await litellm_cache.async_get_cache(**calls[3])
        if found is None:
            _note("litellm Cache: skipped, its async_get_cache missed a stored request")
        else:
            async def litellm_lookup() -> None:
                for i in range(ops):
                    await litellm_cache.async_get_cache(**calls[i % distinct])

            contenders.append(("litellm Cache.async_get_cache", litellm_lookup, False, {}))
    results = await _measure_all("facade hit (lookup by request)", contenders, ops, repeats)
    await ours.aclose()
    return results


async def run_core(quick: bool) -> list[Result]:
    """Key building and facade hit (the sync shim runs in the bridge group)."""
    return [*await run_keys(quick), *await run_facade(quick)]


async def run(quick: bool) -> list[Result]:
    """Every scenario of this module."""
    notes.clear()
    return [*await run_memory(quick), *await run_core(quick)]


if __name__ == "__main__":
    for result in asyncio.run(run(quick="--quick" in sys.argv)):
        print(f"{result.scenario:34s} {result.library:42s} {result.ops_per_s:12,.0f} ops/s")
    for line in notes:
        print("note:", line)
