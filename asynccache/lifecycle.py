"""Process and event-loop lifecycle: loop end, interpreter exit, SIGTERM and fork.

Objects that belong to an event loop (connection pools, flush workers) or to a process
(the sync bridge's thread) need to hear when that loop or process ends:

* **Loop end.** :func:`at_loop_end` runs a coroutine on a loop while it shuts down.
  ``asyncio.run()`` (and every runner that calls ``loop.shutdown_asyncgens()``:
  uvicorn, pytest-asyncio, ``IsolatedAsyncioTestCase``) finalizes the async generators
  of its loop before closing it; a small generator parked on each loop we use turns
  that into a hook. Write-behind queues hand their entries over to the sync bridge
  there, and connection pools close their sockets on their own loop, so a program that
  never calls ``aclose()`` loses nothing and leaks nothing.
* **SIGTERM.** Python runs ``atexit`` hooks (where the bridge drains write-behind
  queues) on a normal exit or ``SystemExit``, but a SIGTERM with the default
  disposition kills the process without running them, which is how containers are
  stopped. When the first write-behind queue is created, asynccache therefore turns
  SIGTERM into ``SystemExit(128 + SIGTERM)`` if, and only if, nobody installed a
  handler yet and we are on the main thread. Opt out with the environment variable
  ``ASYNCCACHE_NO_SIGTERM_HANDLER=1`` or by installing your own handler first.
* **Fork.** :func:`process_generation` changes in a forked child, so per-loop objects
  inherited from the parent are recognised and dropped without being touched: their
  sockets, selector and wake-up pipe are shared with the parent, and closing them the
  asyncio way would unregister the parent's own sockets.
  ``multiprocessing`` children leave through ``os._exit()`` after running
  ``multiprocessing``'s own finalizers, not ``atexit``: :func:`at_process_exit` hooks are
  registered with both.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import os
import signal
import sys
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from types import FrameType
from typing import Any

__all__ = [
    "at_loop_end",
    "at_process_exit",
    "chain_sigterm",
    "forget_loop_end",
    "install_sigterm_drain",
    "keep_inherited",
    "on_sigterm_drain",
    "process_generation",
    "terminating",
]

logger = logging.getLogger("asynccache")
_installed = False

# -- fork -------------------------------------------------------------------------------

_generation = 0
#: Objects inherited through a fork that must never be used, closed or collected in the
#: child (collecting a copied event loop would try to close the parent's selector).
_inherited: list[Any] = []


def process_generation() -> int:
    """A number that changes in every forked child (compare it to spot inherited state)."""
    return _generation


def keep_inherited(obj: Any) -> None:
    """Keep ``obj`` (copied from the parent by a fork) alive and untouched in this child."""
    _inherited.append(obj)


def _after_fork_in_child() -> None:
    global _generation, _installed
    _generation += 1
    _watches.clear()
    _exit_state.update(done=False, running=False, terminating=False)
    # The child may reset signal handlers (gunicorn workers do): check again there.
    _installed = False
    _register_multiprocessing_exit()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- process exit -----------------------------------------------------------------------

_exit_hooks: list[Callable[[], None]] = []
_exit_state = {"done": False, "running": False, "terminating": False}


def at_process_exit(hook: Callable[[], None]) -> None:
    """Call ``hook()`` once when this process exits (also a forked ``multiprocessing`` child)."""
    _exit_hooks.append(hook)


def _run_exit_hooks() -> None:
    if _exit_state["done"]:
        return
    _exit_state["done"] = _exit_state["running"] = True
    for hook in list(_exit_hooks):
        try:
            hook()
        except Exception:
            logger.exception("asynccache: an exit hook failed")
    _retire_closed_loops()


class _MultiprocessingHook:
    """Registered with ``multiprocessing.util.register_after_fork`` (held weakly there)."""

    registered = False

    def __call__(self) -> None:
        _register_multiprocessing_exit()


_multiprocessing_hook = _MultiprocessingHook()


def _register_multiprocessing_exit() -> None:
    # A forked multiprocessing worker ends with os._exit() after running the finalizers
    # registered with multiprocessing.util; atexit never runs there. The child clears
    # those finalizers right after the fork, then runs its after-fork callbacks: this
    # runs both from our own fork hook and as such a callback.
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util.Finalize(None, _run_exit_hooks, exitpriority=100)


def _before_fork() -> None:
    util = sys.modules.get("multiprocessing.util")
    if util is not None and not _multiprocessing_hook.registered:
        _multiprocessing_hook.registered = True
        util.register_after_fork(_multiprocessing_hook, _MultiprocessingHook.__call__)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork)

atexit.register(_run_exit_hooks)


# -- SIGTERM ----------------------------------------------------------------------------


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    _exit_state["terminating"] = True
    if _exit_state["running"] or _exiting_already(frame):
        # Already on the way out (a pool that terminates its workers, then terminates
        # the daemonic ones again at its own exit): a SystemExit raised in the middle of
        # the drain would abandon it. Any other repeat raises again: the first one may
        # have been swallowed (raised inside a finalizer or a __del__).
        return
    logger.warning("asynccache: SIGTERM received, exiting after draining queued writes")
    raise SystemExit(128 + signum)


def _exiting_already(frame: FrameType | None) -> bool:
    """Whether the interrupted code is the interpreter's (or multiprocessing's) own exit.

    The exit drains anyway; a SystemExit raised in there would only cut it short.
    """
    exit_code = set()
    threading_shutdown = getattr(threading, "_shutdown", None)
    if threading_shutdown is not None:
        exit_code.add(threading_shutdown.__code__)
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        exit_code.add(util._exit_function.__code__)
    while frame is not None:
        if frame.f_code in exit_code:
            return True
        frame = frame.f_back
    return False


def install_sigterm_drain() -> bool:
    """Make SIGTERM exit through ``atexit`` (draining queues); return whether installed.

    Only when SIGTERM still has its default disposition; a handler installed by someone
    else is chained instead (see :func:`chain_sigterm`).
    """
    global _installed
    if _installed or os.environ.get("ASYNCCACHE_NO_SIGTERM_HANDLER"):
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return chain_sigterm()
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    except (ValueError, OSError):  # not the main interpreter, or no signals here
        return False
    _installed = True
    return True


#: Called (blocking, bounded) by a chained SIGTERM handler to send queued writes now.
_drain_now: list[Callable[[], None]] = []


def on_sigterm_drain(drain: Callable[[], None]) -> None:
    """Register the blocking drain a chained SIGTERM handler runs before the original."""
    _drain_now[:] = [drain]


def terminating() -> bool:
    """Whether SIGTERM was received: write-behind queues then write through."""
    return bool(_exit_state["terminating"])


class _ChainedSigterm:
    """Someone else's SIGTERM handler, preceded by a drain of the queued writes.

    Servers such as uvicorn handle SIGTERM themselves (graceful shutdown), then restore
    the handler they found and raise the signal again; when that was the default
    disposition (gunicorn resets it in its workers) the process dies without running
    ``atexit``. So the drain happens here, when the signal first arrives, and queues
    write through for the rest of the shutdown.
    """

    def __init__(self, original: Callable[[int, FrameType | None], Any]) -> None:
        self.original = original

    def __call__(self, signum: int, frame: FrameType | None) -> Any:
        _exit_state["terminating"] = True
        for drain in list(_drain_now):
            try:
                drain()
            except Exception:
                logger.exception("asynccache: draining queued writes on SIGTERM failed")
        return self.original(signum, frame)


def chain_sigterm() -> bool:
    """Put a drain in front of the current (foreign) SIGTERM handler; main thread only.

    Called when a write-behind queue receives its first entry. Returns whether a handler
    of ours is in place.
    """
    if os.environ.get("ASYNCCACHE_NO_SIGTERM_HANDLER"):
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        current = signal.getsignal(signal.SIGTERM)
        if current is _exit_on_sigterm or isinstance(current, _ChainedSigterm):
            return True
        if current is signal.SIG_DFL:
            return install_sigterm_drain()
        if not callable(current):  # SIG_IGN: the process does not stop on SIGTERM
            return False
        signal.signal(signal.SIGTERM, _ChainedSigterm(current))
    except (ValueError, OSError):
        return False
    return True


# -- loop end ---------------------------------------------------------------------------

#: Phases of the loop-end hooks: queues hand their entries over before pools close.
HANDOVER, CLOSE = 0, 1
_order = itertools.count()


class _LoopWatch:
    """The hooks of one loop, run by the finalizer of a generator parked on it."""

    def __init__(self) -> None:
        self.hooks: dict[object, tuple[int, int, Callable[[], Awaitable[None]]]] = {}
        self.generator: AsyncGenerator[None, None] | None = None

    async def run(self) -> None:
        while self.hooks:
            hooks, self.hooks = self.hooks, {}
            for _, _, hook in sorted(hooks.values(), key=lambda entry: entry[:2]):
                try:
                    await hook()
                except Exception:
                    logger.debug("asynccache: a loop-end hook failed", exc_info=True)


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWatch] = (
    weakref.WeakKeyDictionary()
)


async def _parked(watch: _LoopWatch) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await watch.run()
        with contextlib.suppress(RuntimeError):
            _watches.pop(asyncio.get_running_loop(), None)


def _retire_closed_loops() -> None:
    # Loops closed without finalizing their async generators (run_until_complete, then
    # close()) never ran their hooks and never will: finish their parked generators here,
    # with no hooks left, so collecting them later cannot call into a closed loop.
    for loop, watch in list(_watches.items()):
        if loop.is_closed():
            watch.hooks.clear()
            _watches.pop(loop, None)
            if watch.generator is not None:
                closing = watch.generator.aclose()
                with contextlib.suppress(StopIteration, RuntimeError):
                    closing.send(None)
                closing.close()


def at_loop_end(key: object, hook: Callable[[], Awaitable[None]], phase: int = CLOSE) -> None:
    """Run ``await hook()`` on the running loop when it shuts down (once per ``key``).

    Runs when the loop's runner finalizes async generators (``asyncio.run`` does);
    hooks of one loop run in ``phase`` order, then in registration order. A loop closed
    without that step never runs them (the process-exit drain still covers queues).
    """
    loop = asyncio.get_running_loop()
    watch = _watches.get(loop)
    if watch is None:
        _retire_closed_loops()
        watch = _watches[loop] = _LoopWatch()
        generator = _parked(watch)
        watch.generator = generator
        # The first step registers the generator with the loop's firstiter hook, so the
        # loop finalizes it at shutdown; the generator is held here, never collected early.
        step = generator.asend(None)
        try:
            step.send(None)
        except StopIteration:
            pass
    if key not in watch.hooks:
        watch.hooks[key] = (phase, next(_order), hook)


def forget_loop_end(key: object) -> None:
    """Drop the loop-end hook ``key`` of the running loop, if any."""
    with contextlib.suppress(RuntimeError):
        watch = _watches.get(asyncio.get_running_loop())
        if watch is not None:
            watch.hooks.pop(key, None)
