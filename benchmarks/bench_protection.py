"""Compression and encryption at rest: bytes saved and microseconds added per call.

Three realistic values (a chat completion with 2 KB of real English prose, a 40 KB tool
output of search hits, a 1,536-float embedding) are set and got on the in-memory cache
with each option off and on, so the figures show the codec's cost alone (no network).
Stored size is the exact encoded entry.
"""

from __future__ import annotations

import random
from typing import Any

from benchmarks._measure import Result, measure
from benchmarks.bench_core import completion

_WORDS = ("the", "function", "returned", "error", "value", "user", "request", "model",
          "token", "cache", "response", "latency", "retry", "timeout", "index", "vector",
          "search", "result", "document", "page", "score", "answer", "question", "file")


def prose_completion(size: int = 2000) -> dict[str, Any]:
    """A chat completion whose answer is real English prose (this project's own docs), so
    the compression figures are not flattered by repeated text."""
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"
    text = " ".join(path.read_text() for path in sorted(docs.rglob("*.md")))
    body = completion()
    body["choices"][0]["message"]["content"] = text[5000:5000 + size]
    return body


def tool_output(size: int = 40_000, seed: int = 7) -> dict[str, Any]:
    """A long tool result: search hits with titles, URLs and snippets, as agents get."""
    rng = random.Random(seed)
    hits, total = [], 0
    while total < size:
        snippet = " ".join(rng.choice(_WORDS) for _ in range(40))
        hit = {"title": " ".join(rng.choice(_WORDS) for _ in range(6)).title(),
               "url": f"https://docs.example.org/{rng.choice(_WORDS)}/{rng.randrange(10**6)}",
               "snippet": snippet, "score": round(rng.random(), 4)}
        hits.append(hit)
        total += len(snippet) + 80
    return {"tool": "web_search", "results": hits}


def embedding(dimensions: int = 1536, seed: int = 11) -> dict[str, Any]:
    rng = random.Random(seed)
    return {"object": "list", "model": "text-embedding-3-small",
            "data": [{"index": 0, "embedding": [rng.gauss(0, 0.05) for _ in range(dimensions)]}]}


OPTIONS: dict[str, dict[str, Any]] = {
    "plain (default)": {},
    "compression=zlib": {"compression": "zlib"},
    "compression=zstd": {"compression": "zstd"},
    "encryption (AES-256-GCM)": {"encryption_keys": None},
    "encryption + zstd": {"encryption_keys": None, "compression": "zstd"},
}


async def run(quick: bool) -> list[Result]:
    """Set and get each value with each option; extra holds stored bytes and ratio."""
    from asynccache import MemoryCache
    from asynccache.protection import generate_key

    key = generate_key()
    values = {"chat completion 2 KB": prose_completion(), "tool output 40 KB": tool_output(),
              "embedding 1536 floats": embedding()}
    ops = 300 if quick else 2000
    repeats = 3 if quick else 5
    results: list[Result] = []
    for value_name, value in values.items():
        plain_size = None
        for option_name, settings in OPTIONS.items():
            settings = {k: ([key] if k == "encryption_keys" else v) for k, v in settings.items()}
            cache = MemoryCache(**settings)
            names = [f"k{i}" for i in range(ops)]

            async def set_all(cache: Any = cache, names: list[str] = names,
                              value: Any = value) -> None:
                for name in names:
                    await cache.async_set_cache(name, value)

            async def get_all(cache: Any = cache, names: list[str] = names) -> None:
                for name in names:
                    await cache.async_get_cache(name)

            set_result = await measure(f"protection set: {value_name}", f"asynccache {option_name}",
                                       set_all, ops, repeats=repeats)
            get_result = await measure(f"protection get: {value_name}", f"asynccache {option_name}",
                                       get_all, ops, repeats=repeats)
            stored = cache.backend.size_bytes // len(cache.backend)
            plain_size = plain_size or stored
            for result in (set_result, get_result):
                result.extra.update(stored_bytes=stored,
                                    size_vs_plain=round(stored / plain_size, 3),
                                    us_per_op=round(result.median_s / ops * 1e6, 2))
                results.append(result)
            await cache.aclose()
    return results
