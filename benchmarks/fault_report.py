"""Fault figures: what asynccache does when its Redis server crashes, freezes or lags.

Each scenario runs against its own valkey-server on 127.0.0.1 (started and stopped here
by process) and returns its figures; tests/test_faults.py runs the same scenarios and
asserts the guarantees, this module prints the numbers:

* **kill / restart**: 64 concurrent workers do set + get through
  ``Cache(type="redis")`` while the server is SIGKILLed and started again on the same
  port. Figures: calls completed, exceptions that reached a worker, seconds from the
  restart to the first (and to every worker's) successful round trip, event-loop lag p99.
* **pause**: the server is frozen with SIGSTOP under a small ``timeout=``. Figures: the
  slowest call while frozen (bounded by the timeout), timeouts counted, calls skipped by
  the open circuit, event-loop lag p99.
* **10k queue**: 10,000 write-behind entries (``flush_size=500``) then ``aclose()``.
  Figures: entries found in Redis afterwards, seconds to queue and to drain.

* **object stores**: moto, fake-gcs-server and Azurite are SIGKILLed while batch writers
  have batches in flight, then restarted. Figures: exceptions, seconds to recovery.

    python -m benchmarks.fault_report [--no-stores]
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from asynccache import Cache
from benchmarks._measure import LoopLagProbe
from tests.servers.processes import ManagedProcess, start_valkey

#: Upper bound on any wait for an observable condition (never reached when things work).
WAIT_LIMIT = 30.0


async def wait_until(condition: Callable[[], bool], what: str, limit: float = WAIT_LIMIT,
                     step: float = 0.005) -> float:
    """Poll ``condition`` until it holds; return the seconds waited, raise past ``limit``."""
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > limit:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        await asyncio.sleep(step)
    return time.perf_counter() - started


async def count_keys(port: int) -> int:
    """Number of keys on the (private) server at ``port``."""
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis(host="127.0.0.1", port=port)
    try:
        return int(await client.dbsize())
    finally:
        await client.aclose()


# -- kill and restart under load --------------------------------------------------------


@dataclass
class KillRestartFigures:
    """What 64 workers saw while their Redis crashed and came back."""

    workers: int
    calls_started: int = 0
    calls_completed: int = 0
    exceptions: list[str] = field(default_factory=list)
    failed_round_trips: int = 0
    recovery_s: float = float("nan")
    all_workers_recovered_s: float = float("nan")
    loop_lag_p99_ms: float | None = None
    loop_lag_max_ms: float | None = None
    stats: dict[str, Any] = field(default_factory=dict)


async def kill_restart(server: ManagedProcess, *, workers: int = 64,
                       breaker_cooldown: float = 0.1, rounds: int = 50) -> KillRestartFigures:
    """SIGKILL ``server`` under ``workers`` concurrent set+get loops, then restart it.

    Each phase (warm, down, restarted) lasts until every worker made about ``rounds``
    round trips in it.
    """
    figures = KillRestartFigures(workers)
    cache = Cache(type="redis", port=server.port, namespace=f"kill-{uuid.uuid4().hex[:8]}",
                  timeout=1.0, socket_timeout=1.0, breaker_threshold=5,
                  breaker_cooldown=breaker_cooldown)
    stop = asyncio.Event()
    phase = {"name": "warm"}
    # Successful round trips per worker in each phase.
    ok_in: dict[str, list[int]] = {"warm": [0] * workers, "restarted": [0] * workers}
    first_ok_after_restart: list[float] = []
    failures_after_kill = [0]

    async def work(worker: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            figures.calls_started += 2
            try:
                stored = await cache.async_set_cache(f"w{worker}", i)
                figures.calls_completed += 1
                got = await cache.async_get_cache(f"w{worker}")
                figures.calls_completed += 1
            except Exception as exc:  # the guarantee under test: never reached
                figures.exceptions.append(f"{type(exc).__name__}: {exc}")
                continue
            now = time.perf_counter()
            if stored and got == i:
                current = phase["name"]
                if current in ok_in:
                    ok_in[current][worker] += 1
                    if current == "restarted" and not first_ok_after_restart:
                        first_ok_after_restart.append(now)
            else:
                figures.failed_round_trips += 1
                if phase["name"] == "killed":
                    failures_after_kill[0] += 1
            # Pace the loop a little: a dead store answers instantly (open circuit) and
            # 64 tight loops would only measure the CPU of a shared machine.
            await asyncio.sleep(0.001)

    async with LoopLagProbe() as probe:
        tasks = [asyncio.create_task(work(w)) for w in range(workers)]
        try:
            await wait_until(lambda: min(ok_in["warm"]) >= rounds, "every worker to succeed")
            phase["name"] = "killed"
            await asyncio.to_thread(server.kill)
            await wait_until(lambda: failures_after_kill[0] > 0, "calls to fail after the kill")
            # The outage lasts until every worker has gone through the open circuit
            # ``rounds`` times on average: the loop keeps serving while the store is gone.
            await wait_until(
                lambda: cache.stats()["circuit"] == "open"
                and cache.stats()["skipped_open_circuit"] >= 2 * rounds * workers,
                "the circuit to open and skip calls",
            )
            await asyncio.to_thread(server.start)
            restarted_at = time.perf_counter()
            phase["name"] = "restarted"
            await wait_until(lambda: min(ok_in["restarted"]) >= 1,
                             "every worker to succeed after the restart")
            figures.all_workers_recovered_s = time.perf_counter() - restarted_at
            await wait_until(lambda: min(ok_in["restarted"]) >= rounds,
                             "every worker to keep succeeding after the restart")
            figures.recovery_s = max(0.0, first_ok_after_restart[0] - restarted_at)
        finally:
            stop.set()
            # A hang would show up here: every worker must finish its current call.
            await asyncio.wait_for(asyncio.gather(*tasks), WAIT_LIMIT)
            figures.stats = cache.stats()
            await cache.aclose()
    figures.loop_lag_p99_ms = probe.p99_ms()
    figures.loop_lag_max_ms = _max_lag_ms(probe)
    return figures


# -- freeze (SIGSTOP) -------------------------------------------------------------------


@dataclass
class PauseFigures:
    """What callers saw while their Redis was frozen."""

    timeout: float
    calls_while_frozen: int = 0
    results_while_frozen: list[Any] = field(default_factory=list)
    max_call_s_while_frozen: float = 0.0
    timeouts: int = 0
    skipped_open_circuit: int = 0
    circuit_while_frozen: str = ""
    probe_result: Any = None
    circuit_after_probe: str = ""
    exceptions: list[str] = field(default_factory=list)
    loop_lag_p99_ms: float | None = None
    loop_lag_max_ms: float | None = None


async def pause_resume(server: ManagedProcess, *, timeout: float = 0.25,
                       breaker_threshold: int = 3, breaker_cooldown: float = 0.3,
                       calls: int = 40) -> PauseFigures:
    """Freeze ``server`` with SIGSTOP, make ``calls`` calls, resume and let one probe run."""
    figures = PauseFigures(timeout)
    cache = Cache(type="redis", port=server.port, namespace=f"pause-{uuid.uuid4().hex[:8]}",
                  timeout=timeout, breaker_threshold=breaker_threshold,
                  breaker_cooldown=breaker_cooldown)
    try:
        async with LoopLagProbe() as probe:
            assert await cache.async_set_cache("k", "before") is True
            server.pause()
            try:
                for i in range(calls):
                    started = time.perf_counter()
                    try:
                        if i % 3 == 2:
                            result: Any = await cache.async_set_cache(f"s{i}", i)
                        elif i % 3 == 1:
                            result = await cache.async_batch_get_cache(["k", f"s{i}"])
                        else:
                            result = await cache.async_get_cache("k")
                    except Exception as exc:  # the guarantee under test: never reached
                        figures.exceptions.append(f"{type(exc).__name__}: {exc}")
                        continue
                    figures.max_call_s_while_frozen = max(
                        figures.max_call_s_while_frozen, time.perf_counter() - started)
                    figures.results_while_frozen.append(result)
                    figures.calls_while_frozen += 1
                stats = cache.stats()
                figures.circuit_while_frozen = stats["circuit"]
                figures.timeouts = stats["timeouts"]
                figures.skipped_open_circuit = stats["skipped_open_circuit"]
                opened_seen = time.monotonic()
            finally:
                server.resume()
            # Real time has to pass for the cooldown; the bound only guards against a hang.
            await wait_until(lambda: time.monotonic() - opened_seen >= breaker_cooldown,
                             "the cooldown to pass", step=breaker_cooldown / 20)
            figures.probe_result = await cache.async_get_cache("k")
            figures.circuit_after_probe = cache.stats()["circuit"]
        figures.loop_lag_p99_ms = probe.p99_ms()
        figures.loop_lag_max_ms = _max_lag_ms(probe)
    finally:
        await cache.aclose()
    return figures


def _max_lag_ms(probe: LoopLagProbe) -> float | None:
    return max(probe.lags) * 1000 if probe.lags else None


# -- 10,000 write-behind entries --------------------------------------------------------


@dataclass
class QueueFigures:
    """What landed in Redis after queuing ``entries`` write-behind entries and closing."""

    entries: int
    accepted: int = 0
    in_redis: int = 0
    flushed: int = 0
    given_up: int = 0
    queue_s: float = 0.0
    close_s: float = 0.0


async def queue_and_close(server: ManagedProcess, *, entries: int = 10_000,
                          flush_size: int = 500) -> QueueFigures:
    """Queue ``entries`` writes on a write-behind cache, close it, count what landed."""
    figures = QueueFigures(entries)
    before = await count_keys(server.port)
    cache = Cache(type="redis", port=server.port, flush_size=flush_size,
                  namespace=f"queue-{uuid.uuid4().hex[:8]}")
    started = time.perf_counter()
    try:
        for start in range(0, entries, 1000):
            done = await asyncio.gather(*(
                cache.async_set_cache(f"entry-{i}", {"i": i, "text": "réponse ✓"})
                for i in range(start, min(entries, start + 1000))
            ))
            figures.accepted += sum(done)
        figures.queue_s = time.perf_counter() - started
    finally:
        closing = time.perf_counter()
        await cache.aclose()
        figures.close_s = time.perf_counter() - closing
    stats = cache.stats()
    figures.flushed, figures.given_up = stats["flushed"], stats["given_up"]
    figures.in_redis = await count_keys(server.port) - before
    return figures


# -- object stores: kill and restart mid-batch -------------------------------------------


@dataclass
class StoreFigures:
    """What concurrent batch writers saw while their object-store server crashed."""

    store: str
    workers: int
    batches_started: int = 0
    batches_completed: int = 0
    batches_in_flight_at_kill: int = 0
    exceptions: list[str] = field(default_factory=list)
    failed_batches: int = 0
    recovery_s: float = float("nan")
    all_workers_recovered_s: float = float("nan")
    stats: dict[str, Any] = field(default_factory=dict)


def start_store(store: str) -> ManagedProcess:
    """Start the emulator of ``store`` (``s3``, ``gcs`` or ``azure_blob``) on 127.0.0.1."""
    from tests.servers import blob_servers

    starts = {"s3": blob_servers.start_moto, "gcs": blob_servers.start_fake_gcs,
              "azure_blob": blob_servers.start_azurite}
    return starts[store]()


def _store_bucket(store: str, server: ManagedProcess, bucket: str) -> dict[str, Any]:
    """Create ``bucket`` if the store needs it first; return the cache settings."""
    from tests.servers import blob_servers

    if store == "s3":
        blob_servers.create_s3_bucket(server, bucket)
        return blob_servers.moto_settings(server, bucket)
    if store == "gcs":
        blob_servers.create_gcs_bucket(server, bucket)
        return blob_servers.gcs_settings(server, bucket)
    return blob_servers.azurite_settings(server, bucket)  # created on first write


async def store_kill_restart(store: str, server: ManagedProcess, *, workers: int = 8,
                             batch: int = 20, rounds: int = 3, timeout: float = 5.0,
                             breaker_cooldown: float = 0.1) -> StoreFigures:
    """SIGKILL an object-store emulator while batches are in flight, then restart it.

    The emulators keep everything in memory, so the bucket is created again after the
    restart (a real store keeps its buckets); recovery is timed from that point.
    """
    figures = StoreFigures(store, workers)
    bucket = f"fault-{uuid.uuid4().hex[:16]}"
    settings = await asyncio.to_thread(_store_bucket, store, server, bucket)
    cache = Cache(type=store, **settings, timeout=timeout, breaker_threshold=3,
                  breaker_cooldown=breaker_cooldown)
    stop = asyncio.Event()
    phase = {"name": "warm"}
    ok_in: dict[str, list[int]] = {"warm": [0] * workers, "restarted": [0] * workers}
    first_ok_after_restart: list[float] = []
    in_flight = [0]
    failures_after_kill = [0]

    async def work(worker: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            items = {f"w{worker}-{n}": {"round": i, "n": n} for n in range(batch)}
            figures.batches_started += 1
            in_flight[0] += 1
            try:
                stored = await cache.async_set_cache_pipeline(items)
                got = await cache.async_batch_get_cache(list(items))
            except Exception as exc:  # the guarantee under test: never reached
                figures.exceptions.append(f"{type(exc).__name__}: {exc}")
                continue
            finally:
                in_flight[0] -= 1
            figures.batches_completed += 1
            if all(stored) and got == list(items.values()):
                current = phase["name"]
                if current in ok_in:
                    ok_in[current][worker] += 1
                    if current == "restarted" and not first_ok_after_restart:
                        first_ok_after_restart.append(time.perf_counter())
            else:
                figures.failed_batches += 1
                if phase["name"] == "killed":
                    failures_after_kill[0] += 1
            await asyncio.sleep(0.001)

    tasks = [asyncio.create_task(work(w)) for w in range(workers)]
    try:
        await wait_until(lambda: min(ok_in["warm"]) >= rounds, "every worker to succeed")
        await wait_until(lambda: in_flight[0] > 0, "a batch in flight")
        # No await between the check and the kill: the batches counted are in flight.
        figures.batches_in_flight_at_kill = in_flight[0]
        phase["name"] = "killed"
        server.kill()
        await wait_until(lambda: failures_after_kill[0] > 0, "batches to fail after the kill")
        await asyncio.to_thread(server.start, 60.0)
        await asyncio.to_thread(_store_bucket, store, server, bucket)
        restarted_at = time.perf_counter()
        phase["name"] = "restarted"
        await wait_until(lambda: min(ok_in["restarted"]) >= 1,
                         "every worker to succeed after the restart", limit=60.0)
        figures.all_workers_recovered_s = time.perf_counter() - restarted_at
        figures.recovery_s = max(0.0, first_ok_after_restart[0] - restarted_at)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60.0)
        figures.stats = cache.stats()
        await cache.aclose()
    return figures


# -- the report -------------------------------------------------------------------------


def _fresh_valkey(name: str) -> ManagedProcess:
    return start_valkey(search=False, name=name)


def _stop(server: ManagedProcess) -> None:
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


async def run_all(stores: bool = True) -> dict[str, Any]:
    """Run every scenario on fresh servers; return the figures by scenario.

    ``stores`` adds the object-store kill/restart scenario (moto, fake-gcs-server, Azurite).
    """
    figures: dict[str, Any] = {}
    for name, scenario in (("kill_restart", kill_restart), ("pause", pause_resume),
                           ("queue_10k", queue_and_close)):
        server = await asyncio.to_thread(_fresh_valkey, f"valkey-{name}")
        try:
            figures[name] = await scenario(server)
        finally:
            with contextlib.suppress(Exception):
                _stop(server)
    if stores:
        from tests.servers.processes import ServiceUnavailable

        for store in ("s3", "gcs", "azure_blob"):
            try:
                server = await asyncio.to_thread(start_store, store)
            except ServiceUnavailable as exc:
                figures[store] = f"skipped: {exc}"
                continue
            try:
                figures[store] = await store_kill_restart(store, server)
            finally:
                with contextlib.suppress(Exception):
                    _stop(server)
    return figures


def report(figures: dict[str, Any]) -> str:
    """The figures as plain text lines."""
    kill: KillRestartFigures = figures["kill_restart"]
    pause: PauseFigures = figures["pause"]
    queue: QueueFigures = figures["queue_10k"]
    lags = [lag for lag in (kill.loop_lag_p99_ms, pause.loop_lag_p99_ms) if lag is not None]
    lines = [
        "asynccache fault report (valkey-server on 127.0.0.1)",
        "",
        f"kill/restart, {kill.workers} workers doing set+get:",
        f"  calls completed / started:           {kill.calls_completed} / {kill.calls_started}",
        f"  exceptions seen by workers:          {len(kill.exceptions)}",
        f"  failed round trips while down:       {kill.failed_round_trips}",
        f"  recovery after restart (first ok):   {kill.recovery_s:.3f} s",
        f"  recovery after restart (all {kill.workers}):     "
        f"{kill.all_workers_recovered_s:.3f} s",
        f"  errors / timeouts / skipped (open):  {kill.stats.get('errors')} / "
        f"{kill.stats.get('timeouts')} / {kill.stats.get('skipped_open_circuit')}",
        f"  loop lag p99 / max:                  {_ms(kill.loop_lag_p99_ms)} / "
        f"{_ms(kill.loop_lag_max_ms)}",
        "",
        f"pause (SIGSTOP), timeout={pause.timeout} s:",
        f"  calls completed while frozen:        {pause.calls_while_frozen}",
        f"  exceptions seen by callers:          {len(pause.exceptions)}",
        f"  slowest call while frozen:           {pause.max_call_s_while_frozen:.3f} s",
        f"  timeouts / skipped (open circuit):   {pause.timeouts} / "
        f"{pause.skipped_open_circuit}",
        f"  circuit while frozen / after probe:  {pause.circuit_while_frozen} / "
        f"{pause.circuit_after_probe}",
        f"  loop lag p99 / max:                  {_ms(pause.loop_lag_p99_ms)} / "
        f"{_ms(pause.loop_lag_max_ms)}",
        "",
        f"write-behind, {queue.entries} entries then aclose():",
        f"  entries in Redis afterwards:         {queue.in_redis} of {queue.entries}",
        f"  flushed / given up (stats):          {queue.flushed} / {queue.given_up}",
        f"  queue time / close (drain) time:     {queue.queue_s:.3f} s / {queue.close_s:.3f} s",
        "",
        f"loop lag p99 throughout (worst):       {_ms(max(lags) if lags else None)}",
    ]
    for store in ("s3", "gcs", "azure_blob"):
        found = figures.get(store)
        if found is None:
            continue
        lines.append("")
        if isinstance(found, str):
            lines.append(f"{store}: {found}")
            continue
        lines += [
            f"{store} emulator killed mid-batch, {found.workers} batch writers:",
            f"  batches completed / started:         {found.batches_completed} / "
            f"{found.batches_started} ({found.batches_in_flight_at_kill} in flight at the kill)",
            f"  exceptions seen by writers:          {len(found.exceptions)}",
            f"  recovery after restart (first ok):   {found.recovery_s:.3f} s",
            f"  recovery after restart (all):        {found.all_workers_recovered_s:.3f} s",
            f"  errors / timeouts / skipped (open):  {found.stats.get('errors')} / "
            f"{found.stats.get('timeouts')} / {found.stats.get('skipped_open_circuit')}",
        ]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m benchmarks.fault_report [--no-stores]``."""
    import argparse
    import logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-stores", action="store_true",
                        help="skip the object-store scenario (moto, fake-gcs, Azurite)")
    args = parser.parse_args(argv)
    # The scenarios fail on purpose; their burst-limited warnings are not the report.
    logging.getLogger("asynccache").setLevel(logging.ERROR)
    print(report(asyncio.run(run_all(stores=not args.no_stores))))


if __name__ == "__main__":
    main()
