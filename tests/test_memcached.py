"""Memcached-specific behaviour on real memcached nodes: keys, TTLs, item size, counters,
generation-token clears and how batches reach the nodes.

What the servers hold is read back from the servers themselves (``stats``,
``lru_crawler metadump``), not from the client.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from asynccache import Cache, ConfigurationError, ItemTooLargeError
from asynccache.backends import memcached as mc
from asynccache.backends.memcached import MemcachedBackend, memcached_expiry, parse_servers
from tests.helpers import FakeClock, assert_in_forked_child, unique
from tests.plugins.services import service_unavailable
from tests.servers.memcached import (
    item_expiries,
    raw_get,
    raw_set,
    server_stats,
    start_memcached_nodes,
)
from tests.servers.processes import ServiceUnavailable

DAY = 24 * 3600


@pytest.fixture(scope="module")
def memcached_2m():
    """A node started with ``-I 2m`` (2 MB item limit)."""
    try:
        nodes = start_memcached_nodes(1, extra_args=("-I", "2m"))
    except ServiceUnavailable as exc:
        service_unavailable("memcached -I 2m", exc)
    yield nodes
    nodes.stop()


@pytest.fixture
async def caches():
    made: list[Cache] = []

    def make(servers, **settings) -> Cache:
        settings.setdefault("namespace", unique("mc"))
        cache = Cache(type="memcached", servers=servers, **settings)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.aclose()


def port_of(server: str) -> int:
    return int(server.rsplit(":", 1)[1])


def expiries(nodes) -> dict[str, int]:
    found: dict[str, int] = {}
    for server in nodes.servers:
        found.update(item_expiries(port_of(server)))
    return found


def data_items(found: dict[str, int], prefix: str = "ac:d") -> dict[str, int]:
    return {key: exp for key, exp in found.items() if key.startswith(prefix)}


def expiry_of(found: dict[str, int], namespace: str, key: str) -> int:
    """The server's expiry of entry ``key`` of ``namespace`` (its readable key form)."""
    (exp,) = [exp for name, exp in data_items(found).items()
              if name.endswith(f"={namespace}:{key}")]
    return exp


class ExchangeSpy:
    """Records every request sent to a node: (node, 'start'/'end')."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[int, str]] = []
        original = mc._Pool.exchange
        spy = self

        async def exchange(pool, data, lines, get_keys, *, retry):
            spy.events.append((pool.port, "start"))
            try:
                return await original(pool, data, lines, get_keys, retry=retry)
            finally:
                spy.events.append((pool.port, "end"))

        monkeypatch.setattr(mc._Pool, "exchange", exchange)

    def requests(self) -> list[int]:
        return [port for port, kind in self.events if kind == "start"]

    def reset(self) -> None:
        self.events.clear()


# -- settings -----------------------------------------------------------------------------


def test_servers_are_read_from_every_spelling_and_bad_ones_named():
    assert parse_servers(["127.0.0.1:1", ("h", 2), {"host": "x", "port": "3"}, "[::1]:4",
                          "solo"]) == (("127.0.0.1", 1), ("h", 2), ("x", 3), ("::1", 4),
                                       ("solo", 11211))
    with pytest.raises(ConfigurationError, match="port"):
        parse_servers("h:notaport")
    with pytest.raises(ConfigurationError, match="twice"):
        parse_servers("h:1,h:1")
    with pytest.raises(ConfigurationError, match="key_prefix"):
        MemcachedBackend(servers="h:1", key_prefix="has space")
    with pytest.raises(ConfigurationError, match="item_size_max"):
        MemcachedBackend(servers="h:1", item_size_max="lots")
    with pytest.raises(ConfigurationError, match="unknown setting 'no_such_setting'"):
        Cache(type="memcached", servers="h:1", no_such_setting=1)


def test_servers_come_from_the_environment_when_not_given():
    backend = MemcachedBackend(environ={"MEMCACHED_SERVERS": "10.0.0.1:1,10.0.0.2:2"})
    assert backend.servers == (("10.0.0.1", 1), ("10.0.0.2", 2))
    assert MemcachedBackend(environ={}).servers == (("127.0.0.1", 11211),)


def test_ttl_conversion():
    now = 1_700_000_000
    assert memcached_expiry(None, now) == 0
    assert memcached_expiry(0.001, now) == 2  # rounded up, plus memcached's clock tick
    assert memcached_expiry(30 * DAY - 1, now) == 30 * DAY  # still relative
    assert memcached_expiry(30 * DAY, now) == now + 30 * DAY + 1  # absolute beyond 30 days


def test_placement_is_stable_across_instances_and_server_order():
    servers = [f"127.0.0.1:{port}" for port in (11311, 11312, 11313)]
    one, two = MemcachedBackend(servers=servers), MemcachedBackend(servers=servers[::-1])
    keys = [f"ns:key-{i}" for i in range(300)]
    placed_one = [one._label(one._node_of(body)) for body in one._plan(keys)[0]]
    placed_two = [two._label(two._node_of(body)) for body in two._plan(keys)[0]]
    assert placed_one == placed_two
    assert set(placed_one) == set(servers)  # every node gets a share


# -- TTL on the server --------------------------------------------------------------------


async def test_ttls_reach_the_server_converted(memcached_server, caches):
    cache = caches(memcached_server.servers)
    port = memcached_server.nodes[0].port
    before, server_before = int(time.time()), int(server_stats(port)["time"])
    await cache.async_set_cache("forty-days", "v", ttl=40 * DAY)
    await cache.async_set_cache("forever", "v", ttl=None)
    await cache.async_set_cache("short", "v", ttl=0.3)
    after, server_after = int(time.time()), int(server_stats(port)["time"])
    # An expiry over 30 days sent as relative seconds would be read as a date in 1970:
    # the entry would be gone at once.
    assert await cache.async_get_cache("forty-days") == "v"
    found = item_expiries(port)
    ns = cache.namespace
    assert before + 40 * DAY <= expiry_of(found, ns, "forty-days") <= after + 40 * DAY + 2
    assert expiry_of(found, ns, "forever") == -1
    # Whole seconds, relative: one second from the server's own clock (which ticks once a
    # second and need not agree with this process's wall clock).
    assert server_before + 1 <= expiry_of(found, ns, "short") <= server_after + 2


async def test_sub_second_ttl_is_exact_for_readers(memcached_server, caches):
    clock = FakeClock()
    cache = caches(memcached_server.servers, clock=clock)
    await cache.async_set_cache("k", "v", ttl=0.3)
    clock.advance(0.29)
    assert await cache.async_get_cache("k") == "v"
    clock.advance(0.02)
    assert await cache.async_get_cache("k") is None  # memcached still holds it


# -- item size ----------------------------------------------------------------------------


async def test_values_over_the_item_limit_raise_naming_it(memcached_server, caches):
    cache = caches(memcached_server.servers)
    with pytest.raises(ItemTooLargeError, match=r"item_size_max=1048576.*-I"):
        await cache.async_set_cache("big", b"x" * (1024 * 1024))
    assert await cache.async_get_cache("big") is None
    # The largest accepted entry is really stored by a default server.
    largest = cache.max_item_size - 21  # the entry header
    assert await cache.async_set_cache("largest", b"y" * largest) is True
    assert await cache.async_get_cache("largest") == b"y" * largest
    with pytest.raises(ItemTooLargeError):
        await cache.async_set_cache_pipeline({"ok": 1, "big": b"x" * (1024 * 1024)})
    assert await cache.async_get_cache("ok") is None


async def test_a_server_with_a_larger_item_limit(memcached_2m, memcached_server, caches):
    value = b"z" * (1536 * 1024)
    cache = caches(memcached_2m.servers, item_size_max="2m")
    assert await cache.async_set_cache("big", value) is True
    assert await cache.async_get_cache("big") == value
    with pytest.raises(ItemTooLargeError, match="item_size_max=2097152"):
        await cache.async_set_cache("bigger", b"z" * (2 * 1024 * 1024))
    # item_size_max larger than the server's -I: the server refuses, the write is False.
    wrong = caches(memcached_server.servers, item_size_max="2m")
    assert await wrong.async_set_cache("big", value) is False
    assert await wrong.async_get_cache("big") is None
    assert await wrong.async_set_cache("small", 1) is True


# -- counters -----------------------------------------------------------------------------


async def test_integer_counters_are_atomic_across_clients(memcached_nodes, caches):
    namespace = unique("cnt")
    clients = [caches(memcached_nodes.servers, namespace=namespace) for _ in range(4)]
    results = await asyncio.gather(*(clients[i % 4].async_increment("hits")
                                     for i in range(200)))
    assert sorted(results) == list(range(1, 201))  # every increment saw a distinct value
    assert all(type(result) is int for result in results)
    assert await clients[0].async_get_cache("hits") == 200


async def test_fractional_and_negative_counters_use_compare_and_swap(memcached_nodes, caches):
    namespace = unique("cas")
    clients = [caches(memcached_nodes.servers, namespace=namespace) for _ in range(4)]
    await asyncio.gather(*(clients[i % 4].async_increment("score", 0.5) for i in range(60)))
    assert await clients[0].async_get_cache("score") == 30.0
    await asyncio.gather(*(clients[i % 4].async_increment("score", -1) for i in range(40)))
    assert await clients[1].async_get_cache("score") == -10.0
    assert await clients[1].async_increment("fresh", -2) == -2


async def test_a_counter_keeps_its_ttl_and_a_cached_value_restarts_it(memcached_server,
                                                                      caches):
    cache = caches(memcached_server.servers)
    assert await cache.async_increment("c", 1, ttl=100) == 1
    assert await cache.async_increment("c", 0.5, ttl=5000) == 1.5
    exp = expiry_of(item_expiries(memcached_server.nodes[0].port), cache.namespace, "c")
    assert time.time() + 90 < exp <= time.time() + 102  # the creation TTL, not 5000
    await cache.async_set_cache("cached", {"not": "a number"})
    assert await cache.async_increment("cached", 3) == 3


# -- clear --------------------------------------------------------------------------------


async def test_clear_never_flushes_and_leaves_other_namespaces_and_apps(memcached_nodes,
                                                                        caches):
    ports = [port_of(s) for s in memcached_nodes.servers]
    raw_set(ports[0], b"other-app:key", b"theirs")
    flushes = [server_stats(port)["cmd_flush"] for port in ports]
    mine = caches(memcached_nodes.servers)
    theirs = caches(memcached_nodes.servers)
    await mine.async_set_cache_pipeline({f"k{i}": i for i in range(30)})
    await theirs.async_set_cache_pipeline({f"k{i}": -i for i in range(30)})
    assert await mine.async_clear() >= 1
    assert await mine.async_batch_get_cache([f"k{i}" for i in range(30)]) == [None] * 30
    assert await theirs.async_batch_get_cache([f"k{i}" for i in range(30)]) == [
        -i for i in range(30)]
    assert raw_get(ports[0], b"other-app:key") == b"theirs"
    assert [server_stats(port)["cmd_flush"] for port in ports] == flushes
    # The namespace works again after the clear.
    assert await mine.async_set_cache("k1", "again") is True
    assert await mine.async_get_cache("k1") == "again"


async def test_clear_everything_of_the_cache_keeps_foreign_items(memcached_server, caches):
    port = memcached_server.nodes[0].port
    raw_set(port, b"other-app:key", b"theirs")
    cache = caches(memcached_server.servers, namespace=None, key_prefix=unique("p") + ":")
    await cache.async_set_cache("plain", 1)
    await cache.async_set_cache("named", 2, namespace="n")
    await cache.async_clear()
    assert await cache.async_get_cache("plain") is None
    assert await cache.async_get_cache("named", namespace="n") is None
    assert raw_get(port, b"other-app:key") == b"theirs"


async def test_a_clear_by_another_client_is_seen_at_once(memcached_nodes, caches):
    namespace = unique("shared")
    reader = caches(memcached_nodes.servers, namespace=namespace)
    clearer = caches(memcached_nodes.servers, namespace=namespace)
    await reader.async_set_cache_pipeline({f"k{i}": i for i in range(20)})
    assert await reader.async_get_cache("k3") == 3  # the reader now knows the tokens
    await clearer.async_clear()
    assert await reader.async_batch_get_cache([f"k{i}" for i in range(20)]) == [None] * 20
    # A write by the client that still held the old tokens is visible to everyone.
    await reader.async_set_cache("k5", "new")
    await clearer.async_clear()
    assert await reader.async_set_cache("k6", "after") is True
    assert await clearer.async_get_cache("k6") == "after"
    assert await clearer.async_get_cache("k5") is None


async def test_a_request_that_used_old_tokens_is_redone(memcached_server, caches,
                                                        monkeypatch):
    namespace = unique("race")
    reader = caches(memcached_server.servers, namespace=namespace)
    writer = caches(memcached_server.servers, namespace=namespace)
    await reader.async_set_cache("k", "before the clear")
    assert await reader.async_get_cache("k") == "before the clear"  # old tokens cached
    await writer.async_clear()
    await writer.async_set_cache("k", "after the clear")
    stored = reader._stored_key("k", namespace)
    original = mc._Pool.exchange
    interleaved: list[list[bytes | None]] = []

    async def exchange(pool, data, lines, get_keys, *, retry):
        if not interleaved:
            # Another request of the same cache learns the new tokens while this one
            # is on its way with keys built from the old ones.
            interleaved.append([])
            interleaved[0] = await reader.backend.read_many([stored])
        return await original(pool, data, lines, get_keys, retry=retry)

    monkeypatch.setattr(mc._Pool, "exchange", exchange)
    found = await reader.backend.read_many([stored])
    assert found == interleaved[0] and found[0] is not None
    assert await reader.async_get_cache("k") == "after the clear"


# -- how requests reach the nodes ---------------------------------------------------------


async def test_batch_get_is_one_request_per_node_all_at_once(memcached_nodes, caches,
                                                             monkeypatch):
    cache = caches(memcached_nodes.servers)
    keys = [f"k{i}" for i in range(300)]
    await cache.async_set_cache_pipeline({key: key for key in keys})
    assert all(found for found in (data_items(item_expiries(port_of(s)))
                                   for s in memcached_nodes.servers))  # spread over all
    spy = ExchangeSpy(monkeypatch)
    assert await cache.async_batch_get_cache(keys) == keys
    assert sorted(spy.requests()) == sorted(port_of(s) for s in memcached_nodes.servers)
    assert [kind for _, kind in spy.events[:3]] == ["start"] * 3  # concurrently


async def test_batch_set_is_one_pipelined_request_per_node(memcached_nodes, caches,
                                                           monkeypatch):
    cache = caches(memcached_nodes.servers)
    await cache.async_set_cache_pipeline({f"warm{i}": i for i in range(30)})  # tokens made
    spy = ExchangeSpy(monkeypatch)
    assert await cache.async_set_cache_pipeline({f"k{i}": i for i in range(300)}) == [
        True] * 300
    assert sorted(spy.requests()) == sorted(port_of(s) for s in memcached_nodes.servers)


async def test_concurrent_single_gets_coalesce_into_one_multi_get(memcached_nodes, caches,
                                                                  monkeypatch):
    cache = caches(memcached_nodes.servers)
    await cache.async_set_cache_pipeline({f"k{i}": i for i in range(64)})
    spy = ExchangeSpy(monkeypatch)
    got = await asyncio.gather(*(cache.async_get_cache(f"k{i}") for i in range(64)))
    assert got == list(range(64))
    assert len(spy.requests()) == 3  # one multi-key get per node, not 64 gets


async def test_write_behind_batches_reach_every_node(memcached_nodes, caches):
    namespace = unique("behind")
    writer = caches(memcached_nodes.servers, namespace=namespace, flush_size=100)
    for i in range(300):
        assert await writer.async_set_cache(f"k{i}", i) is True
    await writer.async_flush()
    reader = caches(memcached_nodes.servers, namespace=namespace)
    assert await reader.async_batch_get_cache([f"k{i}" for i in range(300)]) == list(range(300))


# -- processes ----------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_uses_its_own_connections(memcached_nodes):
    cache = Cache(type="memcached", servers=memcached_nodes.servers, namespace=unique("fork"))
    assert cache.set_cache("parent", 1) is True  # the parent's connections now exist

    def in_child() -> list[bool]:
        checks = [cache.get_cache("parent") == 1, cache.set_cache("child", 2) is True,
                  cache.get_cache("child") == 2]
        cache.close()  # closes the child's connections only
        return checks

    assert_in_forked_child(in_child)
    # The parent's connections were neither used nor closed by the child.
    assert cache.get_cache("child") == 2
    assert cache.set_cache("parent", 3) is True
    assert cache.stats()["errors"] == 0
    cache.close()
