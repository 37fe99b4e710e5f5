"""SQL stores side by side with their peers, in one run.

``run_sqlite`` (group ``sqlite``): ``Cache(type="sqlite")`` vs the file store
(``Cache(type="disk", store="files")``; ``type="disk"`` on a new folder is the SQLite
store, measured in ``bench_disk``) vs LiteLLM's DiskCache vs raw :mod:`sqlite3`, on
~2 KB chat completions:

* sequential set and get (one task);
* 64 concurrent tasks, each setting / getting its share of the keys;
* the event loop's p99 lag during every scenario (a ticker task every 1 ms).

LiteLLM 1.110 removed its disk backend; the peer row does what its ``DiskCache`` did:
``diskcache.Cache.set(key, value, expire=ttl)`` / ``.get(key)`` called directly in the
async methods, on the event loop. Raw sqlite3 is the limit row doing the cache's work
(a WAL file, ``INSERT OR REPLACE`` of the encoded entry, ``SELECT`` by key, one commit
per write) on the loop thread, without thread hops or envelopes.

``run_servers`` (group ``sql``): ``Cache(type="sql")`` on PostgreSQL 18 and MariaDB
(started here on 127.0.0.1) vs the raw async driver (asyncpg / asyncmy) doing the same
SQL on the same table shape: 1000-item batch set (one upsert) and batch get, and 64
concurrent tasks getting single keys. LangChain's ``SQLAlchemyCache`` (synchronous;
its async methods run it in a thread) is measured where it runs.

Run with ``python -m benchmarks.bench_sql [--quick]``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from asynccache import Cache
from benchmarks._measure import Result, measure, ratio

notes: list[str] = []
TASKS = 64


def _completion(size: int = 2000) -> dict[str, object]:
    text = "Bonjour, voilà la réponse — 你好 ✓ "
    body = text * (size // len(text.encode()) + 1)
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion",
        "created": 1_700_000_000, "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": body[:size]}}],
        "usage": {"prompt_tokens": 25, "completion_tokens": 412, "total_tokens": 437},
    }


class _LiteLLMDiskCache:
    """What LiteLLM's ``DiskCache`` did: diskcache calls inside async methods, on the loop."""

    def __init__(self, folder: str) -> None:
        import diskcache

        self.disk_cache = diskcache.Cache(folder)

    async def async_set_cache(self, key: str, value: Any, ttl: float | None = None) -> None:
        self.disk_cache.set(key, value, expire=ttl)

    async def async_get_cache(self, key: str) -> Any:
        return self.disk_cache.get(key)

    async def aclose(self) -> None:
        self.disk_cache.close()


class _RawSQLite:
    """The limit row: sqlite3 on the loop thread, WAL, one commit per write."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS e (key BLOB PRIMARY KEY, value BLOB,"
                        " expires_at REAL)")

    async def async_set_cache(self, key: str, value: Any, ttl: float | None = None) -> None:
        self.db.execute("INSERT OR REPLACE INTO e VALUES (?, ?, ?)",
                        (key.encode(), orjson.dumps(value), None))

    async def async_get_cache(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM e WHERE key = ?", (key.encode(),)).fetchone()
        return None if row is None else orjson.loads(row[0])

    async def aclose(self) -> None:
        self.db.close()


async def run_sqlite(quick: bool) -> list[Result]:
    """sqlite vs disk vs LiteLLM's DiskCache vs raw sqlite3 (see the module docstring)."""
    ops = 640 if quick else 3200
    repeats = 3 if quick else 5
    value = _completion()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="asynccache-bench-sql-") as folder:
        root = Path(folder)
        contenders: dict[str, Callable[[], Any]] = {
            "asynccache sqlite": lambda: Cache(type="sqlite", path=str(root / "cache.db")),
            "asynccache disk (files)": lambda: Cache(type="disk", disk_cache_dir=str(root / "disk"),
                                                     store="files"),
            "LiteLLM DiskCache": lambda: _LiteLLMDiskCache(str(root / "diskcache")),
            "raw sqlite3 (limit)": lambda: _RawSQLite(str(root / "raw.db")),
        }
        for library, make in contenders.items():
            try:
                cache = make()
            except ImportError as exc:
                notes.append(f"{library} skipped: {exc}")
                continue
            try:
                results += await _sqlite_scenarios(library, cache, value, ops, repeats)
            finally:
                await cache.aclose()
    _sqlite_targets(results)
    return results


async def _sqlite_scenarios(library: str, cache: Any, value: Any, ops: int,
                            repeats: int) -> list[Result]:
    keys = [f"bench-{i}" for i in range(ops)]
    shares = [keys[n::TASKS] for n in range(TASKS)]

    async def set_sequential() -> None:
        for key in keys:
            await cache.async_set_cache(key, value)

    async def get_sequential() -> None:
        for key in keys:
            await cache.async_get_cache(key)

    async def set_tasks() -> None:
        async def one(share: list[str]) -> None:
            for key in share:
                await cache.async_set_cache(key, value)
        await asyncio.gather(*(one(share) for share in shares))

    async def get_tasks() -> None:
        async def one(share: list[str]) -> None:
            for key in share:
                await cache.async_get_cache(key)
        await asyncio.gather(*(one(share) for share in shares))

    out = []
    for scenario, run in (("sqlite-peers set (sequential)", set_sequential),
                          ("sqlite-peers get (sequential)", get_sequential),
                          (f"sqlite-peers set ({TASKS} tasks)", set_tasks),
                          (f"sqlite-peers get ({TASKS} tasks)", get_tasks)):
        out.append(await measure(scenario, library, run, ops, repeats=repeats, probe_loop=True))
    got = await cache.async_get_cache(keys[-1])
    assert got == value, f"{library} read back a wrong value"
    return out


def _sqlite_targets(results: list[Result]) -> None:
    by = {(r.scenario, r.library): r for r in results}
    checks = [(f"sqlite-peers set ({TASKS} tasks)", 3.0),
              (f"sqlite-peers get ({TASKS} tasks)", 2.0),
              ("sqlite-peers get (sequential)", 0.5)]
    for scenario, target in checks:
        ours = by.get((scenario, "asynccache sqlite"))
        peer = by.get((scenario, "LiteLLM DiskCache"))
        if ours is None or peer is None:
            continue
        got = ratio(ours, peer)
        ours.extra["vs LiteLLM DiskCache"] = round(got, 2)
        ours.extra["target"] = f">= {target}x: {'met' if got >= target else 'NOT met'}"
        lag = ours.loop_lag_p99_ms
        if "tasks" in scenario and lag is not None:
            ours.extra["loop p99 < 1 ms"] = "met" if lag < 1.0 else "NOT met"


# -- PostgreSQL and MariaDB ---------------------------------------------------------------


async def run_servers(quick: bool) -> list[Result]:
    """Cache(type="sql") vs asyncpg / asyncmy (and LangChain) on real servers."""
    from tests.servers.sql_servers import start_mariadb, start_postgres

    results: list[Result] = []
    for name, start in (("PostgreSQL", start_postgres), ("MariaDB", start_mariadb)):
        try:
            server = await asyncio.to_thread(start)
        except Exception as exc:
            notes.append(f"{name} could not start: {exc}"[:300])
            continue
        try:
            results += await _server_scenarios(name, server.url, quick)
        finally:
            await asyncio.to_thread(server.stop)
    return results


async def _server_scenarios(server: str, url: str, quick: bool) -> list[Result]:
    batch = 1000
    rounds = 3 if quick else 10
    repeats = 3 if quick else 5
    value = _completion(500)
    keys = [f"bench-{i}" for i in range(batch)]
    results: list[Result] = []

    cache = Cache(type="sql", url=url, table="bench_asynccache", namespace="bench")
    raw = await _raw_driver(url)
    try:
        async def ours_set() -> None:
            for _ in range(rounds):
                flags = await cache.async_set_cache_pipeline({k: value for k in keys})
                assert all(flags)

        async def ours_get() -> None:
            for _ in range(rounds):
                await cache.async_batch_get_cache(keys)

        async def ours_tasks() -> None:
            await asyncio.gather(*(cache.async_get_cache(k) for k in keys[:TASKS]))

        # The backend's primitives alone, on the same stored bytes: what the SQL layer
        # costs, without the cache's envelope, key checks and stats shared by all stores.
        backend = cache.backend
        stored = [cache._stored_key(k, "bench") for k in keys]
        encoded = orjson.dumps(value)

        async def backend_set() -> None:
            for _ in range(rounds):
                await backend.write_many([(k, encoded, None) for k in stored])

        async def backend_get() -> None:
            for _ in range(rounds):
                await backend.read_many(stored)

        async def raw_set() -> None:
            for _ in range(rounds):
                await raw.set_many(keys, value)

        async def raw_get() -> None:
            for _ in range(rounds):
                await raw.get_many(keys)

        async def raw_tasks() -> None:
            await asyncio.gather(*(raw.get_one(k) for k in keys[:TASKS]))

        await ours_set()
        await raw_set()
        for scenario, mine, theirs, ops in (
            (f"{server} batch set 1000", ours_set, raw_set, rounds * batch),
            (f"{server} batch get 1000", ours_get, raw_get, rounds * batch),
            (f"{server} get ({TASKS} tasks)", ours_tasks, raw_tasks, TASKS),
        ):
            ours = await measure(scenario, "asynccache sql", mine, ops, repeats=repeats)
            peer = await measure(scenario, raw.name, theirs, ops, repeats=repeats)
            got = ratio(ours, peer)
            ours.extra[f"vs {raw.name}"] = round(got, 2)
            if "batch" in scenario:
                ours.extra["target"] = f">= 0.8x: {'met' if got >= 0.8 else 'NOT met'}"
            results += [ours, peer]
            primitive = {"set": backend_set, "get": backend_get}.get(scenario.split()[-2])
            if primitive is not None:
                alone = await measure(scenario, "asynccache sql (backend alone)", primitive,
                                      ops, repeats=repeats)
                alone.extra[f"vs {raw.name}"] = round(ratio(alone, peer), 2)
                results.append(alone)
        await cache.async_set_cache_pipeline({k: value for k in keys})
        assert await cache.async_get_cache(keys[0]) == value
    finally:
        await cache.aclose()
        await raw.aclose()
    results += await _langchain(server, url, quick)
    return results


def _raw_rows(keys: list[str], value: Any) -> list[tuple[Any, ...]]:
    """Rows of the cache's table shape, as the raw contenders write them."""
    now = time.time()
    data = orjson.dumps(value)
    return [(hashlib.sha256(f"raw:{k}".encode()).digest(), f"raw:{k}".encode(), None, data,
             now, None) for k in keys]


class _RawAsyncpg:
    name = "raw asyncpg"

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def set_many(self, keys: list[str], value: Any) -> None:
        rows = _raw_rows(keys, value)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO bench_raw VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key_hash)"
                " DO UPDATE SET key_head = excluded.key_head, key_tail = excluded.key_tail,"
                " value = excluded.value, created_at = excluded.created_at,"
                " expires_at = excluded.expires_at", rows)

    async def get_many(self, keys: list[str]) -> list[Any]:
        hashes = [hashlib.sha256(f"raw:{k}".encode()).digest() for k in keys]
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT key_hash, value FROM bench_raw WHERE key_hash = ANY($1)"
                " AND (expires_at IS NULL OR expires_at > $2)", hashes, time.time())
        found = {bytes(r[0]): r[1] for r in rows}
        return [None if (d := found.get(h)) is None else orjson.loads(d) for h in hashes]

    async def get_one(self, key: str) -> Any:
        return (await self.get_many([key]))[0]

    async def aclose(self) -> None:
        await self.pool.close()


class _RawAsyncmy:
    name = "raw asyncmy"

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def set_many(self, keys: list[str], value: Any) -> None:
        rows = _raw_rows(keys, value)
        async with self.pool.acquire() as conn:
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO bench_raw VALUES (%s, %s, %s, %s, %s, %s) ON DUPLICATE KEY"
                    " UPDATE key_head = VALUES(key_head), key_tail = VALUES(key_tail),"
                    " value = VALUES(value), created_at = VALUES(created_at),"
                    " expires_at = VALUES(expires_at)", rows)
            await conn.commit()

    async def get_many(self, keys: list[str]) -> list[Any]:
        hashes = [hashlib.sha256(f"raw:{k}".encode()).digest() for k in keys]
        marks = ",".join(["%s"] * len(hashes))
        async with self.pool.acquire() as conn:
            async with conn.cursor() as cursor:
                await cursor.execute(
                    f"SELECT key_hash, value FROM bench_raw WHERE key_hash IN ({marks})"
                    " AND (expires_at IS NULL OR expires_at > %s)", (*hashes, time.time()))
                rows = await cursor.fetchall()
            await conn.commit()
        found = {bytes(r[0]): r[1] for r in rows}
        return [None if (d := found.get(h)) is None else orjson.loads(d) for h in hashes]

    async def get_one(self, key: str) -> Any:
        return (await self.get_many([key]))[0]

    async def aclose(self) -> None:
        self.pool.close()
        await self.pool.wait_closed()


async def _raw_driver(url: str) -> Any:
    """The raw driver's pool, with a table of the cache's shape made by the cache's DDL."""
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    from asynccache.backends.sql import build_table

    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(build_table("bench_raw", sa.MetaData()).metadata.create_all)
    finally:
        await engine.dispose()
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "postgresql":
        import asyncpg

        return _RawAsyncpg(await asyncpg.create_pool(
            host=parsed.host, port=parsed.port, user=parsed.username,
            database=parsed.database, min_size=1, max_size=10))
    import asyncmy

    return _RawAsyncmy(await asyncmy.create_pool(
        host=parsed.host, port=parsed.port, user=parsed.username, db=parsed.database,
        minsize=1, maxsize=10))


async def _langchain(server: str, url: str, quick: bool) -> list[Result]:
    """LangChain's SQLAlchemyCache (sync engine; alookup runs it in a thread)."""
    try:
        from langchain_community.cache import SQLAlchemyCache
        from langchain_core.outputs import Generation
        from sqlalchemy import create_engine
    except ImportError as exc:
        notes.append(f"LangChain SQLAlchemyCache skipped: {exc}")
        return []
    sync_url = url.replace("+asyncpg", "+psycopg").replace("+asyncmy", "+pymysql")
    try:
        engine = create_engine(sync_url)
    except ImportError as exc:  # psycopg / pymysql: the bench-peers extra
        notes.append(f"LangChain SQLAlchemyCache skipped on {server}: {exc}")
        return []
    try:
        try:
            lc = SQLAlchemyCache(engine)
        except Exception as exc:
            notes.append(f"LangChain SQLAlchemyCache fails on {server}: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            return []
        prompts = [f"prompt {i}" for i in range(TASKS)]
        generations = [Generation(text="x" * 500)]
        for prompt in prompts:
            await lc.aupdate(prompt, "llm", generations)

        async def lookups() -> None:
            await asyncio.gather(*(lc.alookup(p, "llm") for p in prompts))

        result = await measure(f"{server} get ({TASKS} tasks)", "LangChain SQLAlchemyCache",
                               lookups, TASKS, repeats=3 if quick else 5)
        return [result]
    finally:
        engine.dispose()


async def _print(run: Callable[[bool], Awaitable[list[Result]]], quick: bool) -> None:
    for result in await run(quick):
        lag = result.loop_lag_p99_ms
        shown = "" if lag is None else f"  loop p99 {lag:7.2f} ms"
        print(f"{result.scenario:34s} {result.library:28s} {result.ops_per_s:10,.0f} ops/s"
              f"{shown}  {result.extra or ''}")


if __name__ == "__main__":
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    quick_run = "--quick" in sys.argv
    asyncio.run(_print(run_sqlite, quick_run))
    asyncio.run(_print(run_servers, quick_run))
    for note in notes:
        print("note:", note)
