"""Redis Cluster on a real 6-node valkey cluster: per-node pipelines and failovers.

The contract suite runs against the cluster too (tests/plugins/redis.py); these tests
cover what only a cluster has.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot

from asynccache import Cache
from asynccache.backends.redis_cluster import RedisClusterBackend, RedisClusterCache
from asynccache.keys import namespace_prefix
from tests.helpers import CacheTracker, unique
from tests.servers.processes import wait_cluster_ok


def cluster_nodes(port: int) -> list[dict]:
    """CLUSTER NODES as dicts (port, id, role, primary id, slots), seen from ``port``."""
    with redis.Redis(host="127.0.0.1", port=port, decode_responses=True) as client:
        text = client.execute_command("CLUSTER", "NODES")
    rows = []
    for line in text.splitlines():
        parts = line.split()
        flags = parts[2].split(",")
        rows.append({
            "id": parts[0], "port": int(parts[1].split("@")[0].rsplit(":", 1)[1]),
            "role": "primary" if "master" in flags else "replica",
            "failed": "fail" in flags, "primary_id": parts[3], "slots": parts[8:],
        })
    return rows


def live_port(cluster) -> int:
    return next(node.port for node in cluster.nodes if node.running)


def primary_ports(cluster) -> list[int]:
    return sorted(row["port"] for row in cluster_nodes(live_port(cluster))
                  if row["role"] == "primary" and not row["failed"] and row["slots"])


def command_calls(port: int, name: str) -> int:
    with redis.Redis(host="127.0.0.1", port=port) as client:
        stat = client.info("commandstats").get(f"cmdstat_{name}")
    return 0 if stat is None else int(stat["calls"])


@pytest.fixture
async def make(valkey_cluster):
    def build(**settings):
        settings.setdefault("namespace", unique("rc"))
        return Cache(type="redis", redis_startup_nodes=valkey_cluster.startup_nodes[:2],
                     **settings)

    tracker = CacheTracker(build)
    yield tracker
    await tracker.aclose()


@pytest.fixture
def sends(monkeypatch) -> Iterator[list[int]]:
    counted: list[int] = []
    original = AbstractConnection.send_packed_command

    async def counting(self, command, check_health=True):
        counted.append(self.port)
        return await original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    yield counted


async def test_batch_over_many_slots_is_one_pipeline_per_primary(make, valkey_cluster, sends):
    cache = make()
    keys = [f"key-{i}" for i in range(1000)]
    prefix = namespace_prefix(cache.namespace).encode()
    assert len({key_slot(prefix + k.encode()) for k in keys}) > 900  # really many slots
    await cache.async_set_cache_pipeline({"warm-" + k: 0 for k in keys[:50]})  # connect
    primaries = primary_ports(valkey_cluster)
    before = {port: command_calls(port, "set") for port in primaries}
    sends.clear()
    values = {k: {"i": i, "text": "héllo"} for i, k in enumerate(keys)}
    assert await cache.async_set_cache_pipeline(values, ttl=60) == [True] * 1000
    per_node = {port: command_calls(port, "set") - before[port] for port in primaries}
    assert sum(per_node.values()) == 1000
    assert all(count > 0 for count in per_node.values())
    assert sorted(sends) == primaries  # one write per primary
    mixed = [k if i % 3 else f"missing-{i}" for i, k in enumerate(keys)]
    got = await cache.async_batch_get_cache(mixed)
    assert got == [values.get(k) for k in mixed]


async def test_64_concurrent_gets_are_one_pipeline_per_primary(make, valkey_cluster, sends):
    cache = make()
    await cache.async_set_cache_pipeline({f"c{i}": i for i in range(64)})
    primaries = primary_ports(valkey_cluster)
    before = sum(command_calls(port, "get") for port in primaries)
    sends.clear()
    got = await asyncio.gather(*(cache.async_get_cache(f"c{i}") for i in range(64)))
    assert got == list(range(64))
    assert sum(command_calls(port, "get") for port in primaries) - before == 64
    assert len(sends) == len(set(sends)) <= len(primaries)


async def test_clear_scans_every_primary(make, valkey_cluster):
    base = unique("clr")
    mine, other = make(namespace=base), make(namespace=base + "-x")
    await mine.async_set_cache_pipeline({f"k{i}": i for i in range(600)})
    await other.async_set_cache_pipeline({"k": "kept"})
    assert await mine.async_clear() == 600
    assert await mine.async_batch_get_cache(["k0", "k599"]) == [None, None]
    assert await other.async_get_cache("k") == "kept"


async def test_get_ttl_increment_and_delete_route_by_slot(make):
    cache = make()
    await cache.async_set_cache("t", 1, ttl=100)
    await cache.async_set_cache("never", 1, ttl=None)
    remaining = await cache.async_get_ttl("t")
    assert remaining is not None and 0 < remaining <= 100
    assert await cache.async_get_ttl("never") is None
    assert await cache.async_increment("n", 2, ttl=50) == 2
    assert await cache.async_delete_many(["t", "never", "n", "absent"]) == 3


def test_cluster_settings_and_describe_hide_the_password():
    backend = RedisClusterBackend([{"host": "127.0.0.1", "port": 7000}], password="hunter2")
    assert "hunter2" not in repr(backend.describe())
    cache = RedisClusterCache("127.0.0.1:7000,127.0.0.1:7001", namespace="n")
    assert cache.backend.settings.startup_nodes == (("127.0.0.1", 7000), ("127.0.0.1", 7001))
    with pytest.raises(Exception, match="startup_nodes"):
        RedisClusterBackend()


async def _write_through(cache, stop: asyncio.Event, written: dict, failures: list,
                         worker: int) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        key, value = f"f{worker}-{i}", {"w": worker, "i": i}
        if await cache.async_set_cache(key, value):
            written[key] = value
        else:
            failures.append(key)
        await asyncio.sleep(0)


async def _until(condition, what: str, steps: int = 3000) -> None:
    for _ in range(steps):
        if await asyncio.to_thread(condition):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_manual_failover_in_the_middle_of_writes(make, valkey_cluster):
    cache = make(timeout=15, cluster_retry_seconds=10)
    stop, written, failures = asyncio.Event(), {}, []
    workers = [asyncio.create_task(_write_through(cache, stop, written, failures, w))
               for w in range(4)]
    try:
        await _until(lambda: len(written) > 100, "writes before the failover")
        rows = cluster_nodes(live_port(valkey_cluster))
        replica = next(r for r in rows if r["role"] == "replica" and not r["failed"])
        with redis.Redis(host="127.0.0.1", port=replica["port"]) as client:
            client.execute_command("CLUSTER", "FAILOVER")
        await _until(lambda: any(r["port"] == replica["port"] and r["role"] == "primary"
                                 for r in cluster_nodes(replica["port"])), "the promotion")
        after = len(written)
        await _until(lambda: len(written) > after + 200, "writes after the failover")
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert failures == []
    assert cache.backend.retried_commands > 0  # the writes really went through the failover
    keys = list(written)
    assert await cache.async_batch_get_cache(keys) == [written[k] for k in keys]


async def test_primary_killed_in_the_middle_of_writes(make, valkey_cluster):
    cache = make(timeout=20, cluster_retry_seconds=15)
    stop, written, failures = asyncio.Event(), {}, []
    workers = [asyncio.create_task(_write_through(cache, stop, written, failures, w))
               for w in range(4)]
    victim = valkey_cluster.node_by_port(primary_ports(valkey_cluster)[0])
    try:
        await _until(lambda: len(written) > 100, "writes before the crash")
        rows = cluster_nodes(victim.port)
        victim_id = next(r["id"] for r in rows if r["port"] == victim.port)
        victim.kill()
        survivor = live_port(valkey_cluster)
        await _until(lambda: any(r["primary_id"] == "-" and r["role"] == "primary"
                                 and r["slots"] and r["id"] != victim_id
                                 and r["port"] != victim.port
                                 for r in cluster_nodes(survivor))
                     and all(not (r["id"] == victim_id and r["slots"])
                             for r in cluster_nodes(survivor)),
                     "the replica to take over")
        after = len(written)
        await _until(lambda: len(written) > after + 200, "writes after the failover")
    finally:
        stop.set()
        await asyncio.gather(*workers)
        if not victim.running:
            await asyncio.to_thread(victim.start)
        ports = [node.port for node in valkey_cluster.nodes]
        await asyncio.to_thread(wait_cluster_ok, ports, 30.0)
    assert failures == []
    assert cache.backend.retried_commands > 0  # the writes really went through the failover
    keys = list(written)
    assert await cache.async_batch_get_cache(keys) == [written[k] for k in keys]


def _node_id(port: int) -> str:
    with redis.Redis(host="127.0.0.1", port=port, decode_responses=True) as client:
        return str(client.execute_command("CLUSTER", "MYID"))


def _migrate_slot(slot: int, source: int, target: int, all_ports: list[int]) -> int:
    """Move ``slot`` from the primary on ``source`` to the one on ``target``, key batch by
    key batch, as a resharding tool does; return how many keys moved."""
    source_id, target_id = _node_id(source), _node_id(target)
    moved = 0
    with redis.Redis(host="127.0.0.1", port=source) as src, \
            redis.Redis(host="127.0.0.1", port=target) as dst:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while True:
            keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 20)
            if not keys:
                break
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
        for port in [target, source, *[p for p in all_ports if p not in (source, target)]]:
            with redis.Redis(host="127.0.0.1", port=port) as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    return moved


async def test_slot_migration_in_the_middle_of_reads_and_writes(make, valkey_cluster):
    cache = make(timeout=15, cluster_retry_seconds=10)
    prefix = namespace_prefix(cache.namespace).encode()
    # A hash tag keeps every key of this test in one slot (the namespace has no braces).
    tag = unique("tag")
    slot = key_slot(prefix + b"{" + tag.encode() + b"}")
    primaries = primary_ports(valkey_cluster)
    owner = next(row["port"] for row in cluster_nodes(primaries[0])
                 if row["role"] == "primary" and row["slots"] and any(
                     _covers(part, slot) for part in row["slots"]))
    target = next(port for port in primaries if port != owner)
    seeded = {f"{{{tag}}}-seed-{i}": i for i in range(300)}
    assert await cache.async_set_cache_pipeline(seeded) == [True] * 300
    stop, failures, misses = asyncio.Event(), [], []
    written: dict[str, int] = {}

    async def churn(worker: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            key = f"{{{tag}}}-w{worker}-{i}"
            if await cache.async_set_cache(key, i):
                written[key] = i
            else:
                failures.append(key)
            batch = list(seeded)[(i * 7) % 280:(i * 7) % 280 + 20]
            got = await cache.async_batch_get_cache(batch)
            misses.extend(k for k, v in zip(batch, got, strict=True) if v != seeded[k])
            await asyncio.sleep(0)

    workers = [asyncio.create_task(churn(w)) for w in range(4)]
    try:
        moved = await asyncio.to_thread(_migrate_slot, slot, owner, target, primaries)
        after = len(written)
        await _until(lambda: len(written) > after + 50, "writes after the migration")
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert moved >= 300
    assert failures == [] and misses == []
    assert cache.backend.redirections > 0  # ASK/MOVED really happened and were followed
    assert cache.stats()["backend_counters"]["redirections"] == cache.backend.redirections
    everything = {**seeded, **written}
    keys = list(everything)
    assert await cache.async_batch_get_cache(keys) == [everything[k] for k in keys]


def _covers(part: str, slot: int) -> bool:
    if part.startswith("["):  # a slot being migrated, shown as [slot->-id]
        return False
    low, _, high = part.partition("-")
    return int(low) <= slot <= int(high or low)


async def test_redis_cluster_type_name_picks_the_cluster(valkey_cluster):
    async with Cache(type="redis-cluster", startup_nodes=valkey_cluster.startup_nodes,
                     namespace=unique("t")) as cache:
        assert isinstance(cache.backend, RedisClusterBackend)
        assert await cache.async_set_cache("k", "v") is True
        assert await cache.async_get_cache("k") == "v"


async def test_more_concurrent_writers_than_connections_all_succeed(make):
    cache = make(max_connections=2)
    results = await asyncio.gather(*(cache.async_set_cache(f"m{i}", i) for i in range(300)))
    assert results == [True] * 300
    assert await cache.async_batch_get_cache([f"m{i}" for i in range(300)]) == list(range(300))
    assert cache.backend.retried_commands == 0
