"""The only place where sync code meets async code.

One event loop per process runs on a daemon thread, started on first use. Sync callers
hand it coroutines with :func:`run_sync`; the sync twins of the cache methods
(``get_cache`` for ``async_get_cache``...) are generated from the async methods with
:class:`sync_twin`, so nothing is written twice.

Why one long-lived loop and not ``asyncio.run`` per call: pooled clients, queues and
locks belong to the loop that made them, so a loop per call would rebuild every
connection each time and break with "attached to a different loop". Backends keep their
clients per loop with :class:`LoopLocal`, so a cache used from the caller's own loop and
through the bridge works in both places.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import contextvars
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from .exceptions import BridgeError, CacheTimeoutError

logger = logging.getLogger("asynccache.bridge")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_POLL_SECONDS = 0.05  # how often a waiting sync caller wakes to notice Ctrl-C
_EXIT_DRAIN_SECONDS = 30.0


class _Bridge:
    """The process-wide bridge loop and the hooks to run when the process exits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.exit_hooks: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def thread_id(self) -> int | None:
        return self._thread.ident if self._thread is not None else None

    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        # Checked before the fast path: after shutdown the loop object still exists but
        # no longer runs, so a call submitted to it would wait forever.
        if self._closed:
            raise BridgeError("the asynccache sync bridge has shut down (interpreter exit)")
        if loop is not None:
            return loop
        with self._lock:
            if self._closed:
                raise BridgeError("the asynccache sync bridge has shut down (interpreter exit)")
            if self._loop is None:
                ready = threading.Event()
                new_loop = asyncio.new_event_loop()

                def serve() -> None:
                    asyncio.set_event_loop(new_loop)
                    new_loop.call_soon(ready.set)
                    new_loop.run_forever()

                thread = threading.Thread(target=serve, name="asynccache-bridge", daemon=True)
                thread.start()
                ready.wait()
                self._thread, self._loop = thread, new_loop
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self._thread is not None and threading.get_ident() == self._thread.ident:
            coro.close()
            raise BridgeError(
                "a sync asynccache method was called on the bridge's own event loop thread, "
                "which would deadlock; use the async method (await cache.async_...) instead"
            )
        try:
            loop = self.loop()
        except BridgeError:
            coro.close()
            raise
        # The future exists before anything is scheduled, so a Ctrl-C that lands at any
        # point after this line (even while the task is being submitted) still reaches
        # the ``except`` below and cancels the task.
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        # The task starts from a copy of the caller's context variables (tracing ids,
        # tenant ids...).
        ctx = contextvars.copy_context()
        waited = 0.0
        try:
            try:
                loop.call_soon_threadsafe(_start_task, loop, coro, future, ctx)
            except RuntimeError:  # the loop was closed under us
                coro.close()
                raise BridgeError("the asynccache sync bridge loop is closed") from None
            while True:
                step = _POLL_SECONDS if timeout is None else min(_POLL_SECONDS, timeout - waited)
                try:
                    return future.result(timeout=max(step, 0.0))
                except concurrent.futures.TimeoutError:
                    waited += step
                    if timeout is not None and waited >= timeout:
                        raise CacheTimeoutError(
                            f"asynccache sync call did not finish within {timeout} s"
                        ) from None
        except BaseException:
            # Ctrl-C, a timeout or any other interruption: cancel the task on the loop.
            future.cancel()
            raise

    def shutdown(self) -> None:
        """Drain registered caches, then stop the loop. Runs at interpreter exit."""
        with self._lock:
            loop, self._closed = self._loop, True
        hooks = list(self.exit_hooks)
        if hooks:
            if loop is None:
                loop = asyncio.new_event_loop()
                try:
                    loop.run_until_complete(_drain_all(hooks))
                finally:
                    loop.close()
                return
            try:
                asyncio.run_coroutine_threadsafe(_drain_all(hooks), loop).result(
                    _EXIT_DRAIN_SECONDS
                )
            except Exception:
                logger.exception("asynccache: draining pending writes at exit failed")
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)


def _start_task(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, T],
    future: concurrent.futures.Future[T],
    ctx: contextvars.Context,
) -> None:
    """Runs on the bridge loop: start ``coro`` and tie it to the caller's ``future``."""
    if future.cancelled():  # interrupted before the task could start
        coro.close()
        return
    task = ctx.run(loop.create_task, coro)

    def copy_outcome(done: asyncio.Task[T]) -> None:
        if future.cancelled():
            return
        try:
            if done.cancelled():
                future.cancel()
            elif (exc := done.exception()) is not None:
                future.set_exception(exc)
            else:
                future.set_result(done.result())
        except concurrent.futures.InvalidStateError:  # cancelled by the caller meanwhile
            pass

    def cancel_task(done: concurrent.futures.Future[T]) -> None:
        if done.cancelled():
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(task.cancel)

    task.add_done_callback(copy_outcome)
    future.add_done_callback(cancel_task)


async def _drain_all(hooks: list[Any]) -> None:
    await asyncio.gather(*(hook.drain_at_exit() for hook in hooks), return_exceptions=True)


_bridge = _Bridge()


def _after_fork_in_child() -> None:
    # The bridge thread does not exist in a forked child; start afresh, keeping the
    # registered caches so their queued writes still drain at the child's exit.
    global _bridge
    hooks = list(_bridge.exit_hooks)
    _bridge = _Bridge()
    for hook in hooks:
        _bridge.exit_hooks.add(hook)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _shutdown_at_exit() -> None:
    _bridge.shutdown()


def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on the bridge loop and return its result, from any non-async code.

    Works from plain scripts, from worker threads and from a thread whose own loop is
    running (Jupyter). Context variables are copied into the call; Ctrl-C or ``timeout``
    cancels the task. Calling it on the bridge's own loop thread raises
    :class:`~asynccache.exceptions.BridgeError` instead of deadlocking.

    >>> async def add(a, b): return a + b
    >>> run_sync(add(1, 2))
    3
    """
    return _bridge.run(coro, timeout)


def bridge_loop() -> asyncio.AbstractEventLoop:
    """The bridge's event loop (started on first use)."""
    return _bridge.loop()


def register_exit_hook(obj: Any) -> None:
    """Call ``await obj.drain_at_exit()`` at interpreter exit (held by a weak reference)."""
    _bridge.exit_hooks.add(obj)


class sync_twin(Generic[P, R]):
    """Descriptor that makes the blocking twin of an async method.

    ``get_cache = sync_twin(async_get_cache)`` in a class body gives ``get_cache`` the
    same arguments and result, run through :func:`run_sync`. The twin looks the async
    method up on the instance at call time, so subclasses override only the async one.
    """

    def __init__(self, async_method: Callable[Concatenate[Any, P], Awaitable[R]]) -> None:
        self._async_name = async_method.__name__
        self.__doc__ = (
            f"Blocking twin of ``{self._async_name}`` (runs it on the sync bridge).\n\n"
            + (async_method.__doc__ or "")
        )

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> sync_twin[P, R]: ...

    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> Callable[P, R]: ...

    def __get__(self, obj: object | None, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        async_method = getattr(obj, self._async_name)
        run = run_inline if getattr(obj, "_sync_inline", False) else run_sync

        def call(*args: Any, **kwargs: Any) -> Any:
            return run(async_method(*args, **kwargs))

        call.__name__ = self._name
        call.__doc__ = self.__doc__
        return call


def run_inline(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends to completion in the calling thread.

    Used by the sync twins of loop-free caches (the in-memory backend without
    write-behind or read coalescing): they touch no loop-bound object, so the bridge's
    thread hop (tens of microseconds) would be pure overhead.
    """
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise BridgeError(
        "a loop-free cache operation tried to wait on the event loop; "
        "this is a bug in asynccache, please report it"
    )


class LoopLocal(Generic[T]):
    """One object per event loop (a client, a session, a pool), made lazily.

    ``await local.get()`` returns the object for the running loop, calling the async
    ``factory`` once per loop. :meth:`aclose_all` closes every object on its own loop
    (objects of loops that are already closed are dropped).
    """

    def __init__(
        self,
        factory: Callable[[], Awaitable[T]],
        closer: Callable[[T], Awaitable[None]] | None = None,
    ) -> None:
        self._factory = factory
        self._closer = closer
        self._items: dict[asyncio.AbstractEventLoop, T] = {}
        self._creating: dict[asyncio.AbstractEventLoop, asyncio.Future[T]] = {}

    def peek(self) -> T | None:
        """The running loop's object if it exists already."""
        try:
            return self._items.get(asyncio.get_running_loop())
        except RuntimeError:
            return None

    async def get(self) -> T:
        loop = asyncio.get_running_loop()
        item = self._items.get(loop)
        if item is not None:
            return item
        pending = self._creating.get(loop)
        if pending is not None:
            return await asyncio.shield(pending)
        pending = loop.create_future()
        self._creating[loop] = pending
        try:
            item = await self._factory()
        except BaseException as exc:
            if isinstance(exc, Exception):
                pending.set_exception(exc)
                pending.exception()  # mark retrieved: waiters re-raise their own copy
            else:
                pending.cancel()
            raise
        finally:
            self._creating.pop(loop, None)
        self._forget_closed_loops()
        self._items[loop] = item
        pending.set_result(item)
        return item

    def _forget_closed_loops(self) -> None:
        for stale in [lp for lp in self._items if lp.is_closed()]:
            del self._items[stale]

    async def aclose_all(self) -> None:
        items, self._items = self._items, {}
        if self._closer is None:
            return
        closer = self._closer
        current = asyncio.get_running_loop()
        for loop, item in items.items():
            try:
                if loop is current:
                    await closer(item)
                elif loop.is_running() and not loop.is_closed():
                    await asyncio.wrap_future(
                        asyncio.run_coroutine_threadsafe(_call(closer, item), loop)
                    )
            except Exception:
                logger.debug("asynccache: closing a per-loop client failed", exc_info=True)


async def _call(closer: Callable[[T], Awaitable[None]], item: T) -> None:
    await closer(item)
