"""Memcached benchmark: asynccache side by side with the raw emcache client and other caches.

The scenarios are those of the Redis benchmark (single get/set, 64 concurrent tasks,
a batch of 1,000 sets, a batch get of 1,000), on one memcached node started here
(``memcached -m 64``, 1 MB item limit), contenders interleaved run by run. Values are
~2 KB chat completions under SHA-256 keys, TTL 3600 s.

* ``emcache``: the raw client with its default settings, storing ``orjson.dumps`` bytes;
  its reads return bytes undecoded. Batch get is ``get_many``; it has no pipelined
  set, so a batch set is ``set`` calls 32 at a time (1,000 at once overrun its default
  pool of 2 connections and 1 s timeout on a loaded machine).
* ``emcache+decode``: the same, plus ``orjson.loads`` of what it read (the fair
  baseline for a cache that returns values).
* ``langchain MemcachedCache``: LangChain's cache over pymemcache (synchronous; its
  async methods run in a thread), storing one ``Generation`` per entry. It gets a
  ``PooledClient``: a plain ``Client`` is not thread-safe, and under concurrent async
  calls LangChain's error path then fails with ``NameError: pymemcache``.
* ``aiocache``: aiocache's ``MemcachedCache`` (aiomcache) when importable.

Targets from the issue: 64-task get at least 3x raw single gets (coalescing) and a batch
get of 1,000 at least 0.9x raw ``get_many`` plus decode.

    python -m benchmarks.bench_memcached --quick
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

import orjson

from benchmarks._measure import Result, ratio, target_lines
from benchmarks.bench_redis import (
    TTL,
    AiocacheContender,
    AsyncCacheContender,
    Contender,
    _scenarios,
)

#: (scenario, asynccache's label, baseline label, baseline scenario, ratio): 64 tasks'
#: gets against the raw client's one-by-one gets (what coalescing buys), and a batch get
#: against the raw multi-get plus decoding.
TARGETS = [
    ("get x64 tasks", "asynccache", "emcache", "single get", 3.0),
    ("mget 1000", "asynccache", "emcache+decode", "mget 1000", 0.9),
]

notes: list[str] = []


class AsyncCacheMemcached(AsyncCacheContender):
    """The same operations as on Redis, on ``Cache(type="memcached")``."""

    def __init__(self, servers: list[str]) -> None:
        from asynccache import Cache

        Contender.__init__(self, "asynccache", "asynccache")
        self.cache = Cache(type="memcached", servers=servers, ttl=TTL, namespace="bench")


class RawEmcache(Contender):
    """emcache as its documentation shows it, default settings."""

    def __init__(self, client: Any, decode: bool) -> None:
        super().__init__("emcache+decode" if decode else "emcache", "raw")
        self.client = client
        self.decode = decode

    @classmethod
    async def create(cls, host: str, port: int, decode: bool) -> RawEmcache:
        import emcache

        return cls(await emcache.create_client([emcache.MemcachedHostAddress(host, port)]),
                   decode)

    def _load(self, data: bytes | None) -> Any:
        return orjson.loads(data) if self.decode and data is not None else data

    async def get(self, key: str) -> Any:
        item = await self.client.get(key.encode())
        return None if item is None else self._load(item.value)

    async def set(self, key: str, value: Any) -> Any:
        return await self.client.set(key.encode(), orjson.dumps(value), exptime=TTL)

    async def set_many(self, items: list[tuple[str, Any]]) -> Any:
        for start in range(0, len(items), 32):
            await asyncio.gather(*(self.set(key, value) for key, value in items[start:start + 32]))

    async def get_many(self, keys: list[str]) -> list[Any]:
        found = await self.client.get_many([key.encode() for key in keys])
        return [None if (item := found.get(key.encode())) is None else self._load(item.value)
                for key in keys]

    async def aclose(self) -> None:
        await self.client.close()


class LangChainMemcached(Contender):
    """LangChain's MemcachedCache on a pymemcache client (its async API runs in a thread)."""

    def __init__(self, host: str, port: int) -> None:
        import warnings

        from langchain_core.outputs import Generation
        from pymemcache.client.base import PooledClient

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from langchain_community.cache import MemcachedCache

        super().__init__("langchain MemcachedCache", "langchain")
        self.client = PooledClient((host, port), max_pool_size=64)
        self.cache = MemcachedCache(self.client)
        self._generation = Generation

    def _generations(self, value: Any) -> list[Any]:
        return [self._generation(text=orjson.dumps(value).decode())]

    async def get(self, key: str) -> Any:
        return await self.cache.alookup(key, "llm")

    async def set(self, key: str, value: Any) -> Any:
        return await self.cache.aupdate(key, "llm", self._generations(value))

    async def set_many(self, items: list[tuple[str, Any]]) -> Any:
        for key, value in items:
            await self.set(key, value)

    async def get_many(self, keys: list[str]) -> list[Any]:
        return [await self.get(key) for key in keys]

    async def aclose(self) -> None:
        self.client.close()


class AiocacheMemcached(AiocacheContender):
    """aiocache's operations as on Redis, on its ``MemcachedCache`` (aiomcache)."""

    def __init__(self, host: str, port: int) -> None:
        from aiocache import MemcachedCache

        Contender.__init__(self, "aiocache", "aiocache")
        self.cache = MemcachedCache(endpoint=host, port=port, namespace="aio")


async def _contenders(host: str, port: int) -> list[Contender]:
    made: list[Contender] = [AsyncCacheMemcached([f"{host}:{port}"]),
                             await RawEmcache.create(host, port, decode=False),
                             await RawEmcache.create(host, port, decode=True)]
    for make in (LangChainMemcached, AiocacheMemcached):
        try:
            made.append(make(host, port))
        except Exception as exc:  # not installed or incompatible: skipped, and said so
            notes.append(f"skipped {make.__name__}: {type(exc).__name__}: {exc}")
    return made


async def run(quick: bool) -> list[Result]:
    """Every scenario against one memcached node started here (stopped by process)."""
    from tests.servers.memcached import start_memcached_nodes

    nodes = start_memcached_nodes(1)
    logging.getLogger("emcache").setLevel(logging.ERROR)
    try:
        host, port = "127.0.0.1", nodes.nodes[0].port
        contenders = await _contenders(host, port)
        try:
            results = await _scenarios(contenders, quick)
        finally:
            for contender in contenders:
                await contender.aclose()
    finally:
        nodes.stop()
    for result in results:
        if result.library.startswith("emcache"):
            result.extra["role"] = "limit"  # the raw client: what the cache adds work to
    return results


def table(results: list[Result]) -> str:
    """The results with ratios against raw emcache, and whether each target is met."""
    baseline = {r.scenario: r for r in results if r.library == "emcache"}
    decoded = {r.scenario: r for r in results if r.library == "emcache+decode"}
    lines = [f"{'scenario':<20} {'library':<26} {'ops/s':>11} {'median ms':>10} "
             f"{'vs raw':>7} {'vs raw+decode':>13}"]
    for r in results:
        base, dec = baseline.get(r.scenario), decoded.get(r.scenario)
        rel = f"{ratio(r, base):.2f}x" if base is not None else "-"
        rel_dec = f"{ratio(r, dec):.2f}x" if dec is not None else "-"
        lines.append(f"{r.scenario:<20} {r.library:<26} {r.ops_per_s:>11,.0f} "
                     f"{r.median_s * 1000:>10.2f} {rel:>7} {rel_dec:>13}")
    lines.append("")
    lines.extend(target_lines(results, TARGETS))
    lines.extend(notes)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args(argv)
    print(table(asyncio.run(run(args.quick))))


if __name__ == "__main__":
    main()
