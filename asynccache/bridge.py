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
import concurrent.futures
import contextlib
import contextvars
import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from .exceptions import BridgeError, CacheTimeoutError
from .lifecycle import at_loop_end, at_process_exit, keep_inherited, process_generation

__all__ = [
    "DEFAULT_SYNC_DEADLINE",
    "LoopLocal",
    "bridge_loop",
    "hold_until_drained",
    "is_bridge_loop",
    "is_caller_loop",
    "register_exit_hook",
    "release_drained",
    "run_inline",
    "run_on_caller_thread",
    "run_sync",
    "sync_twin",
]

logger = logging.getLogger("asynccache.bridge")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_POLL_SECONDS = 0.05  # how often a waiting sync caller wakes to notice Ctrl-C or a dead loop
_EXIT_DRAIN_SECONDS = 30.0
#: Longest a sync call waits on the bridge loop when no ``timeout`` is given. Every cache
#: operation is bounded well below this by its own timeouts; the deadline only turns a
#: stalled bridge into a clear error instead of a hang.
DEFAULT_SYNC_DEADLINE = 300.0
_CLOSE_SECONDS = 5.0


#: Signals sent to the whole process (kill, Ctrl-C, a pool terminating its workers).
_PROCESS_SIGNALS = {getattr(signal, name) for name in (
    "SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCHLD",
) if hasattr(signal, name)}


def _block_process_signals() -> None:
    # The kernel may deliver a process-directed signal to any thread that does not block
    # it. Delivered to the bridge thread, it would not interrupt the main thread's
    # blocking call (a multiprocessing worker waiting for its next task), so Python
    # would never get to run the handler there, and the process would not stop.
    if hasattr(signal, "pthread_sigmask"):
        with contextlib.suppress(OSError, ValueError):
            signal.pthread_sigmask(signal.SIG_BLOCK, _PROCESS_SIGNALS)


class _Call:
    """One sync call waiting on the bridge: a pre-acquired lock the loop releases."""

    __slots__ = ("abandoned", "done", "error", "result", "task")

    def __init__(self) -> None:
        self.done = threading.Lock()
        self.done.acquire()
        self.result: Any = None
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        self.abandoned = False


async def _run_call(call: _Call, coro: Coroutine[Any, Any, Any]) -> None:
    # The outcome is handed over from inside the task's last step: no done-callback, so
    # no extra loop iteration between the result and the caller waking.
    try:
        call.result = await coro
    except BaseException as exc:  # handed to the caller, who re-raises it
        call.error = exc
    finally:
        call.done.release()


class _Bridge:
    """The process-wide bridge loop and what to drain when the process exits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        #: Objects drained at exit while they live (held weakly).
        self.exit_hooks: weakref.WeakSet[Any] = weakref.WeakSet()
        #: Objects with accepted, unsent writes: held strongly until drained, so a queue
        #: whose cache was garbage-collected still reaches the store.
        self.pending: set[Any] = set()

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
                    _block_process_signals()
                    asyncio.set_event_loop(new_loop)
                    new_loop.call_soon(ready.set)
                    new_loop.run_forever()

                thread = threading.Thread(target=serve, name="asynccache-bridge", daemon=True)
                thread.start()
                if not ready.wait(_CLOSE_SECONDS * 6):
                    raise BridgeError("the asynccache sync bridge thread did not start")
                self._thread, self._loop = thread, new_loop
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        thread = self._thread
        if thread is not None and threading.get_ident() == thread.ident:
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
        thread = self._thread
        if thread is None or not thread.is_alive():
            coro.close()
            raise BridgeError("the asynccache sync bridge thread is gone; the call was not made")
        limit = DEFAULT_SYNC_DEADLINE if timeout is None else timeout
        # The call record exists before anything is scheduled, so a Ctrl-C that lands at
        # any point after this line (even while the task is being submitted) still
        # reaches the ``except`` below and cancels the task. The task starts from a copy
        # of the caller's context variables (tracing ids, tenant ids...).
        call = _Call()
        try:
            try:
                loop.call_soon_threadsafe(_start_call, loop, call, coro,
                                          contextvars.copy_context())
            except RuntimeError:  # the loop was closed under us
                coro.close()
                raise BridgeError("the asynccache sync bridge loop is closed") from None
            deadline = time.monotonic() + limit
            acquire = call.done.acquire
            while not acquire(True, _POLL_SECONDS):
                if thread is None or not thread.is_alive():
                    raise BridgeError(
                        "the asynccache sync bridge thread is gone (interpreter exit?); "
                        "the call was abandoned"
                    )
                if time.monotonic() >= deadline:
                    raise CacheTimeoutError(
                        f"asynccache sync call did not finish within {limit} s")
        except BaseException:
            # Ctrl-C, a timeout or any other interruption: cancel the task on the loop.
            call.abandoned = True
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_cancel_call, call)
            raise
        if call.error is not None:
            error, call.error = call.error, None
            if isinstance(error, asyncio.CancelledError):
                raise concurrent.futures.CancelledError() from None
            raise error
        result: T = call.result
        return result

    def hold(self, obj: Any) -> None:
        """Keep ``obj`` (it has ``async drain_at_exit()``) alive until :meth:`release`."""
        self.pending.add(obj)

    def release(self, obj: Any) -> None:
        self.pending.discard(obj)

    def shutdown(self) -> None:
        """Drain pending writes, close the loop's clients, stop the loop. Runs at exit."""
        with self._lock:
            loop, self._closed = self._loop, True
        hooks = [*self.exit_hooks, *self.pending]
        thread = self._thread
        if loop is None:
            if hooks:
                temporary = asyncio.new_event_loop()
                try:
                    temporary.run_until_complete(_finish(hooks))
                finally:
                    temporary.close()
            return
        if thread is None or not thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(_finish(hooks), loop).result(
                _EXIT_DRAIN_SECONDS + _CLOSE_SECONDS
            )
        except Exception:
            logger.exception("asynccache: draining pending writes at exit failed")
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        thread.join(_CLOSE_SECONDS)
        if not thread.is_alive():
            loop.close()


def _start_call(loop: asyncio.AbstractEventLoop, call: _Call,
                coro: Coroutine[Any, Any, Any], ctx: contextvars.Context) -> None:
    """Runs on the bridge loop: start ``coro`` as a task that reports to ``call``."""
    if call.abandoned:  # interrupted before the task could start
        coro.close()
        return
    call.task = ctx.run(loop.create_task, _run_call(call, coro))


def _cancel_call(call: _Call) -> None:
    if call.task is not None:
        call.task.cancel()


async def _finish(hooks: list[Any]) -> None:
    """On the loop being shut down: drain, cancel what is left, close per-loop clients."""
    try:
        await asyncio.wait_for(
            asyncio.gather(*(hook.drain_at_exit() for hook in hooks), return_exceptions=True),
            _EXIT_DRAIN_SECONDS,
        )
    except (TimeoutError, asyncio.TimeoutError):
        logger.error("asynccache: draining pending writes at exit took over %s s; gave up",
                     _EXIT_DRAIN_SECONDS)
    current = asyncio.current_task()
    leftovers = [task for task in asyncio.all_tasks() if task is not current]
    for task in leftovers:
        task.cancel()
    if leftovers:
        await asyncio.wait(leftovers, timeout=_CLOSE_SECONDS)
    # Runs the loop-end hooks (lifecycle.at_loop_end): connection pools close here.
    await asyncio.get_running_loop().shutdown_asyncgens()


_bridge = _Bridge()


def _after_fork_in_child() -> None:
    # The bridge thread does not exist in a forked child; start afresh, keeping the
    # registered caches and queues so their accepted writes still drain at the child's
    # exit. The parent's loop object is kept, untouched: its selector and wake-up pipe
    # are shared with the parent.
    global _bridge
    old = _bridge
    keep_inherited((old._loop, old._thread))
    _bridge = _Bridge()
    for hook in list(old.exit_hooks):
        _bridge.exit_hooks.add(hook)
    _bridge.pending = set(old.pending)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _shutdown_at_exit() -> None:
    _bridge.shutdown()


at_process_exit(_shutdown_at_exit)


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


def hold_until_drained(obj: Any) -> None:
    """Keep ``obj`` alive (strongly) until :func:`release_drained`; drain it at exit.

    Write-behind queues hold themselves here while they have unsent entries, so an
    unreferenced cache cannot take accepted writes with it.
    """
    _bridge.hold(obj)


def release_drained(obj: Any) -> None:
    """``obj`` has nothing left to send: stop holding it."""
    _bridge.release(obj)


def is_bridge_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` is this process's bridge loop."""
    return loop is _bridge._loop


class sync_twin(Generic[P, R]):
    """Descriptor that makes the blocking twin of an async method.

    ``get_cache = sync_twin(async_get_cache)`` in a class body gives ``get_cache`` the
    same arguments and result, run through :func:`run_sync`. The twin looks the async
    method up on the instance at call time, so subclasses override only the async one.

    ``lean`` names a method with the async method's signature that does the whole call
    without a coroutine on a loop-free cache (``_sync_inline``): the twin calls it
    directly, unless a subclass or the instance replaced the async method.
    """

    def __init__(self, async_method: Callable[Concatenate[Any, P], Awaitable[R]], *,
                 lean: str | None = None) -> None:
        self._async_method = async_method
        self._lean = lean
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
        if getattr(obj, "_sync_inline", False):
            return self._inline_twin(obj)
        async_method = getattr(obj, self._async_name)
        if getattr(obj, "_sync_on_caller_thread", False):
            run: Callable[[Coroutine[Any, Any, Any]], Any] = run_on_caller_thread
        else:
            run = run_sync

        def call(*args: Any, **kwargs: Any) -> Any:
            return run(async_method(*args, **kwargs))

        call.__name__ = self._name
        call.__doc__ = self.__doc__
        return call

    def _inline_twin(self, obj: Any) -> Callable[..., Any]:
        """The twin of a loop-free cache, made once and kept in the instance's ``__dict__``.

        Later look-ups find it there without calling this descriptor: a sync get of the
        in-memory cache then costs little more than the awaited one. The async method is
        looked up on every call, so one replaced on the instance is still the one run.
        """
        name = self._async_name
        body = (getattr(obj, self._lean) if self._lean is not None
                and getattr(type(obj), name, None) is self._async_method else None)
        if body is None:
            def call(*args: Any, **kwargs: Any) -> Any:
                return run_inline(getattr(obj, name)(*args, **kwargs))
        else:
            instance = vars(obj)

            def call(*args: Any, **kwargs: Any) -> Any:
                replaced = instance.get(name)
                if replaced is not None:  # an async method set on the instance still runs
                    return run_inline(replaced(*args, **kwargs))
                return body(*args, **kwargs)

        call.__name__ = self._name
        call.__doc__ = self.__doc__
        vars(obj)[self._name] = call
        return call


# -- loops of the calling threads -------------------------------------------------------


class _CallerLoop(threading.local):
    """The calling thread's own long-lived loop for sync twins (made on first use)."""

    loop: asyncio.AbstractEventLoop | None = None
    generation = -1
    owner: object | None = None


class _LoopOwner:
    """Lives in one thread's locals; its finalizer hands the thread's loop over."""


_caller = _CallerLoop()
#: Every caller-thread loop of this process, so exit can close their clients.
_caller_loops: set[asyncio.AbstractEventLoop] = set()
#: Loops of threads that ended, closed by the next thread that makes a loop (or at exit):
#: a loop is best not run from inside the finalizer of its dying thread.
_orphaned_loops: list[asyncio.AbstractEventLoop] = []
_caller_lock = threading.Lock()


def is_caller_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` is a caller thread's sync-twin loop (it runs only during calls)."""
    return loop in _caller_loops


def _caller_loop() -> asyncio.AbstractEventLoop:
    loop = _caller.loop
    if loop is not None and _caller.generation == process_generation():
        return loop
    if loop is not None:  # inherited through a fork: the parent's selector, never touched
        keep_inherited(loop)
    _close_orphaned_loops()
    loop = asyncio.new_event_loop()
    owner = _LoopOwner()
    # When the thread ends its locals go, and with them ``owner``: the loop is then
    # closed by another thread (or at exit).
    weakref.finalize(owner, _orphan, loop)
    _caller.loop, _caller.generation, _caller.owner = loop, process_generation(), owner
    with _caller_lock:
        _caller_loops.add(loop)
    return loop


def _orphan(loop: asyncio.AbstractEventLoop) -> None:
    with _caller_lock:
        _orphaned_loops.append(loop)


def _close_caller_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close a caller loop that no thread runs: its per-loop clients close on it first."""
    with _caller_lock:
        _caller_loops.discard(loop)
    if loop.is_closed() or loop.is_running():
        return
    try:
        loop.run_until_complete(loop.shutdown_asyncgens())  # runs the loop-end hooks
    except Exception:
        logger.debug("asynccache: closing a thread's loop failed", exc_info=True)
    finally:
        loop.close()


def _close_orphaned_loops() -> None:
    with _caller_lock:
        orphans, _orphaned_loops[:] = list(_orphaned_loops), []
    for loop in orphans:
        _close_caller_loop(loop)


def _close_caller_loops_at_exit() -> None:
    _close_orphaned_loops()
    with _caller_lock:
        loops = list(_caller_loops)
    for loop in loops:
        _close_caller_loop(loop)


def run_on_caller_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on the calling thread's own long-lived loop.

    Sync twins of caches whose clients are per loop and that keep no background task
    (Redis without write-behind) use it: the call then costs no thread hand-off at all,
    where the bridge costs two (the caller wakes the bridge thread, which wakes the
    caller). A thread that already runs a loop (Jupyter, a sync call inside async code)
    goes through the bridge instead, since its loop cannot be re-entered.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return run_sync(coro)
    loop = _caller_loop()
    task = loop.create_task(coro)
    try:
        return loop.run_until_complete(task)
    except BaseException:
        # Ctrl-C (or anything else) in the middle: the task must not linger on the loop
        # and wake up during this thread's next call.
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(task)
        raise


at_process_exit(_close_caller_loops_at_exit)


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
    ``factory`` once per loop. Each object is closed on its own loop when that loop
    shuts down (``asyncio.run`` returning), or by :meth:`aclose_all`. Objects inherited
    through a fork belong to the parent's loops: the child drops them untouched and
    makes its own.
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
        self._generation = process_generation()
        self._token = object()  # this object's key among its loops' loop-end hooks

    def peek(self) -> T | None:
        """The running loop's object if it exists already."""
        try:
            return self._items.get(asyncio.get_running_loop())
        except RuntimeError:
            return None

    def _drop_inherited(self) -> None:
        if self._generation != process_generation():
            keep_inherited((self._items, self._creating))
            self._items, self._creating = {}, {}
            self._generation = process_generation()

    async def get(self) -> T:
        loop = asyncio.get_running_loop()
        item = self._items.get(loop)
        if item is not None:
            return item
        self._drop_inherited()
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
        if self._closer is not None:
            owner = weakref.ref(self)

            async def close_at_loop_end() -> None:
                local = owner()
                if local is not None:
                    await local._close_on(loop)

            at_loop_end(self._token, close_at_loop_end)
        return item

    async def _close_on(self, loop: asyncio.AbstractEventLoop) -> None:
        item = self._items.pop(loop, None)
        if item is not None and self._closer is not None:
            await self._closer(item)

    def _forget_closed_loops(self) -> None:
        for stale in [lp for lp in self._items if lp.is_closed()]:
            del self._items[stale]

    async def aclose_all(self) -> None:
        """Close every loop's object: on its loop when that loop runs in this process.

        Objects of loops that are closed are dropped; objects of loops that are alive but
        not running now stay, and close when their loop shuts down.
        """
        self._drop_inherited()
        if self._closer is None:
            self._items = {}
            return
        closer = self._closer
        current = asyncio.get_running_loop()
        for loop, item in list(self._items.items()):
            try:
                if loop is current:
                    del self._items[loop]
                    await closer(item)
                elif loop.is_closed():
                    del self._items[loop]
                elif loop.is_running():
                    del self._items[loop]
                    # Bounded: a loop that stopped answering must not hang close().
                    await asyncio.wait_for(asyncio.wrap_future(
                        asyncio.run_coroutine_threadsafe(_call(closer, item), loop)
                    ), _CLOSE_SECONDS)
            except Exception:
                logger.debug("asynccache: closing a per-loop client failed", exc_info=True)


async def _call(closer: Callable[[T], Awaitable[None]], item: T) -> None:
    await closer(item)
