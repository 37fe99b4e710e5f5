"""Write-behind: ``async_set_cache`` returns once the entry is queued; a worker flushes.

The worker sends one batch (one pipeline on Redis) when ``flush_size`` entries are
waiting or ``flush_interval`` seconds after the first one arrived, whichever comes first.
What the queue promises:

* read-your-writes: queued and in-flight entries are answered from the queue;
* nothing accepted is lost: entries written while a flush is in flight wait for the next
  one; a failed flush is retried with backoff, and entries finally given up are counted
  and logged with their keys; ``aclose()`` and interpreter exit drain the queue; a worker
  cancelled by its loop's shutdown puts its batch back, and the queue hands its entries
  to the sync bridge's loop when that loop ends (``asyncio.run`` returning without
  ``aclose()``); a queue with unsent entries holds itself alive, so a cache that is
  garbage-collected, a SIGTERM and a forked child's exit lose nothing either;
* bounded memory: with ``max_size`` entries queued or in flight, writers wait
  (backpressure) unless the user chose ``overflow="drop"``, where each dropped entry is
  counted and logged.

The pending entries are plain data guarded by a thread lock, so one queue can be fed
from the caller's loop and from the sync bridge's loop alike.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from .bridge import bridge_loop, hold_until_drained, is_bridge_loop, release_drained
from .exceptions import BridgeError, ConfigurationError
from .lifecycle import (
    HANDOVER,
    at_loop_end,
    chain_sigterm,
    keep_inherited,
    on_sigterm_drain,
    terminating,
)
from .stats import CacheStats

if TYPE_CHECKING:
    from .contract import WriteItem

__all__ = [
    "OVERFLOW_POLICIES",
    "FlushQueue",
]

logger = logging.getLogger("asynccache.flush")

OVERFLOW_POLICIES = ("wait", "drop")

# Every live queue, so a forked child can forget the parent's worker (see _reset_after_fork).
_QUEUES: weakref.WeakSet[FlushQueue] = weakref.WeakSet()
# Running workers, held strongly: the event loop itself keeps only weak references.
_WORKERS: set[asyncio.Task[None]] = set()


class FlushQueue:
    """Bounded write-behind queue with one background flush worker."""

    def __init__(
        self,
        write: Callable[[Sequence[WriteItem]], Awaitable[list[bool]]],
        stats: CacheStats,
        *,
        flush_size: int = 500,
        flush_interval: float = 0.05,
        max_size: int = 10_000,
        overflow: str = "wait",
        retries: int = 8,
        retry_backoff: float = 0.05,
    ) -> None:
        # 8 retries doubling from 50 ms span about 12.7 s: longer than the circuit
        # breaker's default 5 s cool-down, so a short outage costs no accepted entry.
        if flush_size < 1:
            raise ConfigurationError(f"flush_size must be >= 1, got {flush_size!r}")
        if flush_interval <= 0:
            raise ConfigurationError(f"flush_interval must be > 0 seconds, got {flush_interval!r}")
        if max_size < flush_size:
            raise ConfigurationError(
                f"max_queue_size ({max_size}) must be >= flush_size ({flush_size})"
            )
        if overflow not in OVERFLOW_POLICIES:
            raise ConfigurationError(
                f"queue_overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}"
            )
        self._write = write
        self._stats = stats
        self.flush_size = flush_size
        self.flush_interval = flush_interval
        self.max_size = max_size
        self.overflow = overflow
        self.retries = retries
        self.retry_backoff = retry_backoff
        self._lock = threading.Lock()
        self._pending: dict[str, WriteItem] = {}
        self._inflight: dict[str, WriteItem] = {}
        self._inflight_done: list[concurrent.futures.Future[None]] = []
        self._space_waiters: list[concurrent.futures.Future[None]] = []
        self._worker: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._held = False
        self._token = object()  # this queue's key among its loops' loop-end hooks
        _QUEUES.add(self)

    def _reset_after_fork(self) -> None:
        # In a forked child the worker task and its loop are copies that will never run
        # again, and the lock may have been copied while another thread held it. Start
        # afresh, keeping every accepted entry (in-flight ones go back to pending: the
        # child's own copy of the store may need them too).
        if self._worker is not None:
            self._worker._log_destroy_pending = False  # type: ignore[attr-defined]
            keep_inherited(self._worker)
        self._lock = threading.Lock()
        self._pending = {**self._inflight, **self._pending}
        self._inflight = {}
        self._inflight_done = []
        self._space_waiters = []
        self._worker = None
        self._wake = None

    # -- what callers see -------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._inflight)

    def lookup(self, key: str) -> WriteItem | None:
        """The newest queued or in-flight write of ``key`` (read-your-writes)."""
        with self._lock:
            return self._pending.get(key) or self._inflight.get(key)

    async def put_many(self, items: Sequence[WriteItem]) -> list[bool]:
        """Queue writes; waits while the queue is full (or drops, if asked to)."""
        accepted: list[bool] = []
        for item in items:
            accepted.append(await self._put(item))
        self._ensure_worker()
        if terminating():
            # The process is shutting down (SIGTERM): write through, so an entry accepted
            # now has landed before the caller (a request still being served) returns.
            await self.drain()
        return accepted

    async def _put(self, item: WriteItem) -> bool:
        key = item[0]
        while True:
            with self._lock:
                size = len(self._pending) + len(self._inflight)
                if size < self.max_size or key in self._pending:
                    self._pending.pop(key, None)
                    self._pending[key] = item
                    wake = len(self._pending) == 1 or len(self._pending) >= self.flush_size
                    first = not self._held
                    if first:
                        self._held = True
                        hold_until_drained(self)
                    break
                if self.overflow == "drop":
                    self._stats.add("dropped")
                    logger.warning("asynccache: write-behind queue full, dropped key %r", key)
                    return False
                waiter: concurrent.futures.Future[None] = concurrent.futures.Future()
                self._space_waiters.append(waiter)
            self._ensure_worker(wake=True)
            await asyncio.wrap_future(waiter)
        self._stats.add("queued")
        if first:
            # The handler in place now may be a server's own (uvicorn's, installed after
            # this cache was made): put a drain in front of it.
            chain_sigterm()
        if wake:
            self._wake_worker()
        return True

    async def forget(self, keys: Sequence[str] = (), prefix: str | None = None) -> None:
        """Drop queued writes of ``keys`` (or under ``prefix``) and wait out in-flight ones.

        Called before a delete or clear, so a write queued earlier cannot land after the
        delete and bring the entry back.
        """
        with self._lock:
            for key in keys:
                self._pending.pop(key, None)
            if prefix is not None:
                for key in [k for k in self._pending if k.startswith(prefix)]:
                    del self._pending[key]
            waits = list(self._inflight_done)
        self._release_if_empty()
        self._release_space()
        for done in waits:
            await asyncio.wrap_future(done)

    def _release_if_empty(self) -> None:
        with self._lock:
            if self._held and not self._pending and not self._inflight:
                self._held = False
                release_drained(self)

    async def drain_at_exit(self) -> None:
        """Called by the bridge at interpreter exit: send what is still queued."""
        await self.drain()

    async def send_all_now(self) -> None:
        """Send every queued and in-flight entry now, without waiting on other loops.

        Runs on the bridge loop while the thread of the queue's own loop is stopped in a
        SIGTERM handler: batches in flight there cannot finish meanwhile, so their
        entries are sent again (the same values, so sending twice is harmless).
        """
        if not self._lock.acquire(timeout=_SIGNAL_LOCK_SECONDS):
            logger.error("asynccache: queue busy at SIGTERM; its entries drain at exit")
            return
        try:
            items = [*self._inflight.values(), *self._pending.values()]
            self._pending = {}
        finally:
            self._lock.release()
        for start in range(0, len(items), self.flush_size):
            await self._send_with_retries(items[start : start + self.flush_size])
        self._release_if_empty()
        self._release_space()

    async def drain(self) -> None:
        """Flush everything queued, on the running loop, and wait for in-flight batches."""
        while True:
            flushed = await self._flush_batch()
            with self._lock:
                waits = list(self._inflight_done)
                empty = not self._pending and not self._inflight
            if empty:
                return
            if not flushed:
                for done in waits:
                    await asyncio.wrap_future(done)

    async def stop(self) -> None:
        """Drain, then stop the worker."""
        await self.drain()
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done():
            if worker.get_loop() is asyncio.get_running_loop():
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
            elif not worker.get_loop().is_closed():
                with contextlib.suppress(RuntimeError):
                    worker.get_loop().call_soon_threadsafe(worker.cancel)

    # -- the worker -------------------------------------------------------------------

    def _ensure_worker(self, wake: bool = False) -> None:
        loop = asyncio.get_running_loop()
        worker = self._worker
        if worker is not None and not worker.done():
            worker_loop = worker.get_loop()
            if worker_loop is loop or worker_loop.is_running():
                if wake:
                    self._wake_worker()
                return
            # The worker's loop is closed or not running now (a loop driven by
            # run_until_complete between calls, then sync twins on the bridge): it cannot
            # flush, so this loop takes over. The old worker is cancelled when its loop
            # runs again; a batch it had in flight goes back to the queue.
            if not worker_loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    worker_loop.call_soon_threadsafe(worker.cancel)
        self._wake = asyncio.Event()
        self._wake.set()
        worker = self._worker = loop.create_task(self._work(), name="asynccache-flush")
        _WORKERS.add(worker)
        worker.add_done_callback(_WORKERS.discard)
        if not is_bridge_loop(loop):
            at_loop_end(self._token, _handover_at_loop_end(weakref.ref(self)), HANDOVER)

    def _hand_over(self) -> None:
        """The worker's loop is ending: let a worker on the bridge loop send the rest."""
        if not self._pending_count():
            return
        try:
            bridge_loop().call_soon_threadsafe(self._ensure_worker)
        except (BridgeError, RuntimeError):  # interpreter exit: the exit drain sends them
            pass

    def _wake_worker(self) -> None:
        worker, wake = self._worker, self._wake
        if worker is None or wake is None or worker.done():
            return
        loop = worker.get_loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    async def _work(self) -> None:
        wake = self._wake
        assert wake is not None
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        while True:
            with self._lock:
                if not self._pending:
                    # Nothing to send: end rather than idle. An idle task would outlive
                    # its cache and be reported as "destroyed but pending" at exit; the
                    # next write starts a new worker.
                    if self._worker is me:
                        self._worker = None
                    return
            wake.clear()
            # One cycle: full batches go at once; what is left waits until flush_interval
            # after the cycle began (so no entry waits longer than that), then goes as one
            # partial batch. Sending the remainder of every full batch at once would double
            # the round trips under a steady stream of writes.
            deadline = loop.time() + self.flush_interval
            while True:
                while await self._flush_batch(full_only=True):
                    pass
                if not self._pending_count():
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    await self._flush_batch()
                    if self._pending_count():
                        # Entries that arrived during that flush, or keys still in flight
                        # elsewhere: a new cycle.
                        deadline = loop.time() + self.flush_interval
                    else:
                        break
                    continue
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), remaining)
                wake.clear()

    def _pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    async def _flush_batch(self, full_only: bool = False) -> bool:
        """Send one batch; return whether anything was sent."""
        with self._lock:
            # A key whose older write is still in flight stays queued until that write has
            # landed: sending both at once (drain() next to the worker) could let the
            # older value arrive last and overwrite the newer one.
            inflight = self._inflight
            keys = list(itertools.islice(
                (key for key in self._pending if key not in inflight), self.flush_size
            ))
            if not keys or (full_only and len(keys) < self.flush_size):
                return False
            batch = [self._pending.pop(key) for key in keys]
            for item in batch:
                self._inflight[item[0]] = item
            done: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._inflight_done.append(done)
        try:
            await self._send_with_retries(batch)
        except BaseException:
            # Cancelled (the loop is shutting down): put the batch back for the exit drain,
            # unless a newer write of the same key is already queued.
            with self._lock:
                for item in batch:
                    self._pending.setdefault(item[0], item)
            raise
        finally:
            with self._lock:
                for item in batch:
                    if self._inflight.get(item[0]) is item:
                        del self._inflight[item[0]]
                self._inflight_done.remove(done)
            done.set_result(None)
            self._release_if_empty()
            self._release_space()
        return True

    async def _send_with_retries(self, batch: list[WriteItem]) -> None:
        remaining = batch
        for attempt in range(self.retries + 1):
            results = await self._write(remaining)
            failed = [item for item, ok in zip(remaining, results, strict=True) if not ok]
            self._stats.add("flushed", len(remaining) - len(failed))
            if not failed:
                return
            if attempt == self.retries:
                break
            self._stats.add("flush_retries", len(failed))
            remaining = failed
            await asyncio.sleep(self.retry_backoff * (2**attempt))
        self._stats.add("given_up", len(failed))
        shown = ", ".join(repr(item[0]) for item in failed[:20])
        more = f" and {len(failed) - 20} more" if len(failed) > 20 else ""
        logger.error(
            "asynccache: gave up writing %d queued entries after %d retries: %s%s",
            len(failed), self.retries, shown, more,
        )

    def _release_space(self) -> None:
        with self._lock:
            waiters, self._space_waiters = self._space_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def _handover_at_loop_end(ref: weakref.ref[FlushQueue]) -> Callable[[], Awaitable[None]]:
    async def hand_over() -> None:
        queue = ref()
        if queue is not None:
            queue._hand_over()

    return hand_over


_SIGNAL_LOCK_SECONDS = 1.0
_SIGNAL_DRAIN_SECONDS = 20.0


def _send_all_queues_now() -> None:
    """Blocking: every queue with entries sends them on the bridge loop (SIGTERM)."""
    queues = [queue for queue in list(_QUEUES) if len(queue)]
    if not queues:
        return

    async def send() -> None:
        await asyncio.gather(*(queue.send_all_now() for queue in queues),
                             return_exceptions=True)

    try:
        asyncio.run_coroutine_threadsafe(send(), bridge_loop()).result(_SIGNAL_DRAIN_SECONDS)
    except (BridgeError, RuntimeError, concurrent.futures.TimeoutError):
        logger.error("asynccache: could not send queued writes at SIGTERM; they drain at exit")


on_sigterm_drain(_send_all_queues_now)


def _reset_queues_after_fork() -> None:
    for queue in list(_QUEUES):
        queue._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_queues_after_fork)
