"""Object-store benchmark: batch get/set on S3 (moto), GCS (fake-gcs-server), Azure (Azurite).

Scenarios: a batch set (``async_set_cache_pipeline`` with a TTL) and a batch get
(``async_batch_get_cache``) of 100 and 1,000 ~2 KB chat completions, with asynccache's
``max_concurrency`` at 1, 16 and 64, for each store. litellm's ``S3Cache`` (sync boto3 in
the default thread pool) runs side by side on the same moto server, called as its users
call it: ``async_set_cache_pipeline`` for the batch set and ``asyncio.gather`` of
``async_get_cache`` for the batch get. Every contender has its own bucket.

The emulators run locally, so absolute figures measure client overhead plus emulator
speed; the ratios on the same server are the point.

    python -m benchmarks.bench_blob --quick
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks._measure import Result, measure, ratio

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

TTL = 3600
#: Added to every S3 response in the "s3+latency" scenarios: AWS documents small-object
#: latencies of roughly 100-200 ms; a local emulator answers in about 1 ms.
LATENCY = 0.1
LATENCY_STORE = f"s3+{int(LATENCY * 1000)}ms"
#: (scenario, asynccache label, baseline label, target ratio) from the issue.
TARGETS = [
    (f"{store} batch {op} {n}", "asynccache c=64", "litellm S3Cache", 5.0)
    for store in ("s3", LATENCY_STORE) for n in (100, 1000) for op in ("set", "get")
]
notes: list[str] = []


def completion(i: int) -> dict[str, Any]:
    """A ~2 KB chat completion with non-ASCII text."""
    text = f"Réponse n°{i} — voilà, 你好, ✓ " * 60
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
        "created": 1_700_000_000, "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text[:1900]},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 25, "completion_tokens": 412, "total_tokens": 437},
    }


def sha_key(tag: str, i: int) -> str:
    return hashlib.sha256(f"{tag}:{i}".encode()).hexdigest()


BatchOps = tuple[Callable[[list[tuple[str, Any]]], Awaitable[Any]],
                 Callable[[list[str]], Awaitable[list[Any]]]]


async def _bench_pair(results: list[Result], store: str, label: str, ops: BatchOps,
                      sizes: list[int], repeats: int) -> None:
    set_batch, get_batch = ops
    tag = uuid.uuid4().hex
    for n in sizes:
        items = [(sha_key(tag, i), completion(i)) for i in range(n)]
        keys = [key for key, _ in items]

        async def do_set(items: list[tuple[str, Any]] = items) -> None:
            await set_batch(items)

        async def do_get(keys: list[str] = keys, n: int = n) -> None:
            got = await get_batch(keys)
            if sum(value is not None for value in got) != n:
                raise RuntimeError(f"{label} on {store}: batch get missed entries")

        results.append(await measure(f"{store} batch set {n}", label, do_set, n,
                                     repeats=repeats, warmup=1))
        results.append(await measure(f"{store} batch get {n}", label, do_get, n,
                                     repeats=repeats, warmup=1))


def _asynccache_ops(cache: Any) -> BatchOps:
    async def set_batch(items: list[tuple[str, Any]]) -> Any:
        flags = await cache.async_set_cache_pipeline(items, ttl=TTL)
        if not all(flags):
            raise RuntimeError(f"asynccache batch set failed: {cache.stats()}")

    async def get_batch(keys: list[str]) -> list[Any]:
        result: list[Any] = await cache.async_batch_get_cache(keys)
        return result

    return set_batch, get_batch


def _litellm_ops(cache: Any) -> BatchOps:
    async def set_batch(items: list[tuple[str, Any]]) -> Any:
        await cache.async_set_cache_pipeline(items, ttl=TTL)

    async def get_batch(keys: list[str]) -> list[Any]:
        return list(await asyncio.gather(*(cache.async_get_cache(key) for key in keys)))

    return set_batch, get_batch


async def run(quick: bool = False) -> list[Result]:
    """Start the three emulators, run every contender, stop the emulators."""
    from asynccache.backends.azure_blob import AzureBlobCache
    from asynccache.backends.gcs import GCSCache
    from asynccache.backends.s3 import S3Cache
    from tests.servers import blob_servers
    from tests.servers.processes import ManagedProcess, ServiceUnavailable

    logging.getLogger("LiteLLM").setLevel(logging.CRITICAL)
    sizes = [100] if quick else [100, 1000]
    concurrencies = [1, 64] if quick else [1, 16, 64]
    repeats = 2 if quick else 3
    results: list[Result] = []
    servers: list[ManagedProcess] = []

    def start(name: str, starter: Callable[[], ManagedProcess]) -> ManagedProcess | None:
        try:
            server = starter()
        except ServiceUnavailable as exc:
            notes.append(f"{name} skipped: {exc}")
            return None
        servers.append(server)
        return server

    try:
        moto = start("s3", blob_servers.start_moto)
        gcs = start("gcs", blob_servers.start_fake_gcs)
        azurite = start("azure_blob", blob_servers.start_azurite)

        def s3_settings() -> dict[str, Any]:
            assert moto is not None
            bucket = f"bench-{uuid.uuid4().hex[:16]}"
            blob_servers.create_s3_bucket(moto, bucket)
            return blob_servers.moto_settings(moto, bucket)

        def gcs_settings() -> dict[str, Any]:
            assert gcs is not None
            bucket = f"bench-{uuid.uuid4().hex[:16]}"
            blob_servers.create_gcs_bucket(gcs, bucket)
            return blob_servers.gcs_settings(gcs, bucket)

        def azure_settings() -> dict[str, Any]:
            assert azurite is not None
            return blob_servers.azurite_settings(azurite, f"bench-{uuid.uuid4().hex[:16]}")

        stores: list[tuple[str, Any, Callable[[], dict[str, Any]]]] = []
        if moto is not None:
            stores.append(("s3", S3Cache, s3_settings))
        if gcs is not None:
            stores.append(("gcs", GCSCache, gcs_settings))
        if azurite is not None:
            stores.append(("azure_blob", AzureBlobCache, azure_settings))

        for store, cache_class, settings in stores:
            for concurrency in concurrencies:
                cache = cache_class(**settings(), max_concurrency=concurrency, timeout=None)
                try:
                    await _bench_pair(results, store, f"asynccache c={concurrency}",
                                      _asynccache_ops(cache), sizes, repeats)
                finally:
                    await cache.aclose()

        if moto is not None:
            try:
                from litellm.caching.s3_cache import S3Cache as LiteLLMS3Cache
            except ImportError as exc:
                LiteLLMS3Cache = None
                notes.append(f"litellm S3Cache skipped: {exc}")
            if LiteLLMS3Cache is not None:
                theirs = LiteLLMS3Cache(**s3_settings())
                await _bench_pair(results, "s3", "litellm S3Cache", _litellm_ops(theirs),
                                  sizes, repeats)
                with contextlib.suppress(Exception):
                    theirs.s3_client.close()
            proxy = start("latency proxy", lambda: blob_servers.start_latency_proxy(
                moto.port, LATENCY))  # type: ignore[union-attr]
            if proxy is not None:
                def slow_settings() -> dict[str, Any]:
                    settings = s3_settings()
                    return {**settings, "s3_endpoint_url": f"http://127.0.0.1:{proxy.port}"}

                # At 100 ms a call, one-at-a-time batches of 1,000 take minutes: c=1 runs
                # the small batch only.
                for concurrency in [c for c in concurrencies if c > 1 or not quick]:
                    cache = S3Cache(**slow_settings(), max_concurrency=concurrency,
                                    timeout=None)
                    try:
                        await _bench_pair(results, LATENCY_STORE, f"asynccache c={concurrency}",
                                          _asynccache_ops(cache),
                                          sizes if concurrency > 1 else [100], repeats)
                    finally:
                        await cache.aclose()
                if LiteLLMS3Cache is not None:
                    theirs = LiteLLMS3Cache(**slow_settings())
                    await _bench_pair(results, LATENCY_STORE, "litellm S3Cache",
                                      _litellm_ops(theirs), sizes, repeats)
                    with contextlib.suppress(Exception):
                        theirs.s3_client.close()
    finally:
        for server in servers:
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)
    _add_ratios(results)
    return results


def _add_ratios(results: list[Result]) -> None:
    """Record, on each asynccache S3 result, how many times faster it is than litellm."""
    baseline = {r.scenario: r for r in results if r.library == "litellm S3Cache"}
    for result in results:
        base = baseline.get(result.scenario)
        if base is not None and result.library.startswith("asynccache"):
            result.extra["x_litellm"] = round(ratio(result, base), 2)


def _print(results: list[Result]) -> None:
    print(f"{'scenario':28} {'library':18} {'ops/s':>10} {'median ms':>10} {'x litellm':>10}")
    for r in results:
        x = r.extra.get("x_litellm")
        print(f"{r.scenario:28} {r.library:18} {r.ops_per_s:10.0f} {r.median_s * 1000:10.1f} "
              f"{'' if x is None else f'{x:.1f}x':>10}")
    by_key = {(r.scenario, r.library): r for r in results}
    for scenario, ours, theirs, target in TARGETS:
        a, b = by_key.get((scenario, ours)), by_key.get((scenario, theirs))
        if a is not None and b is not None:
            got = ratio(a, b)
            print(f"target {scenario}: {got:.1f}x (>= {target}x) "
                  f"{'met' if got >= target else 'MISSED'}")
    for note in notes:
        print("note:", note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and concurrencies")
    args = parser.parse_args()
    _print(asyncio.run(run(args.quick)))


if __name__ == "__main__":
    main()
