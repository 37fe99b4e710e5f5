"""Semantic hit quality: precision and recall per pair kind, with and without the guard.

Run with ``python -m benchmarks.semantic_quality`` (it starts its own valkey-server with
RediSearch and PostgreSQL with pgvector on 127.0.0.1; Qdrant runs embedded in memory and
local-semantic in a temporary folder). Writes ``benchmarks/results/semantic_quality.json``
and prints Markdown tables.

Method (data: ``benchmarks/data/semantic_pairs.json``):

1. **Threshold on dev only.** ``async_calibrate`` scores the dev half with the local
   model (all-MiniLM-L6-v2 int8) and the guard, and recommends the threshold with the
   highest recall among those reaching precision 0.99. The same is done without the
   guard (usually no threshold reaches 0.99 then).
2. **Figures on test only**, through each real store and the full ``Cache`` path: for
   every test pair, ``a`` is stored (``async_store``) in a namespace of its own and ``b``
   looked up (``async_lookup``) at the dev threshold, once with the default guard and
   once with ``semantic_guard=False``. A hit on a ``same=false`` pair is a false hit.
   Each namespace holds one entry, so these figures measure the verdict on one
   candidate; ``semantic_candidates`` (several candidates per lookup) is exercised by
   the tests.
3. **Guard cost**: the guard's own time per checked candidate as the caches counted it
   (``stats()["semantic"]["guard_mean_us"]``), its time per check with an empty feature
   cache (every text seen for the first time), and the lookup's median time beside it.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asynccache import Cache, parse_controls
from asynccache.semantic import LocalEmbedder
from asynccache.semantic.base import SemanticBackend
from asynccache.semantic.calibrate import async_calibrate
from asynccache.semantic.guard import SemanticGuard, SemanticVerifier, features
from asynccache.semantic.pairs import LabelledPair, load_pairs
from tests.servers.processes import running, start_valkey
from tests.servers.sql_servers import start_postgres

DATA = Path(__file__).parent / "data" / "semantic_pairs.json"
RESULTS = Path(__file__).parent / "results" / "semantic_quality.json"
TARGET_PRECISION = 0.99
HARD_NEGATIVE_KINDS = ("numbers_units", "negation", "order", "entities", "quoted",
                       "identifiers")

@dataclass(frozen=True)
class Servers:
    """Where the stores live for one run (no PostgreSQL URL: postgres-semantic is left out)."""

    redis_port: int
    postgres_url: str | None
    folder: Path


StoreFactory = Callable[[Servers, Any, float], Cache]


def _stores() -> dict[str, StoreFactory]:
    """Every semantic store, as ``(servers, embedder, threshold) -> Cache``."""
    return {
        "redis-semantic": lambda servers, embedding, threshold: Cache(
            type="redis-semantic", host="127.0.0.1", port=servers.redis_port,
            embedding=embedding, similarity_threshold=threshold, timeout=None,
            redis_semantic_cache_index_name=f"quality-{uuid.uuid4().hex[:8]}"),
        "qdrant-semantic": lambda servers, embedding, threshold: Cache(
            type="qdrant-semantic", qdrant_location=":memory:", embedding=embedding,
            similarity_threshold=threshold, timeout=None, qdrant_collection_name="quality"),
        "postgres-semantic": lambda servers, embedding, threshold: Cache(
            type="postgres-semantic", url=str(servers.postgres_url), embedding=embedding,
            similarity_threshold=threshold, timeout=None,
            table=f"quality_{uuid.uuid4().hex[:8]}"),
        "local-semantic": lambda servers, embedding, threshold: Cache(
            type="local-semantic", embedding=embedding, similarity_threshold=threshold,
            timeout=None, disk_cache_dir=str(servers.folder / uuid.uuid4().hex[:8])),
    }


def _table(pairs: Sequence[LabelledPair], hits: Sequence[bool]) -> dict[str, Any]:
    """Overall precision / recall and, per kind, recall and false-hit rate."""
    kinds: dict[str, dict[str, Any]] = {}
    for pair, hit in zip(pairs, hits, strict=True):
        row = kinds.setdefault(pair.kind, {"same": 0, "different": 0, "true_hits": 0,
                                           "false_hits": 0})
        row["same" if pair.same else "different"] += 1
        if hit:
            row["true_hits" if pair.same else "false_hits"] += 1
    for row in kinds.values():
        row["recall"] = round(row["true_hits"] / row["same"], 4) if row["same"] else None
        row["false_hit_rate"] = (round(row["false_hits"] / row["different"], 4)
                                 if row["different"] else None)
    true_hits = sum(r["true_hits"] for r in kinds.values())
    false_hits = sum(r["false_hits"] for r in kinds.values())
    positives = sum(r["same"] for r in kinds.values())
    return {
        "precision": round(true_hits / (true_hits + false_hits), 4) if true_hits + false_hits
        else 1.0,
        "recall": round(true_hits / positives, 4) if positives else 0.0,
        "true_hits": true_hits, "false_hits": false_hits,
        "by_kind": dict(sorted(kinds.items())),
    }


async def _run_store(cache: Cache, pairs: Sequence[LabelledPair]) -> dict[str, Any]:
    backend = cache.backend
    assert isinstance(backend, SemanticBackend)
    guarded = backend.verifier
    unguarded = SemanticVerifier(None)
    hits: dict[str, list[bool]] = {"guard": [], "no_guard": []}
    latencies: list[float] = []
    try:
        for index, pair in enumerate(pairs):
            controls = parse_controls({"namespace": f"pair{index}"})
            await cache.async_store(pair.request_a(), {"answer to": pair.a}, controls=controls)
            for mode, verifier in (("guard", guarded), ("no_guard", unguarded)):
                backend.verifier = verifier
                started = time.perf_counter()
                hit = await cache.async_lookup(pair.request_b(), controls=controls)
                if mode == "guard":
                    latencies.append(time.perf_counter() - started)
                hits[mode].append(hit is not None)
        backend.verifier = guarded
        stats = cache.stats()
    finally:
        backend.verifier = guarded
        await cache.aclose()
    return {
        "guard": _table(pairs, hits["guard"]), "no_guard": _table(pairs, hits["no_guard"]),
        "errors": stats["errors"], "semantic": stats["semantic"],
        "lookup_p50_ms": round(statistics.median(latencies) * 1000, 3),
    }


def _cold_guard_us(pairs: Sequence[LabelledPair]) -> float:
    """Mean guard time per candidate when neither text was seen before (at a similarity
    below ``focus_below``, so every check may run)."""
    guard = SemanticGuard()
    features.cache_clear()
    started = time.perf_counter()
    for pair in pairs:
        guard.check(pair.b, pair.a, 0.7)
    return (time.perf_counter() - started) / len(pairs) * 1e6


async def quality(redis_port: int, postgres_url: str | None = None,
                  folder: Path | None = None) -> dict[str, Any]:
    """The whole report as a dict (see the module docstring); postgres-semantic is
    measured when ``postgres_url`` is given, local-semantic in ``folder`` (default: a
    temporary folder)."""
    if folder is None:
        with tempfile.TemporaryDirectory() as temporary:
            return await quality(redis_port, postgres_url, Path(temporary))
    servers = Servers(redis_port, postgres_url, folder)
    dev = load_pairs(DATA, split="dev")
    test = load_pairs(DATA, split="test")
    embedding = LocalEmbedder()
    dev_guard = await async_calibrate(dev, embedding=embedding,
                                      target_precision=TARGET_PRECISION)
    dev_bare = await async_calibrate(dev, embedding=embedding, semantic_guard=False,
                                     target_precision=TARGET_PRECISION)
    threshold = dev_guard.recommended if dev_guard.recommended is not None else 0.8
    report: dict[str, Any] = {
        "model": "all-MiniLM-L6-v2 int8 (embedding='local')",
        "pairs": {"dev": len(dev), "test": len(test)},
        "target_precision": TARGET_PRECISION,
        "threshold": threshold,
        "dev": {"guard": {"recommended": dev_guard.recommended,
                          **dev_guard.row(threshold).as_dict()},
                "no_guard": {"recommended": dev_bare.recommended,
                             **dev_bare.row(threshold).as_dict()}},
        "guard_cold_us_per_check": round(_cold_guard_us(test), 1),
        "stores": {},
    }
    for name, factory in _stores().items():
        if name == "postgres-semantic" and postgres_url is None:
            continue
        report["stores"][name] = await _run_store(factory(servers, embedding, threshold),
                                                  test)
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables (test half only)."""
    lines = [
        f"Test half ({report['pairs']['test']} pairs), local model, similarity_threshold="
        f"{report['threshold']} chosen on the dev half ({report['pairs']['dev']} pairs) for "
        f"precision >= {report['target_precision']} with the guard.",
        "",
        "| store | guard | precision | recall (all same pairs) | paraphrase recall | "
        "worst hard-negative false-hit rate | near-topic false-hit rate |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for store, figures in report["stores"].items():
        for mode in ("guard", "no_guard"):
            table = figures[mode]
            kinds = table["by_kind"]
            worst = max(kinds[k]["false_hit_rate"] for k in HARD_NEGATIVE_KINDS)
            named = ", ".join(k for k in HARD_NEGATIVE_KINDS
                              if worst and kinds[k]["false_hit_rate"] == worst)
            lines.append(
                f"| {store} | {'on' if mode == 'guard' else 'off'} | {table['precision']:.3f} "
                f"| {table['recall']:.3f} | {kinds['paraphrase']['recall']:.3f} | "
                f"{worst:.3f}{f' ({named})' if named else ''} | "
                f"{kinds['near_topic']['false_hit_rate']:.3f} |"
            )
    lines += ["", "Per kind (test half; recall over same pairs, false-hit rate over "
              "different pairs):", "",
              "| kind | store | same / different | recall, guard on | recall, guard off | "
              "false-hit rate, guard on | false-hit rate, guard off |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]

    def show(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    kinds = sorted(next(iter(report["stores"].values()))["guard"]["by_kind"])
    for kind in kinds:
        for store, figures in report["stores"].items():
            on, off = figures["guard"]["by_kind"][kind], figures["no_guard"]["by_kind"][kind]
            lines.append(f"| {kind} | {store} | {on['same']} / {on['different']} | "
                         f"{show(on['recall'])} | {show(off['recall'])} | "
                         f"{show(on['false_hit_rate'])} | {show(off['false_hit_rate'])} |")
    lines += ["", "Guard cost per checked candidate: "
              + ", ".join(f"{store} {figures['semantic']['guard_mean_us']:.0f} µs "
                          f"(lookup p50 {figures['lookup_p50_ms']:.2f} ms)"
                          for store, figures in report["stores"].items())
              + f"; with nothing cached {report['guard_cold_us_per_check']:.0f} µs."]
    return "\n".join(lines)


def main() -> dict[str, Any]:
    """Start the servers (outside the event loop: their start-up probes run their own),
    measure, write the JSON report."""
    valkey = start_valkey()
    with running(valkey), tempfile.TemporaryDirectory() as folder:
        postgres = start_postgres()
        try:
            report = asyncio.run(quality(valkey.port, postgres.url, Path(folder)))
        finally:
            postgres.stop()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    result = main()
    sys.stdout.write(markdown(result) + "\n")
