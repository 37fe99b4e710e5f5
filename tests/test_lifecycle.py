"""Loop end, caller-thread loops, bridge deadlines, fork and the timeout log line."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
import threading
from collections.abc import Sequence

import pytest

from asynccache import BridgeError, Cache
from asynccache.backends.memory import MemoryBackend
from asynccache.base import BaseCache
from asynccache.bridge import (
    LoopLocal,
    _Bridge,
    _caller_loops,
    bridge_loop,
    is_caller_loop,
    run_on_caller_thread,
)
from asynccache.contract import WriteItem
from asynccache.lifecycle import at_loop_end
from tests.helpers import unique


class RecordingBackend(MemoryBackend):
    """Memory backend that remembers on which loop each batch landed."""

    def __init__(self) -> None:
        super().__init__()
        self.loops: list[asyncio.AbstractEventLoop] = []
        self.landed = threading.Event()

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        self.loops.append(asyncio.get_running_loop())
        result = await super().write_many(items)
        self.landed.set()
        return result


# -- loop end -------------------------------------------------------------------------------


def test_loop_end_hooks_run_on_the_loop_in_phase_order_when_asyncio_run_returns():
    seen: list[tuple[str, asyncio.AbstractEventLoop]] = []

    async def hook(name: str) -> None:
        seen.append((name, asyncio.get_running_loop()))

    async def main() -> asyncio.AbstractEventLoop:
        at_loop_end("close", lambda: hook("close"), phase=1)
        at_loop_end("handover", lambda: hook("handover"), phase=0)
        at_loop_end("close", lambda: hook("twice"), phase=1)  # one hook per key
        return asyncio.get_running_loop()

    loop = asyncio.run(main())
    assert seen == [("handover", loop), ("close", loop)]


def test_write_behind_entries_move_to_the_bridge_when_asyncio_run_ends_without_aclose():
    backend = RecordingBackend()
    cache = BaseCache(backend, flush_size=1000, flush_interval=3600)

    async def main() -> asyncio.AbstractEventLoop:
        for i in range(10):
            assert await cache.async_set_cache(f"k{i}", i) is True
        return asyncio.get_running_loop()

    run_loop = asyncio.run(main())
    # Nothing was sent on the ended loop (interval of an hour); the bridge sends it.
    assert cache.queued_writes == 10
    cache.flush()
    assert cache.queued_writes == 0
    assert backend.loops and all(loop is bridge_loop() for loop in backend.loops)
    assert run_loop not in backend.loops
    cache.close()


def test_per_loop_clients_close_on_their_loop_when_asyncio_run_ends():
    closed: list[tuple[int, asyncio.AbstractEventLoop]] = []
    made = iter(range(100))

    async def factory() -> int:
        return next(made)

    async def closer(item: int) -> None:
        closed.append((item, asyncio.get_running_loop()))

    local: LoopLocal[int] = LoopLocal(factory, closer)

    async def main() -> tuple[int, asyncio.AbstractEventLoop]:
        return await local.get(), asyncio.get_running_loop()

    first, loop = asyncio.run(main())
    assert closed == [(first, loop)]
    assert local._items == {}


def test_a_collected_write_behind_cache_keeps_its_entries_until_sent():
    backend = RecordingBackend()

    def job() -> None:
        cache = BaseCache(backend, flush_size=1000, flush_interval=0.01)
        assert cache.set_cache("orphan", 1) is True

    job()
    gc.collect()
    assert backend.landed.wait(30)
    assert [key for key in backend._data] == ["orphan"]


# -- sync twins on the caller's thread -----------------------------------------------------


def test_io_cache_sync_twins_run_on_the_calling_threads_own_loop(valkey_server):
    cache = Cache(type="redis", port=valkey_server.port, namespace=unique("caller"))
    loops: dict[str, asyncio.AbstractEventLoop] = {}

    def use(name: str) -> None:
        assert cache.set_cache(name, name) is True
        assert cache.get_cache(name) == name
        loops[name] = next(loop for loop in cache.backend._connections._items
                           if loop not in loops.values())

    threads = [threading.Thread(target=use, args=(f"t{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
        thread.join(30)
    assert len(set(loops.values())) == 3
    assert all(is_caller_loop(loop) or loop.is_closed() for loop in loops.values())
    assert bridge_loop() not in loops.values()
    cache.close()


def test_a_thread_whose_loop_runs_goes_through_the_bridge(valkey_server):
    cache = Cache(type="redis", port=valkey_server.port, namespace=unique("jupyter"))

    async def inside() -> int:
        assert cache.set_cache("k", 5) is True  # blocking on purpose: the notebook shape
        return int(cache.get_cache("k"))

    assert asyncio.run(inside()) == 5
    assert bridge_loop() in cache.backend._connections._items
    cache.close()


def test_caller_loop_of_an_ended_thread_is_closed_by_the_next_one():
    async def loop_of_this_call() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    found: list[asyncio.AbstractEventLoop] = []
    first = threading.Thread(target=lambda: found.append(run_on_caller_thread(
        loop_of_this_call())))
    first.start()
    first.join(30)
    gc.collect()
    second = threading.Thread(target=lambda: found.append(run_on_caller_thread(
        loop_of_this_call())))
    second.start()
    second.join(30)
    assert len(found) == 2 and found[0] is not found[1]
    assert found[0].is_closed() and found[0] not in _caller_loops
    assert found[1] in _caller_loops


def test_interrupted_caller_loop_call_leaves_no_task_behind():
    started = threading.Event()

    async def slow() -> None:
        started.set()
        raise KeyboardInterrupt  # what Ctrl-C looks like inside the loop

    async def leftovers() -> int:
        return len([t for t in asyncio.all_tasks() if t is not asyncio.current_task()])

    with pytest.raises(KeyboardInterrupt):
        run_on_caller_thread(slow())
    assert run_on_caller_thread(leftovers()) == 0


# -- bridge deadlines ------------------------------------------------------------------------


def test_a_bridge_call_has_a_deadline_and_a_clear_error():
    bridge = _Bridge()
    never = threading.Event()

    async def stalled() -> None:
        await asyncio.get_running_loop().run_in_executor(None, never.wait, 30)

    try:
        with pytest.raises(TimeoutError, match=r"did not finish within 0\.2 s"):
            bridge.run(stalled(), timeout=0.2)
    finally:
        never.set()
        bridge.shutdown()


def test_a_dead_bridge_thread_is_reported_instead_of_waited_on():
    bridge = _Bridge()
    loop = bridge.loop()
    thread = bridge._thread
    assert thread is not None
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)
    late = asyncio.sleep(0)
    with pytest.raises(BridgeError, match="thread is gone"):
        bridge.run(late)
    assert inspect.getcoroutinestate(late) == inspect.CORO_CLOSED
    loop.close()


# -- fork -----------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_loop_local_objects_of_the_parent_are_dropped_untouched_in_a_child():
    closed: list[int] = []

    async def factory() -> int:
        return os.getpid()

    async def closer(item: int) -> None:
        closed.append(item)

    local: LoopLocal[int] = LoopLocal(factory, closer)

    async def get() -> int:
        return await local.get()

    parent = asyncio.run_coroutine_threadsafe(get(), bridge_loop()).result(30)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 1
        try:
            from asynccache.bridge import run_sync

            mine = run_sync(get(), timeout=30)
            run_sync(local.aclose_all(), timeout=30)
            # The parent's object was neither reused nor closed here.
            status = 0 if mine == os.getpid() and closed == [os.getpid()] else 3
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert parent == os.getpid() and closed == []


# -- the timeout log line ---------------------------------------------------------------------


class FrozenBackend(MemoryBackend):
    remote = True
    loop_free = False

    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        await asyncio.get_running_loop().create_future()  # never answers
        return []


async def test_a_timeout_is_logged_with_the_time_waited(caplog: pytest.LogCaptureFixture):
    cache = BaseCache(FrozenBackend(), timeout=0.05, coalesce_reads=False)
    with caplog.at_level(logging.WARNING, logger="asynccache"):
        assert await cache.async_get_cache("k") is None
    assert "TimeoutError: timed out after 0.05 s" in caplog.text
    await cache.aclose()
