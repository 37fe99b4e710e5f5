"""The SQL store on real PostgreSQL and MariaDB servers and on aiosqlite.

Shared behaviour is in the contract suite; these tests cover the table (types, shape
check), batches larger than one statement, prefix clears past the indexed head,
atomic increments, expiry purge, an application's own engine and a server restart.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from asynccache import Cache, ConfigurationError
from asynccache.backends.sql import KEY_HEAD_BYTES, SQLBackend
from tests.helpers import FakeClock, unique


@pytest.fixture(params=["postgres", "mariadb", "sqlite"])
def sql_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'sql.db'}"
    return request.getfixturevalue(f"{request.param}_server").url


def _table() -> str:
    return unique("t").replace("-", "_")


@pytest.fixture
async def make(sql_url):
    caches: list[Cache] = []

    def build(**settings):
        settings.setdefault("table", _table())
        cache = Cache(type="sql", url=sql_url, **settings)
        caches.append(cache)
        return cache

    yield build
    for cache in caches:
        await cache.aclose()


async def test_columns_have_dialect_correct_types(make, sql_url):
    cache = make()
    assert await cache.async_set_cache("k", "v") is True
    table = cache.backend.table.name
    engine = create_async_engine(sql_url)
    try:
        async with engine.connect() as connection:
            columns = await connection.run_sync(
                lambda sync: {c["name"]: str(c["type"]).upper()
                              for c in sa.inspect(sync).get_columns(table)})
    finally:
        await engine.dispose()
    if sql_url.startswith("postgresql"):
        assert columns["value"] == "BYTEA" and columns["key_head"] == "BYTEA"
        assert columns["expires_at"] == "DOUBLE PRECISION"
    elif sql_url.startswith("mysql"):
        assert columns["value"] == "LONGBLOB"
        assert columns["key_head"] == f"VARBINARY({KEY_HEAD_BYTES})"
        assert columns["key_hash"] == "BINARY(32)"
    else:
        assert columns["value"] == "BLOB"


async def test_an_existing_table_of_another_shape_is_refused(make, sql_url):
    table = _table()
    engine = create_async_engine(sql_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(sa.text(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, "
                                             "note VARCHAR(20))"))
    finally:
        await engine.dispose()
    cache = make(table=table)
    with pytest.raises(ConfigurationError, match=r"exists with columns \['id', 'note'\]"):
        await cache.async_test_connection()


async def test_batches_larger_than_one_statement_round_trip(make):
    cache = make()
    items = {f"k{i}": {"n": i} for i in range(2500)}
    assert await cache.async_set_cache_pipeline(items) == [True] * 2500
    got = await cache.async_batch_get_cache(list(items))
    assert got == list(items.values())
    assert await cache.async_delete_many(list(items)[:1200]) == 1200


async def test_prefix_clear_past_the_indexed_head_and_with_like_wildcards(make):
    cache = make(namespace=None)
    long_ns = "n" * (KEY_HEAD_BYTES + 20)
    await cache.async_set_cache("a", 1, namespace=long_ns)
    await cache.async_set_cache("a", 2, namespace=long_ns + "x")
    await cache.async_set_cache("a", 3, namespace="50%_off")
    await cache.async_set_cache("a", 4, namespace="50xyoff")
    assert await cache.async_clear(namespace=long_ns) == 1
    assert await cache.async_get_cache("a", namespace=long_ns + "x") == 2
    assert await cache.async_clear(namespace="50%_off") == 1
    assert await cache.async_get_cache("a", namespace="50xyoff") == 4


async def test_concurrent_increments_are_atomic(make):
    cache = make()
    results = await asyncio.gather(*(cache.async_increment("hits") for _ in range(40)))
    assert None not in results
    assert await cache.async_get_cache("hits") == 40


async def test_expired_rows_are_hidden_and_purged(make):
    clock = FakeClock()
    cache = make(clock=clock)
    await cache.async_set_cache_pipeline({f"e{i}": i for i in range(30)}, ttl=5)
    await cache.async_set_cache("kept", 1, ttl=None)
    clock.advance(6)
    assert await cache.async_batch_get_cache(["e0", "e29"]) == [None, None]
    assert await cache.backend.purge() == 30
    assert await cache.async_get_cache("kept") == 1


async def test_an_application_engine_is_used_and_left_open(sql_url):
    engine = create_async_engine(sql_url)
    cache = Cache(type="sql", engine=engine, table=_table())
    try:
        assert await cache.async_set_cache("k", "v") is True
        assert await cache.async_get_cache("k") == "v"
        assert cache.get_cache("k") == "v"  # the bridge's loop gets an engine of its own
        await cache.aclose()
        async with engine.connect() as connection:  # still the application's to use
            assert (await connection.execute(sa.text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()


@pytest.mark.parametrize("settings, message", [
    ({}, "exactly one of url"),
    ({"url": "oracle://x"}, "postgresql"),
    ({"url": "postgresql://u@h/d", "table": "bad name; drop"}, "table"),
    ({"url": "postgresql://u@h/d", "pool_size": 0}, "pool_size"),
    ({"url": "postgresql://u@h/d", "engine": object()}, "exactly one"),
])
def test_bad_settings_raise_naming_the_setting(settings, message):
    with pytest.raises(ConfigurationError, match=message):
        Cache(type="sql", **settings)


def test_a_url_without_a_driver_gets_the_async_one():
    assert SQLBackend("postgresql://u@h/d").url.drivername == "postgresql+asyncpg"
    assert SQLBackend("mysql://u@h/d").url.drivername == "mysql+asyncmy"
    assert SQLBackend("sqlite:///x.db").url.drivername == "sqlite+aiosqlite"


_FORK_ON_SQLITE = textwrap.dedent("""
    import asyncio, faulthandler, logging, os, sqlite3, sys
    from asynccache import Cache

    path = sys.argv[1]
    cache = Cache(type="sql", url=f"sqlite+aiosqlite:///{path}")
    big = "x" * 300_000

    def child(tag, expect_refusal):
        faulthandler.dump_traceback_later(30, exit=True)
        seen = []
        handler = logging.Handler()
        handler.emit = lambda record: seen.append(record.getMessage())
        logging.getLogger("asynccache").addHandler(handler)

        async def use():
            stored = await cache.async_set_cache(tag, tag)
            return stored, await cache.async_get_cache(tag)

        stored, found = asyncio.run(use())
        refused = any("forked while the SQL store had a transaction open" in m for m in seen)
        ok = (not stored and found is None and refused) if expect_refusal else (
            stored and found == tag and not refused)
        os._exit(0 if ok else 3)

    async def fork_and_wait(tag, expect_refusal):
        pid = os.fork()
        if pid == 0:
            child(tag, expect_refusal)
        _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, (tag, status)

    async def main():
        assert await cache.async_set_cache("parent", 1) is True
        for round_ in range(4):
            # Forked while the parent's writes are in flight: the child must not write.
            busy = [asyncio.ensure_future(cache.async_set_cache(f"busy{round_}-{n}", big))
                    for n in range(4)]
            while not cache.backend._in_use:  # until the writes hold their connections
                await asyncio.sleep(0)
            await fork_and_wait(f"refused{round_}", expect_refusal=True)
            assert await asyncio.gather(*busy) == [True] * 4
            # Forked with the store idle: the child uses the file beside the parent.
            await fork_and_wait(f"child{round_}", expect_refusal=False)
            assert await cache.async_get_cache(f"child{round_}") == f"child{round_}"
        assert await cache.async_get_cache("refused0") is None
        await cache.aclose()
        assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)
        print("ok", flush=True)

    asyncio.run(main())
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
async def test_a_child_forked_mid_transaction_on_sqlite_refuses_instead_of_corrupting(tmp_path):
    # Without the refusal such children write through SQLite lock state inherited
    # half-way: "database disk image is malformed" within a few forks.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _FORK_ON_SQLITE, str(tmp_path / "cache.db"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    assert out.decode().split() == ["ok"]
