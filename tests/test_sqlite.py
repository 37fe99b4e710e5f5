"""SQLite backend: WAL, per-tick batches on the loop, group commit in threads, expiry,
bound, processes, forks, crashes.

The shared behaviour is in the contract suite; these tests cover what only this backend
promises. Processes are real subprocesses on one file; the crash test kills one with
SIGKILL in the middle of a write burst.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from asynccache import Cache, ConfigurationError
from asynccache.backends.sqlite import (
    LOOP_MAX_BYTES,
    LOOP_MAX_ROWS,
    LOOP_SLICE,
    SQLiteBackend,
    SQLiteCache,
)
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


# -- per-tick batches on the loop thread ---------------------------------------------------


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` from the loop: what it watches changes in worker threads."""
    for _ in range(60_000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never happened: {what}")


async def _warm(cache: SQLiteCache, *, write: bool = True) -> SQLiteBackend:
    """The backend, once its loop connection is open (opened by a worker thread)."""
    backend = cache.backend
    assert isinstance(backend, SQLiteBackend)
    if write:
        await cache.async_set_cache("warm-up", 0)
    else:
        await cache.async_get_cache("warm-up")
    # The first batch asked a worker thread to open it.
    await _until(lambda: backend._loop_connection() is not None, "loop connection opened")
    return backend


async def test_one_tick_of_gets_is_one_query_and_its_sets_one_commit_per_slice(db_path):
    async with SQLiteCache(path=db_path) as cache:
        backend = await _warm(cache)
        commits, loop_batches, thread_batches = (backend.commits, backend.loop_batches,
                                                 backend.thread_batches)
        flags = await asyncio.gather(*(cache.async_set_cache(f"k{i}", i) for i in range(64)))
        assert flags == [True] * 64
        assert backend.commits - commits == 64 // LOOP_SLICE
        reads = backend.read_batches
        got = await asyncio.gather(*(cache.async_get_cache(f"k{i}") for i in range(64)))
        assert got == list(range(64))
        assert backend.read_batches - reads == 1
        assert backend.loop_batches - loop_batches == 64 // LOOP_SLICE + 1
        assert backend.thread_batches == thread_batches


async def test_a_big_tick_answers_a_slice_of_callers_per_pass_of_the_loop(db_path):
    async with SQLiteCache(path=db_path) as cache:
        await _warm(cache)
        for operation in ("set", "get"):
            if operation == "set":
                calls = [cache.async_set_cache(f"k{i}", i) for i in range(64)]
            else:
                calls = [cache.async_get_cache(f"k{i}") for i in range(64)]
            tasks = [asyncio.ensure_future(call) for call in calls]
            finished = [0]
            while finished[-1] < len(tasks):
                await asyncio.sleep(0)  # one pass of the loop
                finished.append(sum(task.done() for task in tasks))
            steps = [after - before for before, after in itertools.pairwise(finished)]
            assert max(steps) == LOOP_SLICE, (operation, steps)
            results = [task.result() for task in tasks]
            assert results == ([True] * 64 if operation == "set" else list(range(64)))


async def test_big_values_and_big_batches_go_to_the_threads(db_path):
    async with SQLiteCache(path=db_path) as cache:
        backend = await _warm(cache)
        big = "x" * (LOOP_MAX_BYTES + 1)
        before = backend.thread_batches
        assert await cache.async_set_cache("big", big) is True
        assert await cache.async_get_cache("big") == big  # NULL on the loop, read in a thread
        many = {f"m{i}": i for i in range(LOOP_MAX_ROWS + 1)}
        assert all(await cache.async_set_cache_pipeline(many))
        assert await cache.async_batch_get_cache(list(many)) == list(many.values())
        assert backend.thread_batches - before == 3  # big set, big get, big pipeline
        assert backend.thread_batches - before < 5  # the batch get of 129 keys stays on the loop


async def test_a_locked_database_sends_the_write_to_a_thread_that_waits_for_the_lock(db_path):
    async with SQLiteCache(path=db_path, busy_timeout=30) as cache:
        backend = await _warm(cache)
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            before = backend.thread_batches
            write = asyncio.ensure_future(cache.async_set_cache("k", "written"))
            await _until(lambda: backend.thread_batches > before, "the loop found the lock taken")
            assert not write.done()
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert await write is True
        assert await cache.async_get_cache("k") == "written"


async def test_later_writes_never_overtake_writes_queued_for_the_writer_thread(db_path):
    async with SQLiteCache(path=db_path) as cache:
        backend = await _warm(cache, write=False)  # the writer thread has no connection yet
        opening = threading.Event()
        connect = backend.connect

        def slow_connect(*, writer: bool, on_loop: bool = False) -> sqlite3.Connection:
            if writer:  # the writer thread stalls here, holding no lock
                opening.wait(60)
            return connect(writer=writer, on_loop=on_loop)

        backend.connect = slow_connect  # type: ignore[method-assign]
        old = {f"p{i}": "old" for i in range(LOOP_MAX_ROWS + 1)}  # too many for the loop
        before = backend.thread_batches
        pipeline = asyncio.ensure_future(cache.async_set_cache_pipeline(old))
        await _until(lambda: backend.thread_batches > before, "pipeline sent to the writer")
        # Small enough for the loop and the file is not locked, but queued behind the
        # pipeline: it must not commit first.
        write = asyncio.ensure_future(cache.async_set_cache("p0", "new"))
        await _until(lambda: backend.thread_batches > before + 1 or write.done(),
                     "the write sent to the writer thread (or, wrongly, committed)")
        assert not write.done()
        opening.set()
        assert await write is True
        assert all(await pipeline)
        assert await cache.async_get_cache("p0") == "new"


async def test_a_cancelled_leader_still_answers_the_rest_of_its_tick(db_path):
    async with SQLiteCache(path=db_path) as cache:
        await _warm(cache)
        await cache.async_set_cache_pipeline({"a": 1, "b": 2, "c": 3})
        tasks = [asyncio.ensure_future(cache.async_get_cache(key)) for key in "abc"]
        await asyncio.sleep(0)  # each task has registered its key; the first leads
        tasks[0].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert results[1:] == [2, 3]


async def test_the_loop_thread_never_opens_the_file_or_checkpoints(db_path):
    loop_thread = threading.get_ident()
    opened_on: list[int] = []
    watching = threading.Event()

    def hook(event: str, args: tuple) -> None:
        if watching.is_set() and event == "sqlite3.connect":
            opened_on.append(threading.get_ident())

    sys.addaudithook(hook)  # cannot be removed: inert once `watching` is cleared
    watching.set()
    try:
        async with SQLiteCache(path=db_path) as cache:
            backend = await _warm(cache)
            loop_connection = backend._loop_connection()
            assert loop_connection is not None
            assert loop_connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
            assert loop_connection.execute("PRAGMA busy_timeout").fetchone()[0] == 0
            value = "v" * 100_000
            for round_ in range(60):  # 6 MB committed on the loop, 4 values per commit
                flags = await asyncio.gather(*(cache.async_set_cache(f"r{round_}-{n}", value)
                                               for n in range(4)))
                assert flags == [True] * 4
            # The background checkpoint copies the log into the database file.
            await _until(lambda: os.path.getsize(db_path) > 4 * 1024 * 1024,
                         "a checkpoint copied the log into the database file")
    finally:
        watching.clear()
    assert opened_on and loop_thread not in opened_on


_FORKED = textwrap.dedent("""
    import asyncio, faulthandler, multiprocessing, sys
    from asynccache.backends.sqlite import SQLiteCache

    cache = SQLiteCache(path=sys.argv[1])

    async def use(tag):
        assert await cache.async_set_cache(tag, tag) is True
        assert await cache.async_get_cache(tag) == tag
        assert await cache.async_get_cache("parent") == "parent"

    def child():
        # A child that hangs prints every thread's stack and exits, so the failure says
        # where instead of holding the parent (and the suite) until its timeout.
        faulthandler.dump_traceback_later(60, exit=True)
        asyncio.run(use("child"))

    async def main():
        await use("parent")
        process = multiprocessing.get_context("fork").Process(target=child)
        process.start()
        process.join(90)
        if process.exitcode is None:
            process.kill()
            process.join()
        assert process.exitcode == 0, process.exitcode
        await use("parent-after")
        assert await cache.async_get_cache("child") == "child"
        await cache.aclose()
        print("ok", flush=True)

    asyncio.run(main())
""")


async def _script_prints_ok(script: str, db_path: str) -> None:
    """Run ``script`` with the database path: it exits 0, having printed ``ok`` only."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, db_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    assert out.decode().split() == ["ok"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
async def test_a_forked_child_opens_its_own_connections_and_threads(db_path):
    await _script_prints_ok(_FORKED, db_path)


_FORKED_MID_WRITE = textwrap.dedent("""
    import asyncio, faulthandler, os, sys
    from asynccache.backends.sqlite import SQLiteCache

    cache = SQLiteCache(path=sys.argv[1])
    big = "x" * 300_000  # over the loop's bounds: written and read by the threads

    async def use(tag):
        assert await cache.async_set_cache(tag, tag) is True
        assert await cache.async_get_cache(tag) == tag

    def child(tag):
        faulthandler.dump_traceback_later(20, exit=True)
        try:
            asyncio.run(use(tag))
        except BaseException as exc:
            print(tag, "failed:", repr(exc), file=sys.stderr, flush=True)
            os._exit(3)
        os._exit(0)

    async def main():
        await use("parent")
        for round_ in range(12):
            # The fork comes while the writer and reader threads are in the middle of
            # transactions on big values, at a different moment each round.
            busy = [asyncio.ensure_future(cache.async_set_cache(f"big{round_}-{n}", big))
                    for n in range(4)]
            busy += [asyncio.ensure_future(cache.async_get_cache(f"big{round_ - 1}-{n}"))
                     for n in range(4)]
            await asyncio.sleep(0)
            await asyncio.sleep(0.0005 * (round_ % 6))
            pid = os.fork()
            if pid == 0:
                child(f"child{round_}")
            _, status = await asyncio.to_thread(os.waitpid, pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, (round_, status)
            assert await asyncio.gather(*busy) == [True] * 4 + [big] * (4 if round_ else 0) \
                + [None] * (0 if round_ else 4)
        for round_ in range(12):
            assert await cache.async_get_cache(f"child{round_}") == f"child{round_}"
        await use("parent-after")
        await cache.aclose()
        print("ok", flush=True)

    asyncio.run(main())
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
async def test_a_child_forked_in_the_middle_of_a_transaction_can_write(db_path):
    # SQLite's per-process lock state and mutexes are inherited as they were at the fork:
    # without closing the connections at fork time, such children fail with "database is
    # locked" or hang in their first open.
    await _script_prints_ok(_FORKED_MID_WRITE, db_path)


async def test_single_sets_on_the_loop_hand_eviction_to_the_writer_thread(db_path):
    limit = 256 * 1024
    async with SQLiteCache(path=db_path, max_bytes=limit) as cache:
        backend = await _warm(cache)
        value = "x" * 1000
        loop_batches, thread_batches = backend.loop_batches, backend.thread_batches
        for i in range(600):  # one at a time: each small enough for the loop
            assert await cache.async_set_cache(f"k{i}", value) is True
        assert backend.loop_batches > loop_batches  # most commits ran on the loop
        assert backend.thread_batches > thread_batches  # those going over the bound did not
        assert backend.evictions > 0
        assert await backend._read(backend.used_bytes) <= limit
        assert await cache.async_get_cache("k599") == value
        assert await cache.async_get_cache("k0") is None


async def test_an_expired_row_is_a_miss_on_the_loop_thread_too(db_path):
    clock = FakeClock()
    async with SQLiteCache(path=db_path, clock=clock) as cache:
        backend = await _warm(cache)
        assert await cache.async_set_cache("short", 1, ttl=10) is True
        assert await cache.async_get_cache("short") == 1
        clock.advance(11)
        loop_batches, thread_batches = backend.loop_batches, backend.thread_batches
        assert await backend.read_many([cache._stored_key("short", None)]) == [None]
        assert await cache.async_get_cache("short") is None
        assert (backend.loop_batches - loop_batches, backend.thread_batches) == (2, thread_batches)
