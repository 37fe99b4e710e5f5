"""Real faults on the SQL store: PostgreSQL or MariaDB killed mid-batch, then restarted.

Each test starts a server of its own (the session's servers are never touched), kills
it with SIGKILL while workers run batches, restarts it on the same port and data, and
checks that no call raised, that failures were counted, that every worker recovered and
that every batch acknowledged before the crash is still there. Waits are on observable
conditions with generous upper bounds.
"""

from __future__ import annotations

import asyncio

import pytest

from asynccache import Cache
from benchmarks.fault_report import wait_until
from tests.plugins.services import service_unavailable
from tests.servers.processes import ServiceUnavailable
from tests.servers.sql_servers import start_mariadb, start_postgres


@pytest.fixture(params=["postgres", "mariadb"])
def private_sql(request):
    start = start_postgres if request.param == "postgres" else start_mariadb
    try:
        server = start(name=f"{request.param}-fault")
    except ServiceUnavailable as exc:
        service_unavailable(request.param, exc)
    yield server
    server.stop()


async def test_server_killed_mid_batch_no_exception_recovery_and_nothing_acked_lost(private_sql):
    server = private_sql
    cache = Cache(type="sql", url=server.url, timeout=2.0, breaker_cooldown=0.2)
    stop = asyncio.Event()
    exceptions: list[BaseException] = []
    acked: list[str] = []
    in_flight = 0
    ok_batches = 0
    failed_batches = 0

    async def worker(name: int) -> None:
        nonlocal in_flight, ok_batches, failed_batches
        batch = 0
        while not stop.is_set():
            items = {f"w{name}-b{batch}-{i}": {"i": i} for i in range(50)}
            in_flight += 1
            try:
                flags = await cache.async_set_cache_pipeline(items)
                got = await cache.async_batch_get_cache(list(items))
            except BaseException as exc:
                exceptions.append(exc)
                return
            finally:
                in_flight -= 1
            if all(flags):
                acked.extend(items)
            if all(flags) and got == list(items.values()):
                ok_batches += 1
            else:
                failed_batches += 1
            batch += 1

    workers = [asyncio.create_task(worker(n)) for n in range(4)]
    try:
        await wait_until(lambda: ok_batches >= 8, "batches before the crash")
        in_flight_at_kill = in_flight
        await asyncio.to_thread(server.kill)
        await wait_until(lambda: failed_batches > 0, "a failed batch while the server is down")
        before_restart = ok_batches
        await asyncio.to_thread(server.restart)
        await wait_until(lambda: ok_batches >= before_restart + 8, "batches after the restart")
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert exceptions == []
    assert in_flight_at_kill > 0  # the kill landed mid-batch
    stats = cache.stats()
    assert stats["errors"] + stats["timeouts"] > 0
    assert stats["set_failures"] > 0
    found = await cache.async_batch_get_cache(acked)
    assert [key for key, value in zip(acked, found, strict=True) if value is None] == []
    assert cache.stats()["circuit"] == "closed"
    await cache.aclose()
