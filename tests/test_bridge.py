"""The sync bridge: one long-lived loop on a daemon thread, reachable from any sync code."""

from __future__ import annotations

import _thread
import asyncio
import contextvars
import inspect
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from asynccache import BridgeError, MemoryCache, run_sync
from asynccache.backends.memory import MemoryBackend
from asynccache.bridge import LoopLocal, _Bridge, bridge_loop
from asynccache.contract import WriteItem
from tests.helpers import assert_in_forked_child

TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="nobody")


async def add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


async def where() -> tuple[asyncio.AbstractEventLoop, int]:
    return asyncio.get_running_loop(), threading.get_ident()


# -- plain code, threads, running loops ---------------------------------------------------


def test_run_sync_from_plain_code_uses_the_one_bridge_loop():
    loop, thread_id = run_sync(where())
    assert run_sync(add(1, 2)) == 3
    assert loop is bridge_loop()
    assert thread_id != threading.get_ident()
    # A second call reuses the same loop: never a new loop per call.
    assert run_sync(where()) == (loop, thread_id)


def test_many_threads_at_once_share_the_loop_and_run_concurrently():
    callers = 8
    arrived = 0
    all_in: asyncio.Event | None = None

    async def rendezvous(n: int) -> tuple[int, asyncio.AbstractEventLoop]:
        nonlocal arrived, all_in
        if all_in is None:
            all_in = asyncio.Event()
        arrived += 1
        if arrived == callers:
            all_in.set()
        # Returns only once every caller is inside at the same time, which proves one
        # blocked caller does not hold the bridge for the others.
        await all_in.wait()
        return n, asyncio.get_running_loop()

    barrier = threading.Barrier(callers)
    results: list[Any] = [None] * callers

    def caller(n: int) -> None:
        barrier.wait()
        try:
            results[n] = run_sync(rendezvous(n), timeout=30)
        except BaseException as exc:  # reported by the main thread
            results[n] = exc

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [r[0] for r in results] == list(range(callers)), results
    assert {id(r[1]) for r in results} == {id(bridge_loop())}


def test_sync_twin_inside_a_coroutine_on_another_threads_running_loop():
    """The Jupyter case: the caller's thread runs its own loop and calls a sync twin."""
    cache = MemoryCache()
    outcome: dict[str, Any] = {}

    async def notebook_cell() -> None:
        outcome["cell_loop"] = asyncio.get_running_loop()
        assert cache.set_cache("nb", {"cell": 1}) is True
        outcome["got"] = cache.get_cache("nb")
        outcome["batch"] = cache.batch_get_cache(["nb", "absent"])

    def notebook_thread() -> None:
        try:
            asyncio.run(notebook_cell())
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=notebook_thread)
    thread.start()
    thread.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["got"] == {"cell": 1}
    assert outcome["batch"] == [{"cell": 1}, None]
    assert outcome["cell_loop"] is not bridge_loop()


async def test_sync_twin_called_inside_the_callers_own_running_loop():
    cache = MemoryCache()
    await cache.async_set_cache("mine", 1)
    # Blocking call from a coroutine of this very thread: it must not deadlock.
    assert cache.get_cache("mine") == 1
    assert cache.set_cache("theirs", 2) is True
    assert await cache.async_get_cache("theirs") == 2


def test_loop_free_twins_run_inline_even_on_a_loop_thread():
    # The in-memory cache never waits on a loop, so its twins skip the bridge entirely.
    cache = MemoryCache()

    async def on_the_bridge_thread() -> object:
        # Through the bridge this would be refused (it would deadlock); inline it runs.
        cache.set_cache("k", {"v": 1})
        return cache.get_cache("k")

    assert run_sync(on_the_bridge_thread(), timeout=30) == {"v": 1}



def test_a_loop_free_cache_makes_each_twin_once_and_still_runs_a_replaced_method():
    cache = MemoryCache()
    assert cache.get_cache is cache.get_cache  # kept on the instance after the first use
    assert MemoryCache().get_cache is not cache.get_cache
    cache.set_cache("k", 1)
    calls: list[str] = []
    original = cache.async_get_cache

    async def counting(key: str, **kwargs: Any) -> Any:
        calls.append(key)
        return await original(key, **kwargs)

    cache.async_get_cache = counting  # type: ignore[method-assign]
    assert cache.get_cache("k") == 1 and calls == ["k"]


def test_a_loop_free_subclass_that_overrides_the_async_get_is_what_get_cache_runs():
    # get_cache of a loop-free cache skips the coroutine by calling the get's body
    # directly; a subclass's own async_get_cache must still be the one that runs.
    class Upper(MemoryCache):
        async def async_get_cache(self, key: str, **kwargs: Any) -> Any:
            value = await super().async_get_cache(key, **kwargs)
            return None if value is None else value.upper()

    plain, upper = MemoryCache(), Upper()
    for cache in (plain, upper):
        cache.set_cache("k", "quiet")
    assert plain.get_cache("k") == "quiet"
    assert upper.get_cache("k") == "QUIET"
    assert plain.get_cache("k", namespace="other") is None
    with pytest.raises(TypeError):
        plain.get_cache("k", "positional namespace")  # keyword-only, as in the async get

def test_calling_a_sync_twin_on_the_bridge_thread_raises_instead_of_deadlocking():
    cache = MemoryCache(coalesce_reads=True)  # coalescing needs a loop: not loop-free
    leftover = add(1, 1)

    async def on_the_bridge() -> str:
        with pytest.raises(BridgeError, match="own event loop thread"):
            run_sync(leftover)
        with pytest.raises(BridgeError, match="async_"):
            cache.get_cache("k")
        return "still alive"

    assert run_sync(on_the_bridge(), timeout=30) == "still alive"
    # The refused coroutine was closed, not left to warn "never awaited".
    assert inspect.getcoroutinestate(leftover) == inspect.CORO_CLOSED


# -- context variables --------------------------------------------------------------------


def test_context_variables_are_copied_into_the_call_and_not_back():
    async def read_and_change() -> str:
        seen = TENANT.get()
        TENANT.set("changed inside")
        return seen

    token = TENANT.set("acme")
    try:
        assert run_sync(read_and_change()) == "acme"
        assert TENANT.get() == "acme"
    finally:
        TENANT.reset(token)


def test_each_thread_sees_its_own_context():
    async def read() -> str:
        await asyncio.sleep(0)
        return TENANT.get()

    seen: dict[int, str] = {}

    def worker(n: int) -> None:
        TENANT.set(f"tenant-{n}")
        seen[n] = run_sync(read(), timeout=30)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert seen == {n: f"tenant-{n}" for n in range(6)}


# -- cancellation -------------------------------------------------------------------------


def _cancellable(started: threading.Event, cancelled: threading.Event, *,
                 interrupt: bool = False):
    async def forever() -> None:
        started.set()
        if interrupt:
            _thread.interrupt_main()  # what Ctrl-C does to the waiting main thread
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    return forever()


def test_timeout_raises_and_cancels_the_task():
    started, cancelled = threading.Event(), threading.Event()
    with pytest.raises(TimeoutError, match=r"0\.2 s"):
        run_sync(_cancellable(started, cancelled), timeout=0.2)
    assert started.is_set()
    assert cancelled.wait(30), "the coroutine was not cancelled after the timeout"


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="Ctrl-C is delivered to the main thread")
def test_ctrl_c_cancels_the_task():
    started, cancelled = threading.Event(), threading.Event()
    with pytest.raises(KeyboardInterrupt):
        run_sync(_cancellable(started, cancelled, interrupt=True))
    assert cancelled.wait(30), "the coroutine was not cancelled after Ctrl-C"


def test_exceptions_from_the_coroutine_reach_the_caller():
    async def boom() -> None:
        raise LookupError("from the bridge")

    with pytest.raises(LookupError, match="from the bridge"):
        run_sync(boom())


# -- shutdown -----------------------------------------------------------------------------


class DrainRecorder:
    def __init__(self) -> None:
        self.loops: list[asyncio.AbstractEventLoop] = []

    async def drain_at_exit(self) -> None:
        self.loops.append(asyncio.get_running_loop())


class BrokenDrain:
    async def drain_at_exit(self) -> None:
        raise ConnectionError("store gone")


def test_private_bridge_drains_hooks_stops_and_then_refuses():
    bridge = _Bridge()
    assert bridge.run(add(2, 3)) == 5
    loop, thread = bridge.loop(), bridge._thread
    assert thread is not None
    recorder, broken = DrainRecorder(), BrokenDrain()
    bridge.exit_hooks.add(broken)
    bridge.exit_hooks.add(recorder)
    bridge.shutdown()
    assert recorder.loops == [loop]  # drained on the bridge loop, despite the broken hook
    thread.join(30)
    assert not thread.is_alive()
    late = add(1, 1)
    with pytest.raises(BridgeError, match="shut down"):
        bridge.run(late, timeout=10)
    assert inspect.getcoroutinestate(late) == inspect.CORO_CLOSED


def test_private_bridge_never_started_drains_on_a_temporary_loop_and_refuses():
    bridge = _Bridge()
    recorder = DrainRecorder()
    bridge.exit_hooks.add(recorder)
    bridge.shutdown()
    assert len(recorder.loops) == 1 and recorder.loops[0].is_closed()
    assert bridge._thread is None  # no thread was started just to shut down
    with pytest.raises(BridgeError, match="shut down"):
        bridge.run(add(1, 1), timeout=10)


# -- fork ---------------------------------------------------------------------------------


class SignallingBackend(MemoryBackend):
    """Memory backend that sets a thread event whenever a batch lands."""

    def __init__(self) -> None:
        super().__init__()
        self.landed = threading.Event()

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        result = await super().write_many(items)
        self.landed.set()
        return result


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sync_twins_and_write_behind_work_in_a_forked_child():
    cache = MemoryCache()
    assert cache.set_cache("before", 1) is True  # the parent's bridge thread now runs
    backend = SignallingBackend()
    from asynccache.base import BaseCache

    behind = BaseCache(backend, flush_size=1, flush_interval=3600)
    assert behind.set_cache("parent", 1) is True
    assert backend.landed.wait(30)  # the parent's flush worker lives on the bridge loop

    def in_child() -> list[bool]:
        checks = [
            cache.get_cache("before") == 1,
            cache.set_cache("after", 2) is True,
            cache.get_cache("after") == 2,
            run_sync(add(2, 3), timeout=30) == 5,
        ]
        backend.landed.clear()
        checks.append(behind.set_cache("child", 2) is True)
        # The child needs its own flush worker: the parent's did not survive the fork.
        checks.append(backend.landed.wait(30))
        checks.append(behind.get_cache("child") == 2)
        return checks

    assert_in_forked_child(in_child)
    assert cache.get_cache("before") == 1  # the parent's bridge is untouched


# -- interpreter exit ---------------------------------------------------------------------

_EXIT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from asynccache.base import Backend, BaseCache

    class AppendBackend(Backend):
        name = "append-file"
        remote = False

        def __init__(self, path):
            self.path = path

        async def read_many(self, keys):
            return [None] * len(keys)

        async def write_many(self, items):
            with open(self.path, "a", encoding="utf-8") as out:
                for key, data, ttl in items:
                    out.write(key + "\\n")
            return None

        async def remove_many(self, keys):
            return 0

        async def remove_prefix(self, prefix):
            return 0

    path, how = sys.argv[1], sys.argv[2]
    cache = BaseCache(AppendBackend(path), flush_size=1000, flush_interval=3600)
    if how == "sync":
        for i in range(50):
            cache.set_cache(f"k{i}", {"n": i})
    else:
        async def main():
            for i in range(50):
                await cache.async_set_cache(f"k{i}", {"n": i})
        asyncio.run(main())
    assert cache.queued_writes == 50, cache.queued_writes
    # no close, no flush: the process just ends
    """
)


@pytest.mark.parametrize("how", ["sync", "async"])
def test_pending_write_behind_entries_drain_at_interpreter_exit(tmp_path: Path, how: str):
    out = tmp_path / "landed.txt"
    done = subprocess.run(
        [sys.executable, "-c", _EXIT_SCRIPT, str(out), how],
        capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
    landed = out.read_text(encoding="utf-8").split() if out.exists() else []
    assert sorted(landed) == sorted(f"k{i}" for i in range(50))


# -- one cache, two loops -----------------------------------------------------------------


async def test_same_cache_from_the_callers_loop_and_the_sync_twins():
    cache = MemoryCache()
    await cache.async_set_cache("from-async", "a")
    assert await asyncio.to_thread(cache.get_cache, "from-async") == "a"
    assert await asyncio.to_thread(cache.set_cache, "from-sync", "s") is True
    assert await cache.async_get_cache("from-sync") == "s"
    assert await cache.async_batch_get_cache(["from-async", "from-sync"]) == ["a", "s"]


def test_write_behind_flushes_from_sync_twins_after_a_loop_that_stopped():
    """A loop driven by run_until_complete made the flush worker, then stopped running."""
    from asynccache.base import BaseCache

    backend = SignallingBackend()
    cache = BaseCache(backend, flush_size=1, flush_interval=3600)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(cache.async_set_cache("from-loop", 1))
        assert backend.landed.wait(30)
        loop.run_until_complete(asyncio.sleep(0))  # the loop is idle, not closed
        backend.landed.clear()
        assert cache.set_cache("from-sync", 2) is True
        # Flushed by a worker on the bridge loop, not left waiting for `loop` to run again.
        assert backend.landed.wait(30)
        assert cache.get_cache("from-sync") == 2 and "from-sync" in backend._data
        loop.run_until_complete(cache.aclose())
    finally:
        loop.close()
    assert cache.queued_writes == 0


async def test_loop_local_keeps_one_object_per_loop_and_closes_each_on_its_loop():
    made: list[asyncio.AbstractEventLoop] = []
    closed: list[tuple[dict[str, Any], asyncio.AbstractEventLoop]] = []

    async def factory() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        made.append(loop)
        await asyncio.sleep(0)  # let concurrent callers pile up on the creation
        return {"loop": loop}

    async def closer(item: dict[str, Any]) -> None:
        closed.append((item, asyncio.get_running_loop()))

    local: LoopLocal[dict[str, Any]] = LoopLocal(factory, closer)
    here = asyncio.get_running_loop()
    mine = await asyncio.gather(*(local.get() for _ in range(10)))
    assert all(item is mine[0] for item in mine) and mine[0]["loop"] is here
    assert local.peek() is mine[0]
    on_bridge = await asyncio.to_thread(run_sync, local.get())
    assert on_bridge is not mine[0] and on_bridge["loop"] is bridge_loop()
    assert await asyncio.to_thread(run_sync, local.get()) is on_bridge
    assert made == [here, bridge_loop()]
    await local.aclose_all()
    assert sorted((id(item), id(loop)) for item, loop in closed) == sorted(
        [(id(mine[0]), id(here)), (id(on_bridge), id(bridge_loop()))]
    )
    assert local.peek() is None


async def test_loop_local_factory_failure_reaches_every_waiter_and_is_retried():
    attempts = 0

    async def factory() -> str:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0)
        if attempts == 1:
            raise ConnectionError("first try fails")
        return "client"

    local: LoopLocal[str] = LoopLocal(factory)
    results = await asyncio.gather(local.get(), local.get(), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert await local.get() == "client"
    assert attempts == 2
