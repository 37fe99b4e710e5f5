"""SQLite backend: WAL, group commit, coalesced reads, expiry, bound, processes, crashes.

The shared behaviour is in the contract suite; these tests cover what only this backend
promises. Processes are real subprocesses on one file; the crash test kills one with
SIGKILL in the middle of a write burst.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from asynccache import Cache, ConfigurationError
from asynccache.backends.sqlite import SQLiteBackend, SQLiteCache
from tests.helpers import FakeClock


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "cache.db")


async def test_cache_type_sqlite_uses_a_wal_file(db_path):
    async with Cache(type="sqlite", path=db_path) as cache:
        assert await cache.async_set_cache("k", {"v": 1}) is True
        assert await cache.async_get_cache("k") == {"v": 1}
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT count(*) FROM asynccache_entries").fetchone()[0] == 1


async def test_concurrent_writes_share_commits(db_path):
    async with SQLiteCache(path=db_path) as cache:
        results = await asyncio.gather(*(cache.async_set_cache(f"k{i}", i) for i in range(64)))
        assert results == [True] * 64
        backend = cache.backend
        assert isinstance(backend, SQLiteBackend)
        # One commit per wake-up of the writer thread, not one per write.
        assert backend.commits <= 8
        assert await cache.async_batch_get_cache([f"k{i}" for i in range(64)]) == list(range(64))


async def test_concurrent_single_gets_of_one_tick_are_one_read(db_path):
    async with SQLiteCache(path=db_path) as cache:
        await cache.async_set_cache_pipeline({f"k{i}": i for i in range(64)})
        backend = cache.backend
        assert isinstance(backend, SQLiteBackend)
        before = backend.read_batches
        got = await asyncio.gather(*(cache.async_get_cache(f"k{i}") for i in range(64)))
        assert got == list(range(64))
        assert backend.read_batches - before == 1


async def test_expired_rows_are_hidden_then_purged(db_path):
    clock = FakeClock()
    async with SQLiteCache(path=db_path, clock=clock) as cache:
        backend = cache.backend
        assert isinstance(backend, SQLiteBackend)
        await cache.async_set_cache_pipeline({f"short{i}": i for i in range(20)}, ttl=10)
        await cache.async_set_cache("kept", 1, ttl=None)
        clock.advance(11)
        assert await backend.read_many([cache._stored_key("short0", None)]) == [None]
        assert await backend.stored_ttl(cache._stored_key("short0", None)) is None
        assert await backend.count() == 21
        assert await backend.purge() == 20
        assert await backend.count() == 1
        assert await cache.async_get_cache("kept") == 1


async def test_background_purge_removes_expired_rows(db_path):
    clock = FakeClock()
    async with SQLiteCache(path=db_path, clock=clock, purge_interval=0.02) as cache:
        backend = cache.backend
        assert isinstance(backend, SQLiteBackend)
        await cache.async_set_cache_pipeline({f"e{i}": i for i in range(50)}, ttl=5)
        await cache.async_set_cache("kept", 1, ttl=None)
        clock.advance(6)
        polls = 0
        while await backend.count() != 1:  # polled: the purge runs on the writer's timer
            polls += 1
            assert polls < 6000, "the background purge never ran"
            await asyncio.sleep(0.005)
        assert await cache.async_get_cache("kept") == 1


async def test_size_bound_evicts_oldest_writes_first(db_path):
    limit = 256 * 1024
    async with SQLiteCache(path=db_path, max_bytes=limit) as cache:
        backend = cache.backend
        assert isinstance(backend, SQLiteBackend)
        value = "x" * 1000
        for start in range(0, 2000, 100):
            flags = await cache.async_set_cache_pipeline(
                {f"k{i}": value for i in range(start, start + 100)}
            )
            assert all(flags)
        assert backend.evictions > 0
        used = await backend._read(backend.used_bytes)
        assert used <= limit
        assert await cache.async_get_cache("k1999") == value
        assert await cache.async_get_cache("k0") is None
        assert await backend.count() < 2000


async def test_an_entry_larger_than_the_bound_is_refused_not_raised(db_path):
    async with SQLiteCache(path=db_path, max_bytes=4096) as cache:
        assert await cache.async_set_cache("big", "x" * 10_000) is False
        assert await cache.async_set_cache("small", "x") is True


async def test_a_locked_file_fails_open_and_recovers(db_path):
    async with SQLiteCache(path=db_path, busy_timeout=0.2, timeout=None) as cache:
        await cache.async_set_cache("before", 1)
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            assert await cache.async_set_cache("during", 2) is False  # no exception
            assert await cache.async_get_cache("before") == 1  # WAL readers are not blocked
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert cache.stats()["set_failures"] == 1
        assert await cache.async_set_cache("after", 3) is True
        assert await cache.async_get_cache("after") == 3


_WORKER = textwrap.dedent("""
    import asyncio, sys
    from asynccache.backends.sqlite import SQLiteCache

    async def main(path, name, rounds):
        async with SQLiteCache(path=path, namespace="shared") as cache:
            for i in range(rounds):
                ok = await cache.async_set_cache(f"{name}-{i}", {"n": i})
                assert ok, f"write {i} refused"
                assert await cache.async_get_cache(f"{name}-{i}") == {"n": i}
                assert await cache.async_increment("counter") is not None
            stats = cache.stats()
            assert stats["errors"] == 0 and stats["set_failures"] == 0, stats
        print("done", flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
""")


async def test_processes_sharing_one_file_never_see_locked_errors(db_path):
    rounds, workers = 150, 4
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WORKER, db_path, f"w{n}", str(rounds),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for n in range(workers)
    ]
    outputs = [await proc.communicate() for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
        assert out.decode().strip() == "done"
    async with SQLiteCache(path=db_path, namespace="shared") as cache:
        # Increments from every process are atomic: none is lost.
        assert await cache.async_get_cache("counter") == rounds * workers
        keys = [f"w{n}-{i}" for n in range(workers) for i in range(rounds)]
        assert None not in await cache.async_batch_get_cache(keys)


_BURST = textwrap.dedent("""
    import asyncio, sys
    from asynccache.backends.sqlite import SQLiteCache

    async def main(path):
        cache = SQLiteCache(path=path)
        batch = 0
        while True:
            keys = [f"b{batch}-t{task}" for task in range(16)]
            flags = await asyncio.gather(*(cache.async_set_cache(k, {"k": k, "pad": "x" * 500})
                                           for k in keys))
            if all(flags):
                print(f"acked {batch}", flush=True)  # only after the commit returned
            batch += 1

    asyncio.run(main(sys.argv[1]))
""")


async def test_sigkill_during_a_write_burst_keeps_every_acknowledged_write(db_path):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _BURST, db_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    acked: list[int] = []
    assert proc.stdout is not None
    try:
        while len(acked) < 40:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line, (await proc.stderr.read()).decode() if proc.stderr else "no output"
            acked.append(int(line.split()[1]))
    finally:
        proc.send_signal(signal.SIGKILL)
    # Anything it printed before dying was acknowledged too.
    rest, _ = await proc.communicate()
    acked += [int(line.split()[1]) for line in rest.decode().splitlines() if line.strip()]
    assert proc.returncode == -signal.SIGKILL
    assert await asyncio.to_thread(Path(db_path + "-wal").exists)  # died with a live WAL
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    async with SQLiteCache(path=db_path) as cache:
        keys = [f"b{b}-t{t}" for b in acked for t in range(16)]
        found = await cache.async_batch_get_cache(keys)
        assert [k for k, v in zip(keys, found, strict=True) if v is None or v["k"] != k] == []


@pytest.mark.parametrize("settings, message", [
    ({"path": ":memory:"}, "path"),
    ({"path": ""}, "path"),
    ({"path": "x.db", "max_bytes": 0}, "max_bytes"),
    ({"path": "x.db", "busy_timeout": -1}, "busy_timeout"),
    ({"path": "x.db", "readers": 1.5}, "readers"),
])
def test_bad_settings_raise_naming_the_setting(settings, message):
    with pytest.raises(ConfigurationError, match=message):
        Cache(type="sqlite", **settings)


def test_sync_twins_work_from_a_script(db_path):
    cache = Cache(type="sqlite", path=db_path)
    try:
        assert cache.set_cache("k", [1, 2]) is True
        assert cache.get_cache("k") == [1, 2]
        assert cache.clear() == 1
    finally:
        cache.close()


async def test_a_failing_write_never_undoes_the_others_of_its_group(db_path):
    async with SQLiteCache(path=db_path) as cache:
        backend = cache.backend
        assert isinstance(backend, SQLiteBackend)

        def broken(connection: sqlite3.Connection) -> None:
            connection.execute("INSERT INTO no_such_table VALUES (1)")

        results = await asyncio.gather(
            *(cache.async_set_cache(f"k{i}", i) for i in range(20)),
            backend._write(broken),
            *(cache.async_set_cache(f"j{i}", i) for i in range(20)),
            return_exceptions=True,
        )
        assert isinstance(results[20], sqlite3.OperationalError)
        assert results[:20] == results[21:] == [True] * 20
        assert await cache.async_batch_get_cache([f"k{i}" for i in range(20)]) == list(range(20))


async def test_a_dropped_cache_is_collected_and_its_threads_exit(db_path):
    import gc

    cache = SQLiteCache(path=db_path)
    assert await cache.async_set_cache("k", 1) is True
    assert await cache.async_get_cache("k") == 1
    backend = cache.backend
    assert isinstance(backend, SQLiteBackend)
    threads = backend._threads
    assert threads is not None
    writer = threads.writer._thread
    del cache, backend, threads
    gc.collect()
    await asyncio.to_thread(writer.join, 30)
    assert not writer.is_alive()
