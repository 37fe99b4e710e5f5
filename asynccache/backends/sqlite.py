"""SQLite backend on the standard :mod:`sqlite3` module: one durable file, the loop never held.

* The database runs in WAL mode: readers never wait for the writer, and a committed
  transaction is in the write-ahead log before the commit returns, so a process killed
  with SIGKILL loses nothing that was acknowledged (``synchronous=NORMAL``: a power
  cut may lose the last commits, a process crash does not).
* **Per-tick batching.** A get or a set registers in its loop tick's batch and
  suspends once; the first call of the tick yields to the loop, then answers every get
  of the tick with one ``SELECT ... WHERE key IN (...)`` and commits the tick's sets
  together. 64 tasks reading at once cost one query, not 64, and no call holds the loop
  across another's.
* **Small work on the loop, big work in threads.** A WAL read of cached pages or a
  ``synchronous=NORMAL`` commit of a few rows costs tens of microseconds, less than
  one hop to a thread and back, so the batch runs on the loop thread's own connection
  when it is small (at most :data:`LOOP_MAX_KEYS` keys read, :data:`LOOP_MAX_ROWS`
  rows or :data:`LOOP_MAX_BYTES` bytes written, no value read over
  :data:`LOOP_MAX_BYTES`), and at most :data:`LOOP_SLICE` callers are answered per
  pass of the loop (one transaction per slice of sets, the next slices in the next
  passes, in order), so no pass holds the loop for long. Bigger batches, a database
  another connection holds locked (the loop connection never waits: ``busy_timeout``
  0), a write that would go over ``max_bytes`` (eviction) and deletes, clears and
  increments go to the worker threads below. WAL checkpoints never run on the loop:
  its connection has ``wal_autocheckpoint=0`` and the writer thread checkpoints
  (``PASSIVE``) in the background as the log grows.
* Writes handed to threads go to one writer thread with its own connection. Whatever
  is queued when it wakes up is committed in one transaction (group commit). If any
  write of a group fails, the group is rolled back and replayed write by write, so one
  failing write never undoes the others. Either way a write is acknowledged only after
  its transaction committed, and while writes are queued for the writer thread, later
  writes of this process queue behind them (never overtaking them on the loop).
* Reads handed to threads run on a small pool of reader threads (one connection each).
* Every row has an ``expires_at`` column (indexed); expired rows are never returned, and
  the writer thread deletes them in the background every ``purge_interval`` seconds.
* ``max_bytes`` bounds the pages in use: past it, expired rows go first, then the
  oldest entries (in order of first write: a rewrite updates the row in place).
* Keys are stored as UTF-8 blobs, so ``clear(prefix)`` is a range scan of the primary
  key index (``prefix <= key < prefix || 0xFF``: no UTF-8 byte is 0xFF) that touches
  only that namespace's rows.
* Several processes may share one file. Each thread connection waits up to
  ``busy_timeout`` seconds for a lock and the writer retries a busy transaction until
  then; if the file is still locked the call fails like any backend failure (a miss, or
  ``False`` for a write, counted and logged): "database is locked" never reaches the
  caller.

>>> cache = SQLiteCache(path="llm-cache.db", ttl=3600)  # doctest: +SKIP
>>> await cache.async_set_cache("k", {"answer": 42})     # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, ClassVar, TypeVar

import orjson

from .. import envelope
from ..base import BaseCache
from ..config import NotGiven, split_settings
from ..contract import Backend, WriteItem
from ..exceptions import ConfigurationError
from ._sqlite_fork import GATE

__all__ = [
    "DEFAULT_BUSY_TIMEOUT", "DEFAULT_MAX_BYTES", "DEFAULT_PATH", "DEFAULT_PURGE_INTERVAL",
    "DEFAULT_READERS", "LOOP_MAX_BYTES", "LOOP_MAX_KEYS", "LOOP_MAX_ROWS", "LOOP_SLICE",
    "MAX_GROUP", "SQLiteBackend", "SQLiteCache",
]

DEFAULT_PATH = "./.asynccache.db"
DEFAULT_MAX_BYTES = 1024 * 1024 * 1024  # 1 GiB
DEFAULT_BUSY_TIMEOUT = 5.0
DEFAULT_PURGE_INTERVAL = 60.0
DEFAULT_READERS = 4
#: Largest number of queued writes the writer commits in one transaction.
MAX_GROUP = 2000
#: SQLite's default limit on bound parameters is 32766 (3.32+); stay well under it.
_IN_CHUNK = 500
#: Eviction deletes this share of the rows (at least 64) per round, oldest first.
_EVICT_FRACTION = 0.05
_PURGE_CHUNK = 5000
#: The most keys one tick's reads may ask for and still be answered on the loop thread.
LOOP_MAX_KEYS = 256
#: The most rows one transaction on the loop thread may write.
LOOP_MAX_ROWS = 64
#: The most bytes one transaction on the loop thread may write, and the largest value a
#: read may return there (64 KB of cached pages is tens of microseconds).
LOOP_MAX_BYTES = 64 * 1024
#: The most callers answered in one pass of the loop: each resumes in the next pass, so
#: answering 64 at once would hold that pass for 64 decodes and 64 more calls.
LOOP_SLICE = 8
#: Bytes committed on the loop between two background checkpoints (about the 1000
#: pages at which SQLite would checkpoint by itself).
_CHECKPOINT_BYTES = 4 * 1024 * 1024
#: Writer-queue marker: checkpoint the WAL (PASSIVE), nothing to answer.
_CHECKPOINT = "checkpoint"
T = TypeVar("T")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS asynccache_entries ("
    " key BLOB NOT NULL UNIQUE,"
    " value BLOB NOT NULL,"
    " expires_at REAL)",
    "CREATE INDEX IF NOT EXISTS asynccache_entries_expiry"
    " ON asynccache_entries (expires_at) WHERE expires_at IS NOT NULL",
)


_UPSERT = (
    "INSERT INTO asynccache_entries (key, value, expires_at) VALUES (?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
)


def _key(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


class _HandOver(Exception):
    """A batch the loop thread started and leaves to the writer thread."""


def _is_busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


def _retry_busy(action: Callable[[], T], deadline: float) -> T:
    """Run ``action``, retrying while another process holds the lock, until ``deadline``.

    SQLite's busy handler already waits inside most calls; this covers the cases where
    it returns at once (a lock upgrade that would deadlock, WAL recovery by another
    process) with a short back-off.
    """
    pause = 0.001
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


class _Job:
    """One queued call: a function of a connection (or rows to upsert), and its future."""

    __slots__ = ("future", "loop", "rows", "run")

    def __init__(self, run: Callable[[sqlite3.Connection], Any],
                 rows: list[tuple[bytes, bytes, float | None]] | None = None,
                 future: asyncio.Future[Any] | None = None) -> None:
        self.run = run
        self.rows = rows
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Any] = (
            self.loop.create_future() if future is None else future)


def _settle(outcomes: list[tuple[_Job, bool, Any]]) -> None:
    """Hand results to their futures (on the futures' loop)."""
    for job, ok, result in outcomes:
        if job.future.done():  # the caller was cancelled meanwhile
            continue
        if ok:
            job.future.set_result(result)
        else:
            job.future.set_exception(result)


def _deliver(outcomes: list[tuple[_Job, bool, Any]]) -> None:
    """From a worker thread: one wake-up per event loop for a whole group of results.

    (A ``call_soon_threadsafe`` per result would wake the loop once per write: 64
    self-pipe writes for a group of 64.)
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, bool, Any]]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, mine in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_settle, mine)


class _Writer:
    """The writer thread: commits every queued job of one wake-up in one transaction."""

    def __init__(self, backend: SQLiteBackend) -> None:
        self._backend = backend
        self._jobs: queue.SimpleQueue[_Job | str | None] = queue.SimpleQueue()
        #: Jobs submitted and not yet committed (or failed): while any is, the loop
        #: hands its writes here too, so they never overtake the queued ones.
        self.pending = 0
        self._pending_lock = threading.Lock()
        self._checkpoint_queued = False
        self._thread = threading.Thread(target=self._main, name="asynccache-sqlite-writer",
                                        daemon=True)
        self._thread.start()

    def submit(self, job: _Job | None) -> None:
        if job is not None:
            with self._pending_lock:
                self.pending += 1
        self._jobs.put(job)

    def checkpoint_soon(self) -> None:
        """Ask for a PASSIVE checkpoint of the WAL (once, however often asked meanwhile)."""
        if not self._checkpoint_queued:
            self._checkpoint_queued = True
            self._jobs.put(_CHECKPOINT)

    def _done(self, count: int) -> None:
        with self._pending_lock:
            self.pending -= count

    def stop(self, timeout: float) -> None:
        self._jobs.put(None)
        self._thread.join(timeout)

    def _main(self) -> None:
        with contextlib.suppress(ReferenceError):  # the cache was collected meanwhile
            self._serve()

    def _serve(self) -> None:
        backend = self._backend
        connection: sqlite3.Connection | None = None
        epoch = -1

        def connect() -> sqlite3.Connection:
            return backend.connect(writer=True)

        next_purge = time.monotonic() + backend.purge_interval
        first: _Job | str | None = None
        queued: _Job | str | None = None
        group: list[_Job] = []
        try:
            while True:
                # Drop the last group before waiting: its jobs hold the backend, which
                # must stay collectable while the thread sleeps.
                first = queued = None
                group = []
                wait = max(0.0, next_purge - time.monotonic())
                try:
                    first = self._jobs.get(timeout=wait if connection is not None else None)
                except queue.Empty:
                    if connection is not None:
                        with GATE:
                            connection, epoch = GATE.current(connection, epoch, connect)
                            self._maintain(connection)
                        next_purge = time.monotonic() + backend.purge_interval
                    continue
                if first is None:
                    return
                group = [] if isinstance(first, str) else [first]
                checkpoint = isinstance(first, str)
                stopping = False
                while len(group) < MAX_GROUP:
                    try:
                        queued = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if queued is None:
                        stopping = True
                        break
                    if isinstance(queued, str):
                        checkpoint = True
                    else:
                        group.append(queued)
                outcomes: list[tuple[_Job, bool, Any]] = []
                with GATE:
                    try:
                        connection, epoch = GATE.current(connection, epoch, connect)
                    except Exception as exc:
                        connection = None
                        outcomes = [(job, False, exc) for job in group]
                    else:
                        if group:
                            outcomes = self._commit(connection, group)
                        if checkpoint:
                            self._checkpoint_queued = False
                            # Busy: the next one catches up.
                            with contextlib.suppress(sqlite3.Error):
                                connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                if group:
                    self._done(len(group))
                    _deliver(outcomes)
                del outcomes
                if stopping:
                    return
        finally:
            if connection is not None:
                with GATE:
                    GATE.close(connection)

    def _commit(self, connection: sqlite3.Connection,
                group: list[_Job]) -> list[tuple[_Job, bool, Any]]:
        """Run ``group`` in one transaction; if any job fails, run each in its own.

        The common case (nothing fails) costs one transaction and, for plain writes,
        one ``executemany`` for the rows of the whole group: the writer thread holds the
        GIL as briefly as possible, since the event loop needs it too. A failing job
        must not undo the others, so on the rare failure the group is rolled back and
        replayed job by job.
        """
        try:
            results = self._transaction(connection, group)
        except Exception as exc:
            if len(group) == 1:
                return [(group[0], False, exc)]
            outcomes: list[tuple[_Job, bool, Any]] = []
            for job in group:
                try:
                    outcomes.append((job, True, self._transaction(connection, [job])[0]))
                except Exception as single:
                    outcomes.append((job, False, single))
            return outcomes
        return [(job, True, result) for job, result in zip(group, results, strict=True)]

    def _transaction(self, connection: sqlite3.Connection, group: list[_Job]) -> list[Any]:
        deadline = time.monotonic() + self._backend.busy_timeout
        try:
            _retry_busy(lambda: connection.execute("BEGIN IMMEDIATE"), deadline)
            results: list[Any] = []
            rows: list[tuple[bytes, bytes, float | None]] = []
            for job in group:
                if job.rows is not None:
                    rows.extend(job.rows)  # written below, in one statement for all
                    results.append(None)
                else:
                    if rows:  # keep the order of writes and other jobs
                        self._backend.upsert_rows(connection, rows)
                        rows = []
                    results.append(job.run(connection))
            if rows:
                self._backend.upsert_rows(connection, rows)
            self._backend.enforce_bound(connection)
            _retry_busy(lambda: connection.execute("COMMIT"), deadline)
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        self._backend.commits += 1
        return results

    def _maintain(self, connection: sqlite3.Connection) -> None:
        try:
            deadline = time.monotonic() + self._backend.busy_timeout
            _retry_busy(lambda: connection.execute("BEGIN IMMEDIATE"), deadline)
            self._backend.purge_expired(connection)
            _retry_busy(lambda: connection.execute("COMMIT"), deadline)
        except Exception:
            # A background purge that loses a lock race simply runs again next time.
            if connection.in_transaction:
                connection.execute("ROLLBACK")


Row = tuple[bytes, bytes, float | None]


class _Tick:
    """The reads and writes registered during one loop tick, answered together."""

    __slots__ = ("carried", "reads", "writes")

    def __init__(self) -> None:
        self.reads: list[tuple[list[bytes], asyncio.Future[Any]]] = []
        self.writes: list[tuple[list[Row], asyncio.Future[Any]]] = []
        #: Writes at the front of ``writes`` carried over from earlier ticks.
        self.carried = 0


def _select_sql(count: int) -> str:
    # A value over the bound comes back as NULL (``length`` does not load it): the
    # batch then goes to a reader thread.
    return ("SELECT key, CASE WHEN length(value) <= ? THEN value END FROM asynccache_entries"
            f" WHERE key IN ({','.join('?' * count)})"
            " AND (expires_at IS NULL OR expires_at > ?)")


#: The loop's read statement for each number of keys (built once, not per batch).
_SELECT_SQL = [""] + [_select_sql(count) for count in range(1, LOOP_MAX_KEYS + 1)]


class _Readers:
    """Reader threads, each with its own connection, serving one queue of read jobs.

    A plain queue and one ``call_soon_threadsafe`` per result cost about half of what
    ``run_in_executor`` does per hop (measured ~90 us vs ~185 us on a busy 2-core host).
    """

    def __init__(self, backend: SQLiteBackend, count: int) -> None:
        self._backend = backend
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._main, daemon=True,
                                          name=f"asynccache-sqlite-reader-{n}")
                         for n in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: _Job) -> None:
        self._jobs.put(job)

    def _main(self) -> None:
        connection: sqlite3.Connection | None = None
        epoch = -1
        try:
            while True:
                job: _Job | None = self._jobs.get()
                if job is None:
                    return
                try:
                    with GATE:
                        connection, epoch = GATE.current(connection, epoch, self._connect)
                        outcome: tuple[_Job, bool, Any] = (job, True, job.run(connection))
                except Exception as exc:
                    outcome = (job, False, exc)
                _deliver([outcome])
                del outcome  # see _Writer._serve: keep the backend collectable
                job = None
        finally:
            if connection is not None:
                with GATE:
                    GATE.close(connection)

    def _connect(self) -> sqlite3.Connection:
        return self._backend.connect(writer=False)

    def release(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)

    def stop(self, timeout: float) -> None:
        self.release()
        for thread in self._threads:
            thread.join(timeout)


class _Threads:
    """The writer and readers of one process (threads do not survive a fork).

    The threads hold the backend through a weak proxy, so a cache that is dropped
    without ``aclose()`` is still collected; its finalizer then tells the threads to
    finish what is queued and exit (queued jobs keep the backend alive until done).
    """

    def __init__(self, backend: SQLiteBackend, readers: int) -> None:
        self.pid = os.getpid()
        proxy = weakref.proxy(backend)
        self.writer = _Writer(proxy)
        self.readers = _Readers(proxy, readers)

    def close(self, timeout: float) -> None:
        self.writer.stop(timeout)
        self.readers.stop(timeout)

    def release(self) -> None:
        """Ask the threads to exit after their queued work, without waiting (this may
        run on one of them, when the last reference goes there)."""
        self.writer.submit(None)
        self.readers.release()


class SQLiteBackend(Backend):
    """Entries in one SQLite file, shared safely by threads and processes.

    Settings: ``path`` (the file; ``":memory:"`` is refused because the threads would
    each see their own empty database), ``max_bytes`` (bound on the pages in use),
    ``busy_timeout`` (seconds to wait for another process's lock), ``purge_interval``
    (seconds between background purges of expired rows), ``readers`` (reader threads).
    """

    name: ClassVar[str] = "sqlite"
    # The backend batches each loop tick itself (one query, one commit), and nothing it
    # does can hang: the loop connection never waits for a lock and the threads wait at
    # most ``busy_timeout``. So no read coalescer and no timeout in front of it.
    remote: ClassVar[bool] = False
    max_batch: ClassVar[int] = 1000

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_PATH, *,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
                 purge_interval: float = DEFAULT_PURGE_INTERVAL,
                 readers: int = DEFAULT_READERS) -> None:
        if not isinstance(path, str | os.PathLike) or not os.fspath(path):
            raise ConfigurationError(f"path must be a non-empty file path, got {path!r:.200}")
        text = os.fspath(path)
        if text == ":memory:" or text.startswith("file:"):
            raise ConfigurationError(
                f"path must be a file on disk, got {text!r}; use Cache() for memory"
            )
        for name, value, kind in (("max_bytes", max_bytes, int), ("readers", readers, int),
                                  ("busy_timeout", busy_timeout, float),
                                  ("purge_interval", purge_interval, float)):
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or (kind is int and not isinstance(value, int)) or value <= 0):
                raise ConfigurationError(f"{name} must be a positive {kind.__name__}, "
                                         f"got {value!r}")
        # Resolved now (string work only, nothing created) so a later chdir() cannot move it.
        self.path = os.path.abspath(os.path.expanduser(text))
        self.max_bytes = max_bytes
        self.busy_timeout = float(busy_timeout)
        self.purge_interval = float(purge_interval)
        self.readers = readers
        self.evictions = 0
        #: Transactions the writer committed and batches the readers served (for tests and
        #: benchmarks: group commit and read coalescing show up as fewer of them).
        self.commits = 0
        self.read_batches = 0
        self._threads: _Threads | None = None
        self._threads_lock = threading.Lock()
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        #: Loop connections by thread id (opened in a worker thread, used on the loop
        #: thread), opened in the fork gate's epoch ``_loop_epoch``.
        self._loop_connections: dict[int, sqlite3.Connection] = {}
        self._loop_epoch = GATE.epoch
        self._opening: set[int] = set()
        self._ticks: dict[asyncio.AbstractEventLoop, _Tick] = {}
        self._page_size = 4096
        self._bytes_since_checkpoint = 0
        #: Batches answered on the loop thread and handed to threads (for tests and
        #: benchmarks).
        self.loop_batches = 0
        self.thread_batches = 0

    # -- connections and threads ---------------------------------------------------------

    def connect(self, *, writer: bool, on_loop: bool = False) -> sqlite3.Connection:
        """A connection to the file with the cache's settings (opened in a worker thread,
        inside the fork gate: see :mod:`asynccache.backends._sqlite_fork`).

        ``on_loop``: the connection a loop thread uses for small batches; it never waits
        for a lock (``busy_timeout`` 0: a busy database sends the batch to a thread) and
        never checkpoints (the writer thread does).
        """
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        # The loop connection keeps a prepared statement per batch size it has read.
        connection = sqlite3.connect(self.path, timeout=self.busy_timeout,
                                     isolation_level=None, check_same_thread=False,
                                     cached_statements=LOOP_MAX_KEYS + 32 if on_loop else 128)
        try:
            deadline = time.monotonic() + self.busy_timeout
            mode = _retry_busy(
                lambda: connection.execute("PRAGMA journal_mode=WAL").fetchone(), deadline
            )
            if mode is None or str(mode[0]).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot turn on WAL mode for {self.path}")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._ensure_schema(connection, deadline)
            if on_loop:
                connection.execute("PRAGMA busy_timeout=0")
                connection.execute("PRAGMA wal_autocheckpoint=0")
        except BaseException:
            connection.close()
            raise
        GATE.opened(connection)
        return connection

    def _ensure_schema(self, connection: sqlite3.Connection, deadline: float) -> None:
        with self._schema_lock:
            if self._schema_ready:
                return

            def create() -> None:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _SCHEMA:
                        connection.execute(statement)
                    connection.execute("COMMIT")
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise

            _retry_busy(create, deadline)
            self._schema_ready = True

    def _threads_now(self) -> _Threads:
        threads = self._threads
        if threads is not None and threads.pid == os.getpid():
            return threads
        with self._threads_lock:
            threads = self._threads
            if threads is None or threads.pid != os.getpid():
                # A forked child inherits no threads: start its own (the parent's
                # connections are dropped, never used or closed, as SQLite requires).
                threads = self._threads = _Threads(self, self.readers)
                weakref.finalize(self, threads.release)
                self._schema_ready = False
            return threads

    async def _write(self, run: Callable[[sqlite3.Connection], T]) -> T:
        job = _Job(run)
        self._threads_now().writer.submit(job)
        result: T = await job.future
        return result

    async def _read(self, run: Callable[[sqlite3.Connection], T]) -> T:
        job = _Job(run)
        self._threads_now().readers.submit(job)
        result: T = await job.future
        return result

    # -- per-tick batches, answered on the loop thread when small -------------------------

    async def _in_tick(self, keys: list[bytes] | None, rows: list[Row] | None) -> Any:
        """Join this loop tick's batch: the rows to write, or the keys to read."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        tick = self._ticks.get(loop)
        leader = tick is None
        if tick is None:
            tick = self._ticks[loop] = _Tick()
        if rows is not None:
            tick.writes.append((rows, future))
        elif keys is not None:
            tick.reads.append((keys, future))
        if not leader:
            return await future
        try:
            # One pass of the loop: every task already scheduled in this tick joins in.
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            future.cancel()
            raise
        finally:
            if self._ticks.get(loop) is tick:
                del self._ticks[loop]
            # Even when this caller was cancelled: the others still get their answers.
            self._flush(tick)
        return await future

    def _flush(self, tick: _Tick) -> None:
        with GATE:
            connection = self._loop_connection()
            if tick.writes:  # first, so a read of the same tick sees them
                self._flush_writes(connection, tick.writes)
            if tick.reads:
                self._flush_reads(connection, tick.reads)

    def _carry(self, writes: list[tuple[list[Row], asyncio.Future[Any]]]) -> None:
        """Put writes at the front of the next tick, after those carried before them
        (committed in the next pass, before anything registered later: writes are
        committed in the order they were made)."""
        loop = asyncio.get_running_loop()
        tick = self._ticks.get(loop)
        if tick is None:
            tick = self._ticks[loop] = _Tick()
            loop.call_soon(self._flush_carried, loop, tick)
        tick.writes[tick.carried:tick.carried] = writes
        tick.carried += len(writes)

    def _flush_carried(self, loop: asyncio.AbstractEventLoop, tick: _Tick) -> None:
        if self._ticks.get(loop) is tick:
            del self._ticks[loop]
        self._flush(tick)

    @staticmethod
    def _answer_in_slices(answers: list[tuple[asyncio.Future[Any], Any]]) -> None:
        """Answer :data:`LOOP_SLICE` callers now and the rest in the next passes."""
        for future, result in answers[:LOOP_SLICE]:
            if not future.done():
                future.set_result(result)
        if len(answers) > LOOP_SLICE:
            asyncio.get_running_loop().call_soon(SQLiteBackend._answer_in_slices,
                                                 answers[LOOP_SLICE:])

    def _loop_connection(self) -> sqlite3.Connection | None:
        """This thread's loop connection; ``None`` while a worker thread opens it."""
        if self._loop_epoch != GATE.epoch:  # a fork closed them (or left them to the parent)
            for stale in self._loop_connections.values():
                GATE.close(stale)
            self._loop_connections, self._opening = {}, set()
            self._loop_epoch = GATE.epoch
        ident = threading.get_ident()
        connection = self._loop_connections.get(ident)
        if connection is None and ident not in self._opening:
            # Opening creates the file and the schema: disk work, never on the loop.
            self._opening.add(ident)
            job = _Job(lambda _: self._open_loop_connection(ident))
            self._threads_now().readers.submit(job)
            job.future.add_done_callback(lambda done: self._opened(ident, done))
        return connection

    def _open_loop_connection(self, ident: int) -> None:
        connection = self.connect(writer=False, on_loop=True)
        self._page_size = int(connection.execute("PRAGMA page_size").fetchone()[0])
        self._loop_connections[ident] = connection

    def _opened(self, ident: int, done: asyncio.Future[Any]) -> None:
        self._opening.discard(ident)
        if not done.cancelled():
            done.exception()  # a failure is retried by the next batch, not logged here

    def _flush_writes(self, connection: sqlite3.Connection | None,
                      entries: list[tuple[list[Row], asyncio.Future[Any]]]) -> None:
        # A loop connection exists only once this process's threads do.
        writer = (self._threads if connection is not None and self._threads is not None
                  else self._threads_now()).writer
        # The first LOOP_SLICE callers' writes, within the bounds, commit now; the rest
        # in the next pass. A first write over the bounds sends them all to the writer.
        rows: list[Row] = []
        size = 0
        taken = 0
        for entry_rows, _ in entries[:LOOP_SLICE]:
            entry_size = sum(len(row[1]) for row in entry_rows)
            if (len(rows) + len(entry_rows) > LOOP_MAX_ROWS
                    or size + entry_size > LOOP_MAX_BYTES):
                break
            rows.extend(entry_rows)
            size += entry_size
            taken += 1
        if connection is None or not taken or writer.pending:
            self._writes_to_thread(entries)
            return
        if taken < len(entries):
            self._carry(entries[taken:])
            entries = entries[:taken]
        try:
            if connection.in_transaction:  # left open by a failed ROLLBACK: never reuse it
                connection.execute("ROLLBACK")
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:  # another connection holds the write lock: wait in a thread
            self._writes_to_thread(entries)
            return
        try:
            self.upsert_rows(connection, rows)
            if self._over_bound(connection):
                # Eviction deletes many rows: the writer thread redoes this batch.
                raise _HandOver
            connection.execute("COMMIT")
        except Exception:
            if connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            self._writes_to_thread(entries)
            return
        self.commits += 1
        self.loop_batches += 1
        for _, future in entries:  # at most LOOP_SLICE
            if not future.done():
                future.set_result(None)
        self._bytes_since_checkpoint += size
        if self._bytes_since_checkpoint >= _CHECKPOINT_BYTES:
            self._bytes_since_checkpoint = 0
            writer.checkpoint_soon()

    def _over_bound(self, connection: sqlite3.Connection) -> bool:
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        if pages * self._page_size <= self.max_bytes:
            return False
        free = connection.execute("PRAGMA freelist_count").fetchone()[0]
        return bool((pages - free) * self._page_size > self.max_bytes)

    def _writes_to_thread(self, entries: list[tuple[list[Row], asyncio.Future[Any]]]) -> None:
        self.thread_batches += 1
        writer = self._threads_now().writer
        for rows, future in entries:
            writer.submit(_Job(partial(self.upsert_rows, rows=rows), rows, future))

    def _flush_reads(self, connection: sqlite3.Connection | None,
                     entries: list[tuple[list[bytes], asyncio.Future[Any]]]) -> None:
        wanted = (entries[0][0] if len(entries) == 1
                  else list(dict.fromkeys(key for keys, _ in entries for key in keys)))
        if connection is None or len(wanted) > LOOP_MAX_KEYS:
            self._reads_to_thread(entries)
            return
        try:
            rows = connection.execute(_SELECT_SQL[len(wanted)],
                                      (LOOP_MAX_BYTES, *wanted, self.clock())).fetchall()
        except sqlite3.Error:  # busy (WAL recovery by another process) or a failure
            self._reads_to_thread(entries)
            return
        found: dict[bytes, bytes | None] = dict(rows)
        if None in found.values():  # a value over LOOP_MAX_BYTES
            self._reads_to_thread(entries)
            return
        self.read_batches += 1
        self.loop_batches += 1
        if len(entries) == 1:  # a lone get: no slices
            keys, future = entries[0]
            if not future.done():
                future.set_result([found.get(key) for key in keys])
            return
        self._answer_in_slices([(future, [found.get(key) for key in keys])
                                for keys, future in entries])

    def _reads_to_thread(self, entries: list[tuple[list[bytes], asyncio.Future[Any]]]) -> None:
        self.thread_batches += 1
        wanted = [key for keys, _ in entries for key in keys]
        now = self.clock()
        job = _Job(lambda connection: self._select(connection, wanted, now))
        self._threads_now().readers.submit(job)

        def answer(done: asyncio.Future[Any]) -> None:
            failure = None if done.cancelled() else done.exception()
            start = 0
            for keys, future in entries:
                if not future.done():
                    if failure is not None:
                        future.set_exception(failure)
                    else:
                        future.set_result(done.result()[start : start + len(keys)])
                start += len(keys)

        job.future.add_done_callback(answer)

    # -- work done on the threads --------------------------------------------------------

    def _select(self, connection: sqlite3.Connection, wanted: Sequence[bytes],
                now: float) -> list[bytes | None]:
        self.read_batches += 1
        found: dict[bytes, bytes] = {}
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = list(dict.fromkeys(wanted[start : start + _IN_CHUNK]))
            marks = ",".join("?" * len(chunk))
            rows = connection.execute(
                f"SELECT key, value FROM asynccache_entries WHERE key IN ({marks})"
                " AND (expires_at IS NULL OR expires_at > ?)", (*chunk, now),
            ).fetchall()
            found.update(rows)
        return [found.get(key) for key in wanted]

    @staticmethod
    def upsert_rows(connection: sqlite3.Connection, rows: Sequence[Row]) -> None:
        """Write ``(key, value, expires_at)`` rows (inside the writer's transaction)."""
        # An upsert rewrites a key's row in place (half the cost of REPLACE, which
        # deletes and inserts the row and both index entries); rowid order is therefore
        # first-write order, which eviction removes oldest-first.
        connection.executemany(_UPSERT, rows)

    def purge_expired(self, connection: sqlite3.Connection) -> int:
        """Delete expired rows (inside the writer's transaction); return how many."""
        now = self.clock()
        removed = 0
        while True:
            cursor = connection.execute(
                "DELETE FROM asynccache_entries WHERE rowid IN (SELECT rowid FROM"
                " asynccache_entries WHERE expires_at <= ? LIMIT ?)", (now, _PURGE_CHUNK),
            )
            removed += cursor.rowcount
            if cursor.rowcount < _PURGE_CHUNK:
                return removed

    def used_bytes(self, connection: sqlite3.Connection) -> int:
        """Bytes of the database pages holding data (free pages excluded)."""
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        free = connection.execute("PRAGMA freelist_count").fetchone()[0]
        size = connection.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def enforce_bound(self, connection: sqlite3.Connection) -> None:
        """Bring the pages in use under ``max_bytes``: expired rows first, then the oldest."""
        if self.used_bytes(connection) <= self.max_bytes:
            return
        self.purge_expired(connection)
        while self.used_bytes(connection) > self.max_bytes:
            rows = connection.execute("SELECT count(*) FROM asynccache_entries").fetchone()[0]
            if rows <= 1:
                return
            victims = max(64, int(rows * _EVICT_FRACTION))
            cursor = connection.execute(
                "DELETE FROM asynccache_entries WHERE rowid IN (SELECT rowid FROM"
                " asynccache_entries ORDER BY rowid LIMIT ?)", (min(victims, rows - 1),),
            )
            self.evictions += cursor.rowcount

    # -- the backend contract ------------------------------------------------------------

    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        found: list[bytes | None] = await self._in_tick([_key(key) for key in keys], None)
        return found

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        if not items:
            return None
        now = self.clock()
        max_bytes = self.max_bytes
        rows = [(_key(key), data, None if ttl is None else now + ttl)
                for key, data, ttl in items if len(data) <= max_bytes]
        if rows:
            await self._in_tick(None, rows)
        if len(rows) == len(items):
            return None
        return [len(data) <= max_bytes for _, data, _ in items]

    async def remove_many(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        wanted = list(dict.fromkeys(_key(key) for key in keys))

        def delete(connection: sqlite3.Connection) -> int:
            count = 0
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                count += connection.execute(
                    f"DELETE FROM asynccache_entries WHERE key IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).rowcount
            return count

        return await self._write(delete)

    async def remove_prefix(self, prefix: str) -> int:
        low = _key(prefix)

        def clear(connection: sqlite3.Connection) -> int:
            if not low:
                return connection.execute("DELETE FROM asynccache_entries").rowcount
            return connection.execute(
                "DELETE FROM asynccache_entries WHERE key >= ? AND key < ?", (low, low + b"\xff"),
            ).rowcount

        return await self._write(clear)

    async def increment_counter(self, key: str, amount: float, ttl: float | None) -> float:
        stored = _key(key)
        now = self.clock()

        def add(connection: sqlite3.Connection) -> float:
            # Inside the writer's IMMEDIATE transaction: atomic across processes too.
            row = connection.execute(
                "SELECT value, expires_at FROM asynccache_entries WHERE key = ?"
                " AND (expires_at IS NULL OR expires_at > ?)", (stored, now),
            ).fetchone()
            value = envelope.counter_value(None if row is None else row[0]) + amount
            # An existing counter keeps its expiry.
            expires_at = (None if ttl is None else now + ttl) if row is None else row[1]
            connection.execute(_UPSERT, (stored, orjson.dumps(value), expires_at))
            return value

        return await self._write(add)

    async def stored_ttl(self, key: str) -> float | NotGiven | None:
        stored = _key(key)
        now = self.clock()

        def expiry(connection: sqlite3.Connection) -> tuple[float | None] | None:
            row = connection.execute(
                "SELECT expires_at FROM asynccache_entries WHERE key = ?"
                " AND (expires_at IS NULL OR expires_at > ?)", (stored, now),
            ).fetchone()
            return None if row is None else (row[0],)

        found = await self._read(expiry)
        if found is None or found[0] is None:
            return None
        return max(0.0, found[0] - now)

    async def purge(self) -> int:
        """Delete expired rows now (the writer also does it every ``purge_interval``)."""
        return await self._write(self.purge_expired)

    async def count(self) -> int:
        """Rows in the table, expired ones included until purged."""
        def rows(connection: sqlite3.Connection) -> int:
            return int(connection.execute("SELECT count(*) FROM asynccache_entries").fetchone()[0])

        return await self._read(rows)

    async def check_health(self) -> None:
        await self._read(lambda connection: connection.execute("SELECT 1").fetchone())

    async def aclose(self) -> None:
        with self._threads_lock:
            threads, self._threads = self._threads, None
        if threads is None or threads.pid != os.getpid():
            return

        def close() -> None:
            threads.close(self.busy_timeout + 5)
            # After the threads (one of them may still be opening a loop connection), and
            # here rather than on the loop: the last connection closed checkpoints the WAL.
            connections, self._loop_connections = self._loop_connections, {}
            with GATE:
                for connection in connections.values():
                    GATE.close(connection)

        await asyncio.to_thread(close)

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "max_bytes": self.max_bytes}


class SQLiteCache(BaseCache):
    """Persistent cache in one SQLite file: durable, shared by processes on one host.

    ``path`` is the file (created with its folder on first use); ``max_bytes`` bounds the
    data pages (oldest writes evicted first). Every :class:`~asynccache.base.BaseCache`
    setting (``namespace``, ``ttl``...) applies.

    >>> cache = SQLiteCache(path="./llm-cache.db", ttl=3600)  # doctest: +SKIP
    >>> cache.set_cache("greeting", {"text": "hello"})        # doctest: +SKIP
    True
    """

    def __init__(self, **settings: Any) -> None:
        backend, cache = split_settings("SQLiteCache", settings, SQLiteBackend)
        super().__init__(SQLiteBackend(**backend), **cache)
