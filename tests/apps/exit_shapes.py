"""Ways a program ends without closing its cache (tests/test_deployment.py).

``python -X dev -W error::ResourceWarning -m tests.apps.exit_shapes SHAPE COUNT``
writes COUNT entries through a write-behind cache in the shape named, then ends; the
test counts what reached Redis and reads stderr for warnings.
"""

from __future__ import annotations

import asyncio
import os
import sys

from asynccache import Cache

URL = os.environ.get("REDIS_URL", "")
NAMESPACE = os.environ.get("APP_NAMESPACE", "exit")


def unreferenced_sync(count: int) -> None:
    def job() -> None:
        cache = Cache(type="redis", url=URL, namespace=NAMESPACE, redis_flush_size=500)
        for i in range(count):
            assert cache.set_cache(f"k{i}", i) is True

    job()


def unreferenced_async(count: int, **settings: object) -> None:
    async def main() -> None:
        cache = Cache(type="redis", url=URL, namespace=NAMESPACE, **settings)
        for i in range(count):
            assert await cache.async_set_cache(f"k{i}", i) is True

    asyncio.run(main())


def memory_write_behind(count: int) -> None:
    cache = Cache(flush_size=10)
    for i in range(count):
        assert cache.set_cache(f"k{i}", i) is True
    assert cache.get_cache("k0") == 0


def documented(count: int) -> None:
    """The usage patterns of the README and docs, each ended the documented way."""
    from asynccache.integrations.wrappers import cached

    async def fake_model(**request: object) -> dict[str, object]:
        return {"echo": request["messages"]}

    async def main() -> None:
        async with Cache(type="redis", url=URL, namespace=NAMESPACE, flush_size=100) as cache:
            for i in range(count):
                await cache.async_set_cache(f"a{i}", i)
        cache = Cache(type="redis", url=URL, namespace=NAMESPACE)
        complete = cached(fake_model, cache=cache)
        await complete(model="m", messages=[{"role": "user", "content": "hi"}])
        await complete(model="m", messages=[{"role": "user", "content": "hi"}])
        await cache.aclose()

    asyncio.run(main())
    with Cache(type="redis", url=URL, namespace=NAMESPACE) as cache:
        for i in range(count):
            cache.set_cache(f"s{i}", i)
        assert cache.get_cache("s0") == 0
    plain = Cache(type="redis", url=URL, namespace=NAMESPACE)
    assert plain.get_cache("a0") == 0
    plain.close()


SHAPES = {
    "unreferenced-sync": unreferenced_sync,
    "unreferenced-async": lambda n: unreferenced_async(n, flush_size=500),
    "unreferenced-async-long-interval": lambda n: unreferenced_async(
        n, flush_size=500, flush_interval=5),
    "memory-write-behind": memory_write_behind,
    "documented": documented,
}

if __name__ == "__main__":
    SHAPES[sys.argv[1]](int(sys.argv[2]))
