"""Redis benchmark: asynccache side by side with raw redis.asyncio and other cache libraries.

Scenarios (each contender reads back only what it wrote itself):

* single get / single set, one awaited call at a time;
* 64 concurrent tasks each doing one get (asynccache merges them into one ``MGET``;
  raw redis.asyncio sends 64 ``GET`` on pooled connections) and one set;
* a pipeline of 1,000 sets with a TTL; an ``MGET`` of 1,000 keys;
* write-behind sets as the caller sees them (``Cache(type="redis", redis_flush_size=500,
  flush_interval=0.05)``), against awaited one-by-one ``SET``.

Values are ~2 KB chat completions with non-ASCII text under SHA-256 keys, TTL 3600 s.
Raw redis.asyncio stores ``orjson.dumps`` bytes and its reads return bytes undecoded (the
strict baseline of the targets); "raw+decode" also runs ``orjson.loads`` on what it read.
litellm's ``RedisCache``, aiocache and cashews run when importable.

    python -m benchmarks.bench_redis --quick          # starts its own valkey-server
    python -m benchmarks.bench_redis --port 6379      # an existing server on 127.0.0.1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import logging
import shutil
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from benchmarks._measure import Result, measure, ratio, target_lines

TTL = 3600
#: Targets from the issue: (scenario, asynccache's library label, baseline label, ratio).
TARGETS = [
    ("get x64 tasks", "asynccache", "redis.asyncio", 4.0),
    ("pipeline 1000 sets", "asynccache", "redis.asyncio", 1.0),
    ("mget 1000", "asynccache", "redis.asyncio", 0.9),
]


def completion(i: int) -> dict[str, Any]:
    """A ~2 KB chat completion with non-ASCII text."""
    text = f"Réponse n°{i} — voilà, 你好, ✓ " * 60
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": 1_700_000_000,
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text[:1900]},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 25, "completion_tokens": 412, "total_tokens": 437},
    }


def sha_key(tag: str, i: int) -> str:
    return hashlib.sha256(f"{tag}:{i}".encode()).hexdigest()


class Contender:
    """One library's get/set/batch operations, with its own key space."""

    def __init__(self, label: str, tag: str) -> None:
        self.label, self.tag = label, tag

    def key(self, i: int) -> str:
        return sha_key(self.tag, i)

    async def get(self, key: str) -> Any:
        raise NotImplementedError

    async def set(self, key: str, value: Any) -> Any:
        raise NotImplementedError

    async def set_many(self, items: list[tuple[str, Any]]) -> Any:
        raise NotImplementedError

    async def get_many(self, keys: list[str]) -> list[Any]:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class AsyncCacheContender(Contender):
    def __init__(self, port: int, label: str = "asynccache", **settings: Any) -> None:
        from asynccache import Cache

        super().__init__(label, label)
        self.cache = Cache(type="redis", host="127.0.0.1", port=port, ttl=TTL,
                           namespace="bench", **settings)

    async def get(self, key: str) -> Any:
        return await self.cache.async_get_cache(key)

    async def set(self, key: str, value: Any) -> Any:
        return await self.cache.async_set_cache(key, value)

    async def set_many(self, items: list[tuple[str, Any]]) -> Any:
        return await self.cache.async_set_cache_pipeline(items)

    async def get_many(self, keys: list[str]) -> list[Any]:
        return await self.cache.async_batch_get_cache(keys)

    async def aclose(self) -> None:
        await self.cache.aclose()


class RawContender(Contender):
    """redis.asyncio + hiredis as a careful user would write it."""

    def __init__(self, port: int, decode: bool = False) -> None:
        import redis.asyncio as aioredis

        label = "raw+decode" if decode else "redis.asyncio"
        super().__init__(label, "raw")
        self.decode = decode
        self.client = aioredis.Redis(host="127.0.0.1", port=port, max_connections=100)

    def _load(self, data: bytes | None) -> Any:
        return orjson.loads(data) if self.decode and data is not None else data

    async def get(self, key: str) -> Any:
        return self._load(await self.client.get(key))

    async def set(self, key: str, value: Any) -> Any:
        return await self.client.set(key, orjson.dumps(value), ex=TTL)

    async def set_many(self, items: list[tuple[str, Any]]) -> Any:
        pipe = self.client.pipeline(transaction=False)
        for key, value in items:
            pipe.set(key, orjson.dumps(value), ex=TTL)
        return await pipe.execute()

    async def get_many(self, keys: list[str]) -> list[Any]:
        return [self._load(data) for data in await self.client.mget(keys)]

    async def aclose(self) -> None:
        await self.client.aclose()


class LiteLLMContender(Contender):
    def __init__(self, port: int) -> None:
        from litellm.caching.redis_cache import RedisCache

        super().__init__("litellm", "litellm")
        self.cache = RedisCache(host="127.0.0.1", port=port)

    async def get(self, key: str) -> Any:
        return await self.cache.async_get_cache(key)

    async def set(self, key: str, value: Any) -> Any:
        return await self.cache.async_set_cache(key, value, ttl=TTL)

    async def set_many(self, items: list[tuple[str, Any]]) -> Any:
        return await self.cache.async_set_cache_pipeline(items, ttl=TTL)

    async def get_many(self, keys: list[str]) -> list[Any]:
        found = await self.cache.async_batch_get_cache(keys)
        return [found.get(key) for key in keys] if isinstance(found, dict) else list(found)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.cache.disconnect()


class AiocacheContender(Contender):
    def __init__(self, port: int) -> None:
        from aiocache import RedisCache

        super().__init__("aiocache", "aiocache")
        try:
            self.cache = RedisCache(endpoint="127.0.0.1", port=port, namespace="aio")
        except TypeError:  # aiocache >= 1.0 takes a client
            import redis.asyncio as aioredis

            self.cache = RedisCache(client=aioredis.Redis(host="127.0.0.1", port=port),
                                    namespace="aio")

    async def get(self, key: str) -> Any:
        return await self.cache.get(key)

    async def set(self, key: str, value: Any) -> Any:
        return await self.cache.set(key, value, ttl=TTL)

    async def set_many(self, items: list[tuple[str, Any]]) -> Any:
        return await self.cache.multi_set(items, ttl=TTL)

    async def get_many(self, keys: list[str]) -> list[Any]:
        return list(await self.cache.multi_get(keys))

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.cache.close()


class CashewsContender(Contender):
    def __init__(self, port: int) -> None:
        from cashews import Cache

        super().__init__("cashews", "cashews")
        self.cache = Cache()
        self.cache.setup(f"redis://127.0.0.1:{port}/0", client_side=False)

    async def get(self, key: str) -> Any:
        return await self.cache.get(key)

    async def set(self, key: str, value: Any) -> Any:
        return await self.cache.set(key, value, expire=TTL)

    async def set_many(self, items: list[tuple[str, Any]]) -> Any:
        return await self.cache.set_many(dict(items), expire=TTL)

    async def get_many(self, keys: list[str]) -> list[Any]:
        return list(await self.cache.get_many(*keys))

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.cache.close()


def _contenders(port: int) -> list[Contender]:
    made: list[Contender] = [AsyncCacheContender(port), RawContender(port),
                             RawContender(port, decode=True)]
    for make in (LiteLLMContender, AiocacheContender, CashewsContender):
        try:
            made.append(make(port))
        except Exception as exc:  # not installed or incompatible: skipped, and said so
            print(f"  (skipping {make.__name__.removesuffix('Contender')}: "
                  f"{type(exc).__name__}: {exc})")
    return made


Operation = tuple[str, Callable[[], Awaitable[Any]], int]


def _operations(contender: Contender, quick: bool) -> list[Operation]:
    """The scenarios for one contender: (name, run, operations per run)."""
    singles = 100 if quick else 500
    rounds = 10 if quick else 40
    values = [completion(i) for i in range(1000)]
    keys = [contender.key(i) for i in range(1000)]
    items = list(zip(keys, values, strict=True))

    async def single_get() -> None:
        for i in range(singles):
            await contender.get(keys[i])

    async def single_set() -> None:
        for i in range(singles):
            await contender.set(keys[i], values[i])

    async def get_x64() -> None:
        for r in range(rounds):
            base = (r * 64) % 900
            await asyncio.gather(*(contender.get(keys[base + i]) for i in range(64)))

    async def set_x64() -> None:
        for r in range(rounds):
            base = (r * 64) % 900
            await asyncio.gather(*(contender.set(keys[base + i], values[base + i])
                                   for i in range(64)))

    async def pipeline() -> None:
        await contender.set_many(items)

    async def mget() -> None:
        await contender.get_many(keys)

    return [
        ("single get", single_get, singles),
        ("single set", single_set, singles),
        ("get x64 tasks", get_x64, 64 * rounds),
        ("set x64 tasks", set_x64, 64 * rounds),
        ("pipeline 1000 sets", pipeline, 1000),
        ("mget 1000", mget, 1000),
    ]


async def _scenarios(contenders: list[Contender], quick: bool) -> list[Result]:
    """Every scenario, contenders interleaved run by run.

    On a shared machine the load changes from second to second; running the contenders
    round-robin within each scenario exposes them all to the same conditions, so the
    ratios are steadier than if each ran its repeats back to back.
    """
    repeats = 7 if quick else 21
    for contender in contenders:
        await contender.set_many([(contender.key(i), completion(i)) for i in range(1000)])
    plans = {c.label: _operations(c, quick) for c in contenders}
    # The peers' imports (litellm above all) leave a large heap; without freezing it, every
    # full garbage collection walks it, which charges whoever allocates most (the
    # contenders that decode values) for objects that are not theirs.
    gc.collect()
    gc.freeze()
    results: list[Result] = []
    for index, (scenario, _, ops) in enumerate(plans[contenders[0].label]):
        durations: dict[str, list[float]] = {c.label: [] for c in contenders}
        for contender in contenders:  # warm-up
            await plans[contender.label][index][1]()
        for _ in range(repeats):
            for contender in contenders:
                run_once = plans[contender.label][index][1]
                started = time.perf_counter()
                await run_once()
                durations[contender.label].append(time.perf_counter() - started)
        for contender in contenders:
            taken = durations[contender.label]
            results.append(Result(scenario, contender.label, ops, statistics.median(taken),
                                  min(taken), max(taken)))
    return results


async def _write_behind(port: int, quick: bool) -> list[Result]:
    """Sets as the caller sees them: queued (write-behind) vs awaited one by one."""
    count = 1000 if quick else 5000
    values = [completion(i) for i in range(count)]
    keys = [sha_key("wb", i) for i in range(count)]
    results: list[Result] = []
    queued = AsyncCacheContender(port, "asynccache write-behind",
                                 redis_flush_size=500, flush_interval=0.05,
                                 max_queue_size=max(10_000, count))
    raw = RawContender(port)
    try:
        drains: list[float] = []

        async def behind() -> None:
            for key, value in zip(keys, values, strict=True):
                await queued.set(key, value)

        async def behind_then_drain() -> None:
            await behind()
            loop = asyncio.get_running_loop()
            started = loop.time()
            await queued.cache.async_flush()
            drains.append(loop.time() - started)

        # Time only the calls; drain after each run outside the timing.
        for _ in range(2):
            await behind_then_drain()
        result = await measure("write-behind sets", queued.label, behind, count,
                               repeats=3 if quick else 7, warmup=0)
        await queued.cache.async_flush()
        result.extra["drain_s_median"] = sorted(drains)[len(drains) // 2]
        results.append(result)

        async def awaited() -> None:
            for key, value in zip(keys, values, strict=True):
                await raw.set(key, value)

        results.append(await measure("write-behind sets", raw.label, awaited, count,
                                     repeats=3 if quick else 7))
    finally:
        await queued.aclose()
        await raw.aclose()
    return results


async def run(quick: bool, port: int | None = None) -> list[Result]:
    """Run every scenario against a valkey-server (started here when ``port`` is None)."""
    server = None
    if port is None:
        from tests.servers.processes import start_valkey

        server = start_valkey(search=False, name="bench-valkey")
        port = server.port
    logging.getLogger("LiteLLM").setLevel(logging.ERROR)
    results: list[Result] = []
    try:
        contenders = _contenders(port)
        try:
            results.extend(await _scenarios(contenders, quick))
        finally:
            for contender in contenders:
                await contender.aclose()
        results.extend(await _write_behind(port, quick))
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)
    return results


def table(results: list[Result]) -> str:
    """The results as a text table with ratios against raw redis.asyncio."""
    baseline = {r.scenario: r for r in results if r.library == "redis.asyncio"}
    decoded = {r.scenario: r for r in results if r.library == "raw+decode"}
    lines = [f"{'scenario':<20} {'library':<25} {'ops/s':>11} {'median ms':>10} {'min ms':>8} "
             f"{'vs raw':>7} {'vs raw+decode':>13}"]
    for r in results:
        base, dec = baseline.get(r.scenario), decoded.get(r.scenario)
        rel = f"{ratio(r, base):.2f}x" if base is not None else "-"
        rel_dec = f"{ratio(r, dec):.2f}x" if dec is not None else "-"
        lines.append(f"{r.scenario:<20} {r.library:<25} {r.ops_per_s:>11,.0f} "
                     f"{r.median_s * 1000:>10.2f} {r.min_s * 1000:>8.2f} {rel:>7} {rel_dec:>13}")
    lines.append("")
    lines.extend(target_lines(results, TARGETS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--port", type=int, default=None, help="existing server on 127.0.0.1")
    args = parser.parse_args(argv)
    print(table(asyncio.run(run(args.quick, args.port))))


if __name__ == "__main__":
    main()
