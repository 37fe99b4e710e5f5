"""Semantic caches: lookup latency and throughput at 10k entries, and hit quality.

Run with ``python -m benchmarks.bench_semantic`` (``--quick`` for a short run). It starts
its own valkey-server with RediSearch on 127.0.0.1 and uses embedded in-memory Qdrant.

* **Lookup latency / throughput**: each store is filled with 10,000 indexed entries
  (2,000 with ``--quick``), embedded with the fast deterministic
  :class:`~asynccache.semantic.HashEmbedder` (384 dims, like the local model) so the fill
  takes seconds; lookups are full ``Cache.async_lookup`` calls (exact get, then vector
  search with the filter); "redis-semantic BATCHES" forces RediSearch's batched hybrid
  search (``hybrid_policy="BATCHES"``), which suits a filter shared by most entries, as
  here (one model and one set of parameters). Latency p50/p99 come from sequential
  lookups; throughput from 100 concurrent lookups at a time. The hash embedder costs
  microseconds, so these figures are the store's; the real model's time is reported
  separately.
* **Local embedding time**: all-MiniLM-L6-v2 int8 on onnxruntime, one text per call and
  batches of 32, in the worker thread.
* **Hit quality**: :mod:`benchmarks.semantic_quality`: precision and recall per pair kind
  on the test half of ``data/semantic_pairs.json``, with and without the semantic guard,
  through every store, at the threshold chosen on the dev half; and the guard's cost.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any

from asynccache import Cache
from asynccache.semantic import HashEmbedder, LocalEmbedder
from benchmarks import semantic_quality
from benchmarks._measure import Result, measure
from tests.servers.processes import running, start_valkey

_TOPICS = ("python", "cooking", "finance", "travel", "physics", "history", "music", "health",
           "gardening", "databases", "football", "poetry", "chemistry", "law", "marketing")


def _queries(rng: random.Random, entries: int, lookups: int) -> list[dict[str, Any]]:
    """Half reworded versions of stored prompts (semantic hits), half unseen prompts."""
    return [
        _chat(_prompt(rng.randrange(entries)) + " Please explain.") if n % 2 == 0
        else _chat(f"Unseen prompt {n} about {rng.choice(_TOPICS)} and the weather")
        for n in range(lookups)
    ]


def _chat(text: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {"model": model, "temperature": 0.2,
            "messages": [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": text}]}


def _prompt(i: int) -> str:
    rng = random.Random(i)
    words = rng.sample(_TOPICS, 3)
    return f"Question {i}: how does {words[0]} relate to {words[1]} and {words[2]}?"


def _answer(i: int) -> dict[str, Any]:
    return {"id": f"chatcmpl-{i}", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "An answer. " * 150}}]}


_FOLDERS: list[tempfile.TemporaryDirectory[str]] = []


def _local_semantic(embedding: Any, threshold: float = 0.8, cache_size: int = 0) -> Cache:
    folder = tempfile.TemporaryDirectory(prefix="asynccache-bench-semantic-")
    _FOLDERS.append(folder)
    return Cache(type="local-semantic", disk_cache_dir=folder.name, embedding=embedding,
                 similarity_threshold=threshold, embedding_cache_size=cache_size)


def _caches(redis_port: int, embedding: Any, threshold: float = 0.8) -> dict[str, Cache]:
    return {
        "local-semantic": _local_semantic(embedding, threshold),
        "redis-semantic": Cache(type="redis-semantic", host="127.0.0.1", port=redis_port,
                                embedding=embedding, similarity_threshold=threshold,
                                embedding_cache_size=0, timeout=None,
                                redis_semantic_cache_index_name=f"bench-{uuid.uuid4().hex[:8]}"),
        "qdrant-semantic": Cache(type="qdrant-semantic", qdrant_location=":memory:",
                                 embedding=embedding, similarity_threshold=threshold,
                                 embedding_cache_size=0, timeout=None,
                                 qdrant_collection_name="bench"),
    }


async def _fill(cache: Cache, entries: int) -> float:
    backend: Any = cache.backend
    started = time.perf_counter()
    for start in range(0, entries, 500):
        numbers = range(start, min(entries, start + 500))
        requests = [_chat(_prompt(i)) for i in numbers]
        items = [cache._encode(cache.get_cache_key(**r), _answer(i), None, None, cache.clock())
                 for i, r in zip(numbers, requests, strict=True)]
        await backend.index_similar_many(requests, items, prefix="")
    return time.perf_counter() - started


async def _timed_lookups(cache: Cache, queries: list[Any]) -> dict[str, Any]:
    """Each query looked up once, timed alone: p50, p99, count and hit rate."""
    latencies: list[float] = []
    hits = 0
    for query in queries:
        started = time.perf_counter()
        hit = await cache.async_lookup(query)
        latencies.append(time.perf_counter() - started)
        hits += hit is not None
    latencies.sort()
    return {
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
                        3),
        "lookups": len(queries), "hit_rate": round(hits / len(queries), 3),
    }


async def _lookup_figures(redis_port: int, quick: bool) -> list[Result]:
    entries = 2_000 if quick else 10_000
    results: list[Result] = []
    contenders = _caches(redis_port, HashEmbedder(384))
    contenders["redis-semantic BATCHES"] = Cache(
        type="redis-semantic", host="127.0.0.1", port=redis_port, embedding=HashEmbedder(384),
        embedding_cache_size=0, timeout=None, hybrid_policy="BATCHES",
        redis_semantic_cache_index_name=f"bench-{uuid.uuid4().hex[:8]}")
    for name, cache in contenders.items():
        # Embedded Qdrant searches exhaustively in Python (~0.2 s per filtered lookup at
        # 10k entries), so it gets fewer lookups to keep the run short.
        embedded = name == "qdrant-semantic"
        lookups = (40 if quick else 100) if embedded else (200 if quick else 1_000)
        try:
            fill_s = await _fill(cache, entries)
            queries = _queries(random.Random(7), entries, lookups)
            lookup_figures = await _timed_lookups(cache, queries)

            async def concurrent(cache: Cache = cache, queries: list[Any] = queries) -> None:
                for start in range(0, len(queries), 100):
                    await asyncio.gather(*(cache.async_lookup(q)
                                           for q in queries[start : start + 100]))

            result = await measure(f"semantic lookup, {entries:,} entries", name, concurrent,
                                   lookups, repeats=1 if embedded else 3,
                                   warmup=0 if embedded else 1, probe_loop=True)
            result.extra = {
                "entries": entries, "fill_s": round(fill_s, 2),
                "fill_entries_per_s": round(entries / fill_s), **lookup_figures,
                "errors": cache.stats()["errors"],
            }
            results.append(result)
        finally:
            await cache.aclose()
    return results


async def run_embedded(quick: bool) -> list[Result]:
    """local-semantic at 10,000 entries in one filter partition, embedding excluded.

    Every stored prompt shares the model, temperature and system prompt, so all 10,000
    rows fall in one exact-match partition: the search scores all of them. The query
    vectors are embedded before the timed lookups (the embedder's LRU answers), so the
    figures are the lookup itself: the exact-key read, the filter hash, the index search
    and the read of the matched entry.
    """
    entries = 10_000
    lookups = 200 if quick else 1_000
    cache = _local_semantic(HashEmbedder(384), cache_size=lookups + 16)
    try:
        fill_s = await _fill(cache, entries)
        queries = _queries(random.Random(11), entries, lookups)
        backend: Any = cache.backend
        texts = [q["messages"][-1]["content"] for q in queries]
        await backend.semantic.embedder.embed(texts)
        calls_before = backend.semantic.embedder.calls
        lookup_figures = await _timed_lookups(cache, queries)
        if backend.semantic.embedder.calls != calls_before:
            raise AssertionError("the timed lookups called the embedder")

        async def sequential() -> None:
            for query in queries:
                await cache.async_lookup(query)

        result = await measure(f"embedded semantic lookup, {entries:,} entries (one filter)",
                               "local-semantic", sequential, lookups, repeats=3,
                               probe_loop=True)
        result.extra = {
            "entries": entries, "fill_s": round(fill_s, 2), **lookup_figures,
            "errors": cache.stats()["errors"], "embedding": "excluded (LRU)",
        }
        return [result]
    finally:
        await cache.aclose()
        _cleanup()


def _cleanup() -> None:
    while _FOLDERS:
        _FOLDERS.pop().cleanup()


async def _embedding_figures(quick: bool) -> list[Result]:
    embed = LocalEmbedder()
    texts = [_prompt(i) for i in range(64 if quick else 256)]
    await embed(texts[:4])  # loads the model once, untimed
    single: list[float] = []
    for text in texts:
        started = time.perf_counter()
        await embed([text])
        single.append(time.perf_counter() - started)
    single.sort()

    async def batches() -> None:
        for start in range(0, len(texts), 32):
            await embed(texts[start : start + 32])

    result = await measure("local embedding (all-MiniLM-L6-v2 int8, batches of 32)",
                           "onnxruntime", batches, len(texts), repeats=3, probe_loop=True)
    result.extra = {"single_p50_ms": round(statistics.median(single) * 1000, 3),
                    "single_p99_ms": round(single[min(len(single) - 1, int(len(single) * 0.99))]
                                           * 1000, 3)}
    return [result]


async def _quality(redis_port: int) -> list[Result]:
    started = time.perf_counter()
    report = await semantic_quality.quality(redis_port)
    elapsed = time.perf_counter() - started
    semantic_quality.RESULTS.parent.mkdir(parents=True, exist_ok=True)
    semantic_quality.RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    results: list[Result] = []
    tested = report["pairs"]["test"]
    for name, figures in report["stores"].items():
        extra: dict[str, Any] = {"threshold": report["threshold"],
                                 "guard_mean_us": figures["semantic"]["guard_mean_us"],
                                 "guard_cold_us": report["guard_cold_us_per_check"],
                                 "lookup_p50_ms": figures["lookup_p50_ms"]}
        for mode in ("guard", "no_guard"):
            table = figures[mode]
            kinds = table["by_kind"]
            extra[mode] = {
                "precision": table["precision"], "recall": table["recall"],
                "paraphrase_recall": kinds["paraphrase"]["recall"],
                "false_hit_rate": {k: kinds[k]["false_hit_rate"] for k in kinds
                                   if kinds[k]["false_hit_rate"] is not None},
            }
        results.append(Result(f"semantic hit quality, test half ({tested} pairs)", name,
                              tested, elapsed, elapsed, elapsed, extra=extra))
    return results


async def run(quick: bool) -> list[Result]:
    """Lookup latency/throughput per store, local embedding time, hit quality."""
    server = start_valkey()
    try:
        with running(server):
            results = await _lookup_figures(server.port, quick)
            results += await run_embedded(quick)
            results += await _embedding_figures(quick)
            results += await _quality(server.port)
    finally:
        _cleanup()
    return results


def _report(results: list[Result]) -> None:
    for result in results:
        print(f"{result.library:16s} {result.scenario}")
        if "no_guard" in result.extra:
            for mode in ("guard", "no_guard"):
                row = result.extra[mode]
                print(f"    {mode:8s} precision {row['precision']:.3f}  recall {row['recall']:.3f}"
                      f"  paraphrase recall {row['paraphrase_recall']:.3f}  "
                      f"false-hit rates {row['false_hit_rate']}")
            print(f"    threshold {result.extra['threshold']} (dev), guard "
                  f"{result.extra['guard_mean_us']} us per candidate")
            continue
        lag = result.loop_lag_p99_ms
        print(f"    {result.ops_per_s:10,.0f} ops/s  loop lag p99 "
              f"{'-' if lag is None else f'{lag:.2f} ms'}  {result.extra}")


if __name__ == "__main__":
    _report(asyncio.run(run(quick="--quick" in sys.argv)))
