"""Real faults: a Redis server killed, frozen or gone while asynccache is in use.

Every test that kills, pauses or restarts a server starts its own valkey-server (the
session's shared server is never touched) and stops it by process. Waits are on
observable conditions with generous upper bounds; the figures (recovery time, loop lag)
are printed by ``python -m benchmarks.fault_report``, not asserted against the clock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import textwrap
import time
from collections.abc import Sequence

import pytest

from asynccache import BaseCache, Cache, DualCache, MemoryCache
from asynccache.backends.memory import MemoryBackend
from asynccache.exceptions import ConfigurationError
from benchmarks.fault_report import (
    WAIT_LIMIT,
    count_keys,
    kill_restart,
    pause_resume,
    queue_and_close,
    wait_until,
)
from tests.helpers import unique
from tests.plugins.services import service_unavailable
from tests.servers.processes import ServiceUnavailable, free_port


def _failure_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name.startswith("asynccache") and " failed: " in r.getMessage()]


# -- crash and restart -------------------------------------------------------------------


async def test_redis_killed_under_64_workers_no_exception_and_recovery(private_valkey):
    figures = await kill_restart(private_valkey, workers=64, rounds=5)
    assert figures.exceptions == []
    assert figures.calls_completed == figures.calls_started > 0
    assert figures.failed_round_trips > 0  # the kill really happened under load
    stats = figures.stats
    assert stats["errors"] + stats["timeouts"] > 0
    assert stats["skipped_open_circuit"] > 0  # the breaker kept the dead store out
    assert stats["circuit"] == "closed"  # and closed again once the server was back
    # Recovery is the observable condition the scenario waited for: every worker made
    # successful round trips after the restart (the seconds are a reported figure).
    assert figures.all_workers_recovered_s >= figures.recovery_s >= 0


# -- freeze (SIGSTOP) --------------------------------------------------------------------


async def test_frozen_redis_times_out_opens_the_circuit_and_one_probe_closes_it(
        private_valkey):
    threshold = 3
    # A hung call would fail the test here instead of stalling the suite.
    figures = await asyncio.wait_for(
        pause_resume(private_valkey, timeout=0.2, breaker_threshold=threshold,
                     breaker_cooldown=0.2, calls=30),
        WAIT_LIMIT,
    )
    assert figures.exceptions == []
    assert figures.calls_while_frozen == 30  # every call returned
    # Reads were misses and writes failed: nothing from the frozen server.
    for result in figures.results_while_frozen:
        assert result in (None, False, [None, None])
    assert figures.timeouts == threshold  # then the circuit opened: no more waiting
    assert figures.circuit_while_frozen == "open"
    assert figures.skipped_open_circuit >= 30 - threshold
    assert figures.probe_result == "before"
    assert figures.circuit_after_probe == "closed"


async def test_open_circuit_is_probed_in_the_background_and_callers_never_wait(private_valkey):
    cache = Cache(type="redis", port=private_valkey.port, namespace=unique("probe"),
                  timeout=0.2, breaker_threshold=2)  # default cool-down
    try:
        private_valkey.pause()
        try:
            assert await cache.async_set_cache("a", 1) is False
            assert await cache.async_set_cache("b", 1) is False
            assert cache.stats()["circuit"] in ("open", "half_open")
            assert cache.stats()["timeouts"] == 2
            # While the server is frozen, probes time out one after another and callers
            # are skipped without touching the server: no caller becomes the probe.
            await wait_until(lambda: cache.stats()["failed_probes"] >= 2, "two failed probes")
            skipped = cache.stats()["skipped_open_circuit"]
            results = await asyncio.gather(*(cache.async_set_cache(f"c{i}", i) for i in range(10)))
            assert results == [False] * 10
            assert cache.stats()["skipped_open_circuit"] == skipped + 10
            assert cache.stats()["timeouts"] == 2  # the probes' timeouts are not the callers'
        finally:
            private_valkey.resume()
        await wait_until(lambda: cache.stats()["circuit"] == "closed",
                         "a background probe to close the circuit", step=0.01)
        assert cache.breaker.last_outage is not None
        assert all(await asyncio.gather(*(cache.async_set_cache(f"d{i}", i) for i in range(10))))
    finally:
        await cache.aclose()


async def test_probe_pauses_grow_up_to_the_cooldown_then_recovery_is_immediate():
    from asynccache.guard import CircuitBreaker

    breaker = CircuitBreaker(failure_threshold=1, cooldown=0.25)
    delays = [breaker.first_probe_delay()]
    for _ in range(5):
        delays.append(breaker.next_probe_delay(delays[-1]))
    assert delays == [0.05, 0.1, 0.2, 0.25, 0.25, 0.25]
    assert CircuitBreaker(cooldown=0.01).first_probe_delay() == 0.01
    with pytest.raises(ConfigurationError, match="breaker_cooldown"):
        CircuitBreaker(cooldown=0)


async def test_dual_cache_serves_l1_while_l2_circuit_is_open(private_valkey):
    l2 = Cache(type="redis", port=private_valkey.port, namespace=unique("dual"),
               timeout=0.5, breaker_threshold=2, breaker_cooldown=3600)
    dual = DualCache(MemoryCache(), l2)
    try:
        assert await dual.async_set_cache("warm", {"answer": 42}) is True
        await asyncio.to_thread(private_valkey.kill)
        for i in range(3):
            assert await dual.async_get_cache(f"cold{i}") is None
        assert dual.stats()["l2"]["circuit"] == "open"
        skipped = dual.stats()["l2"]["skipped_open_circuit"]
        for i in range(50):
            assert await dual.async_get_cache("warm") == {"answer": 42}
            assert await dual.async_get_cache(f"cold{i}") is None
        assert await dual.async_batch_get_cache(["warm", "cold"]) == [{"answer": 42}, None]
        # A write reaches L1 and reports the durable failure.
        assert await dual.async_set_cache("new", "v") is False
        assert await dual.async_get_cache("new") == "v"
        assert dual.stats()["l2"]["skipped_open_circuit"] >= skipped + 50
        assert dual.stats()["circuit"] == "closed"
    finally:
        await dual.aclose()


# -- logging -----------------------------------------------------------------------------


async def test_errors_are_logged_once_per_burst_not_once_per_call(caplog):
    caplog.set_level(logging.WARNING, logger="asynccache")
    cache = Cache(type="redis", port=free_port(), namespace=unique("burst"),
                  breaker_threshold=0)  # breaker off: every call reaches the dead port
    try:
        for i in range(100):
            assert await cache.async_get_cache(f"k{i}") is None
            assert await cache.async_set_cache(f"k{i}", i) is False
        assert cache.stats()["errors"] == 200
        assert len(_failure_records(caplog)) == 1
        # Once the burst interval has passed, the next error is logged with a summary.
        burst = cache._guard.log
        burst.interval = 0.05
        logged = time.monotonic()
        await wait_until(lambda: time.monotonic() - logged >= burst.interval, "the interval")
        assert await cache.async_get_cache("again") is None
        records = _failure_records(caplog)
        assert len(records) == 2
        assert "199 similar errors suppressed" in records[1].getMessage()
    finally:
        await cache.aclose()


async def test_circuit_opening_is_logged_once_while_calls_keep_being_skipped(caplog):
    caplog.set_level(logging.WARNING, logger="asynccache")
    cache = Cache(type="redis", port=free_port(), namespace=unique("open"),
                  breaker_threshold=3, breaker_cooldown=3600)
    try:
        for i in range(300):
            assert await cache.async_get_cache(f"k{i}") is None
        assert cache.stats()["skipped_open_circuit"] == 297
        opened = [r for r in caplog.records if "circuit open" in r.getMessage()]
        assert len(opened) == 1
        assert len(_failure_records(caplog)) == 1
    finally:
        await cache.aclose()


# -- nothing accepted is lost ------------------------------------------------------------


async def test_10000_write_behind_entries_are_all_in_redis_after_close(private_valkey):
    figures = await queue_and_close(private_valkey, entries=10_000, flush_size=500)
    assert figures.accepted == 10_000
    assert figures.in_redis == 10_000
    assert await count_keys(private_valkey.port) == 10_000
    assert figures.flushed == 10_000 and figures.given_up == 0


async def test_failed_flush_is_retried_then_given_up_counted_and_logged(caplog):
    caplog.set_level(logging.WARNING, logger="asynccache")
    cache = Cache(type="redis", port=free_port(), namespace=unique("giveup"), flush_size=100,
                  flush_retries=2, breaker_threshold=0)
    keys = [f"lost-{i}" for i in range(5)]
    for key in keys:
        assert await cache.async_set_cache(key, key) is True  # accepted into the queue
    assert await cache.async_get_cache(keys[0]) == keys[0]  # read-your-writes meanwhile
    await cache.aclose()
    stats = cache.stats()
    assert stats["given_up"] == 5
    assert stats["flush_retries"] == 5 * 2
    assert stats["flushed"] == 0
    gave_up = [r for r in caplog.records if "gave up" in r.getMessage()]
    assert len(gave_up) == 1
    assert gave_up[0].levelno == logging.ERROR
    for key in keys:
        assert key in gave_up[0].getMessage()


async def test_flush_retries_carry_entries_through_a_frozen_server(private_valkey):
    cache = Cache(type="redis", port=private_valkey.port, namespace=unique("retry"),
                  flush_size=50, flush_interval=0.01, flush_retries=6, timeout=0.2,
                  breaker_threshold=0)
    try:
        private_valkey.pause()
        try:
            for i in range(20):
                assert await cache.async_set_cache(f"r{i}", i) is True
            await wait_until(lambda: cache.stats()["flush_retries"] > 0, "a failed flush")
        finally:
            private_valkey.resume()
        await asyncio.wait_for(cache.async_flush(), WAIT_LIMIT)
        assert cache.stats()["given_up"] == 0
        assert cache.stats()["flushed"] == 20
        assert await count_keys(private_valkey.port) == 20
    finally:
        await cache.aclose()


_SIGTERM_CHILD = textwrap.dedent("""
    import asyncio, sys, time
    from asynccache import Cache

    port, namespace, count, style = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    # flush_interval of an hour and a batch larger than the entries: nothing is sent
    # until something drains the queue.
    cache = Cache(type="redis", port=port, namespace=namespace, flush_size=count + 1,
                  flush_interval=3600)

    async def main():
        for i in range(count):
            assert await cache.async_set_cache(f"k{i}", {"i": i}) is True
        print("queued", cache.queued_writes, flush=True)
        await asyncio.sleep(300)

    if style == "async":
        asyncio.run(main())
    else:
        for i in range(count):
            assert cache.set_cache(f"k{i}", {"i": i}) is True
        print("queued", cache.queued_writes, flush=True)
        time.sleep(300)
""")


@pytest.mark.parametrize("style", ["sync", "async"])
async def test_sigterm_drains_the_write_behind_queue_before_exit(private_valkey, style):
    count = 500
    env = {k: v for k, v in os.environ.items() if k != "ASYNCCACHE_NO_SIGTERM_HANDLER"}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SIGTERM_CHILD, str(private_valkey.port), unique("term"),
        str(count), style, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), WAIT_LIMIT)
        assert line.decode().split() == ["queued", str(count)]
        assert await count_keys(private_valkey.port) == 0  # all still queued
        child.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(child.communicate(), WAIT_LIMIT)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode == 128 + signal.SIGTERM, stderr.decode()[-2000:]
    assert await count_keys(private_valkey.port) == count


# -- object stores -----------------------------------------------------------------------


@pytest.fixture(params=["s3", "gcs", "azure_blob"])
def private_store(request):
    """(store name, its emulator of this test's own), free to be killed and restarted."""
    from benchmarks.fault_report import start_store

    try:
        server = start_store(request.param)
    except ServiceUnavailable as exc:
        service_unavailable(request.param, exc)
    yield request.param, server
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


async def test_object_store_killed_mid_batch_no_exception_and_recovery(private_store):
    from benchmarks.fault_report import store_kill_restart

    store, server = private_store
    figures = await store_kill_restart(store, server, workers=4, batch=10, rounds=2,
                                       timeout=2.0)
    assert figures.exceptions == []
    assert figures.batches_in_flight_at_kill > 0  # the kill landed mid-batch
    assert figures.batches_completed == figures.batches_started > 0
    assert figures.failed_batches > 0
    stats = figures.stats
    assert stats["errors"] + stats["timeouts"] > 0
    assert stats["set_failures"] > 0
    assert stats["circuit"] == "closed"
    assert figures.all_workers_recovered_s >= figures.recovery_s >= 0


class _FlakyMemory(MemoryBackend):
    """An in-process (loop-free) store that fails while ``broken`` is set."""

    broken = False

    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if self.broken:
            raise OSError("store unavailable")
        return await super().read_many(keys)

    async def check_health(self) -> None:
        if self.broken:
            raise OSError("store unavailable")


@pytest.mark.parametrize("twin", [False, True], ids=["async", "sync twin"])
async def test_an_in_process_store_that_failed_is_probed_and_closes_again(twin):
    backend = _FlakyMemory()
    cache = BaseCache(backend, breaker_threshold=2)
    assert cache._lean  # the lean path, which has no task of its own to probe from
    get = (lambda key: asyncio.to_thread(cache.get_cache, key)) if twin else cache.async_get_cache
    try:
        await cache.async_set_cache("k", "v")
        backend.broken = True
        for _ in range(5):
            assert await get("k") is None  # failures, then skipped: misses, never errors
        assert cache.stats()["circuit"] == "open" and cache.stats()["skipped_open_circuit"] == 3
        backend.broken = False
        await wait_until(lambda: cache.stats()["circuit"] == "closed",
                         "a background probe to close the circuit", step=0.01)
        assert await get("k") == "v"
    finally:
        await cache.aclose()
