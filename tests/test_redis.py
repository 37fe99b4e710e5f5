"""Redis-specific behaviour on a real valkey-server: round trips, coalescing, write-behind,
TTLs, SCAN-based clear, configuration, loop affinity and a server restart under load."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Iterator

import pytest
import redis
from redis.asyncio.connection import AbstractConnection, SSLConnection

from asynccache import Cache
from asynccache.backends.redis import (
    ConnectionSet,
    RedisBackend,
    RedisCache,
    RedisSettings,
    create_redis_backend,
)
from asynccache.backends.redis_cluster import RedisClusterBackend
from asynccache.backends.redis_settings import (
    escape_glob,
    parse_cluster_nodes,
    redis_env_settings,
)
from asynccache.exceptions import ConfigurationError
from asynccache.keys import namespace_prefix
from tests.helpers import CacheTracker, chat_completion, unique
from tests.plugins.services import service_unavailable
from tests.servers.processes import ServiceUnavailable, free_port, start_valkey


@pytest.fixture
def raw(valkey_server) -> Iterator[redis.Redis]:
    """A plain sync client on the session server, to look behind the cache's back."""
    client = redis.Redis(host="127.0.0.1", port=valkey_server.port)
    yield client
    client.close()


@pytest.fixture
async def make(valkey_server):
    def build(**settings):
        settings.setdefault("namespace", unique("r"))
        return Cache(type="redis", host="127.0.0.1", port=valkey_server.port, **settings)

    tracker = CacheTracker(build)
    yield tracker
    await tracker.aclose()


def calls(client: redis.Redis) -> dict[str, int]:
    """Commands the server has executed so far, by name (INFO commandstats)."""
    info = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): stat["calls"] for name, stat in info.items()}


def delta(before: dict[str, int], after: dict[str, int], name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


@pytest.fixture
def sends(monkeypatch) -> list[int]:
    """How many separate writes of commands the redis connections made (round trips)."""
    counted: list[int] = []
    original = AbstractConnection.send_packed_command

    async def counting(self, command, check_health=True):
        counted.append(1)
        return await original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    return counted


# -- one round trip per batch -------------------------------------------------------------


async def test_batch_get_of_1000_keys_is_one_mget(make, raw, sends):
    cache = make()
    values = {f"k{i}": {"n": i, "text": "réponse ✓"} for i in range(1000)}
    assert await cache.async_set_cache_pipeline(values, ttl=60) == [True] * 1000
    keys = [f"k{i}" for i in range(1000)] + ["absent"]
    await cache.async_ping()
    before, sends_before = calls(raw), len(sends)
    got = await cache.async_batch_get_cache(keys[:1000])
    after = calls(raw)
    assert got == [values[k] for k in keys[:1000]]
    assert delta(before, after, "mget") == 1
    assert delta(before, after, "get") == 0
    assert len(sends) - sends_before == 1


async def test_pipeline_of_1000_sets_is_one_write_of_1000_set_commands(make, raw, sends):
    cache = make()
    await cache.async_ping()  # connect first: the handshake is not part of the batch
    before, sends_before = calls(raw), len(sends)
    items = [(f"p{i}", chat_completion(size=200), 30 if i % 2 else None) for i in range(1000)]
    assert await cache.async_set_cache_pipeline(items) == [True] * 1000
    after = calls(raw)
    assert delta(before, after, "set") == 1000
    assert delta(before, after, "multi") == 0  # not a transaction
    assert len(sends) - sends_before == 1
    prefix = namespace_prefix(cache.namespace)
    assert raw.pttl(prefix + "p1") > 0
    assert raw.pttl(prefix + "p2") == -1


async def test_64_concurrent_gets_are_coalesced_into_one_mget(make, raw):
    cache = make()
    await cache.async_set_cache_pipeline({f"c{i}": {"caller": i} for i in range(64)})
    before = calls(raw)
    got = await asyncio.gather(*(cache.async_get_cache(f"c{i}") for i in range(64)))
    after = calls(raw)
    assert got == [{"caller": i} for i in range(64)]
    assert delta(before, after, "mget") == 1
    assert delta(before, after, "get") == 0


async def test_coalesced_callers_each_see_the_failure_as_a_miss(make, monkeypatch):
    cache = make()
    await cache.async_set_cache("present", 1)

    async def broken(keys):
        raise redis.ConnectionError("connection reset")

    monkeypatch.setattr(cache.backend, "read_many", broken)
    got = await asyncio.gather(*(cache.async_get_cache("present") for _ in range(10)))
    assert got == [None] * 10
    assert cache.stats()["errors"] == 1


# -- TTLs -------------------------------------------------------------------------------


async def test_ttl_none_means_no_expiry_and_fractions_use_milliseconds(make, raw):
    cache = make()
    await cache.async_set_cache("forever", "v", ttl=None)
    await cache.async_set_cache("short", "v", ttl=2.5)
    await cache.async_set_cache("whole", "v", ttl=100)
    prefix = namespace_prefix(cache.namespace)
    assert raw.pttl(prefix + "forever") == -1
    assert 0 < raw.pttl(prefix + "short") <= 2500
    assert 2500 < raw.pttl(prefix + "whole") <= 100_000
    assert await cache.async_get_ttl("forever") is None
    remaining = await cache.async_get_ttl("short")
    assert remaining is not None and 0 < remaining <= 2.5


async def test_increment_is_atomic_and_sets_the_ttl_only_on_creation(make, raw):
    cache = make()
    results = await asyncio.gather(*(cache.async_increment("n", ttl=100) for _ in range(50)))
    assert sorted(results) == [float(i) for i in range(1, 51)]
    prefix = namespace_prefix(cache.namespace)
    first = raw.pttl(prefix + "n")
    assert 0 < first <= 100_000
    await cache.async_increment("n", 0.5, ttl=1)
    assert raw.pttl(prefix + "n") > 1000  # the counter kept its first TTL
    assert await cache.async_get_cache("n") == 50.5
    await cache.async_set_cache("text", {"not": "a number"})
    assert await cache.async_increment("text", 2) == 2
    assert await cache.async_get_cache("text") == 2


# -- clear --------------------------------------------------------------------------------


async def test_clear_scans_every_page_and_leaves_other_namespaces(make, raw):
    base = unique("clear")
    mine, other = make(namespace=base), make(namespace=base + "-other")
    await mine.async_set_cache_pipeline({f"k{i}": i for i in range(2500)})
    await other.async_set_cache_pipeline({f"k{i}": i for i in range(10)})
    raw.set(b"unrelated:" + base.encode(), b"x")
    before = calls(raw)
    assert await mine.async_clear() == 2500
    after = calls(raw)
    assert delta(before, after, "scan") >= 2  # more than one page
    assert delta(before, after, "flushdb") == delta(before, after, "flushall") == 0
    assert await mine.async_batch_get_cache(["k0", "k2499"]) == [None, None]
    assert await other.async_batch_get_cache(["k0", "k9"]) == [0, 9]
    assert raw.get(b"unrelated:" + base.encode()) == b"x"
    raw.delete(b"unrelated:" + base.encode())


async def test_clear_escapes_glob_characters_in_the_prefix(valkey_server, raw):
    backend = RedisBackend("127.0.0.1", valkey_server.port)
    tag = unique("g")
    try:
        await backend.write_many([(f"{tag}a*b[1]?x", b"1", None), (f"{tag}aXb1Qx", b"2", None)])
        assert await backend.remove_prefix(f"{tag}a*b[1]?") == 1
        assert raw.get(f"{tag}aXb1Qx") == b"2"
        assert await backend.remove_prefix(tag) == 1
    finally:
        await backend.aclose()
    assert escape_glob("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"


# -- write-behind -------------------------------------------------------------------------


async def test_write_behind_100_concurrent_writers_lose_nothing(make, raw):
    cache = make(redis_flush_size=50, flush_interval=0.05, max_queue_size=200)
    before = calls(raw)

    async def writer(w: int) -> list[bool]:
        return [await cache.async_set_cache(f"w{w}-{i}", {"w": w, "i": i}) for i in range(20)]

    accepted = await asyncio.gather(*(writer(w) for w in range(100)))
    assert all(all(flags) for flags in accepted)
    await cache.async_flush()
    after = calls(raw)
    assert delta(before, after, "set") == 2000
    reader = make(namespace=cache.namespace)
    keys = [f"w{w}-{i}" for w in range(100) for i in range(20)]
    assert await reader.async_batch_get_cache(keys) == [
        {"w": w, "i": i} for w in range(100) for i in range(20)
    ]
    assert cache.stats().get("given_up", 0) == 0
    assert cache.stats().get("dropped", 0) == 0


async def test_write_behind_reads_its_writes_and_drains_on_close(make, raw):
    # A huge batch size and interval: nothing leaves the queue until close.
    cache = make(redis_flush_size=10_000, flush_interval=3600, max_queue_size=10_000)
    stored = cache._stored_key("queued", cache.namespace)
    assert await cache.async_set_cache("queued", {"v": 1}) is True
    assert raw.get(stored) is None  # still queued
    assert await cache.async_get_cache("queued") == {"v": 1}  # read-your-writes
    assert cache.queued_writes == 1
    await cache.aclose()
    assert raw.get(stored) is not None
    reader = make(namespace=cache.namespace)
    assert await reader.async_get_cache("queued") == {"v": 1}


async def test_write_behind_flushes_a_full_batch_as_one_pipeline(make, raw, sends):
    cache = make(redis_flush_size=100, flush_interval=3600, max_queue_size=1000)
    await cache.async_ping()
    sends_before, before = len(sends), calls(raw)
    for i in range(100):
        await cache.async_set_cache(f"b{i}", i)
    # The 100th write fills the batch and wakes the worker; wait on what it does.
    for _ in range(1000):
        if cache.queued_writes == 0:
            break
        await asyncio.sleep(0.005)
    assert cache.queued_writes == 0
    assert delta(before, calls(raw), "set") == 100
    assert len(sends) - sends_before == 1


# -- configuration --------------------------------------------------------------------------


async def test_environment_variables_configure_the_cache(valkey_server, monkeypatch):
    monkeypatch.setenv("REDIS_HOST", "127.0.0.1")
    monkeypatch.setenv("REDIS_PORT", str(valkey_server.port))
    async with Cache(type="redis", namespace=unique("env")) as cache:
        assert await cache.async_set_cache("k", "v") is True
        assert await cache.async_get_cache("k") == "v"
    monkeypatch.delenv("REDIS_HOST")
    monkeypatch.delenv("REDIS_PORT")
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{valkey_server.port}/0")
    async with Cache(type="redis", namespace=unique("env")) as cache:
        assert await cache.async_ping() is True


async def test_explicit_arguments_override_environment_variables(valkey_server, monkeypatch):
    monkeypatch.setenv("REDIS_HOST", "127.0.0.1")
    monkeypatch.setenv("REDIS_PORT", str(free_port()))  # nothing listens there
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}")
    async with Cache(type="redis", port=str(valkey_server.port), namespace=unique("e")) as cache:
        assert await cache.async_ping() is True
    settings = RedisSettings.resolve(environ={"REDIS_HOST": "10.0.0.9", "REDIS_PORT": "7001",
                                              "REDIS_PASSWORD": "from-env"})
    assert (settings.host, settings.port, settings.password) == ("10.0.0.9", 7001, "from-env")
    settings = RedisSettings.resolve(host="127.0.0.1", environ={"REDIS_HOST": "10.0.0.9",
                                                                "REDIS_PASSWORD": "pw"})
    assert (settings.host, settings.port, settings.password) == ("127.0.0.1", 6379, "pw")


def test_cluster_is_chosen_by_startup_nodes_or_environment(monkeypatch):
    backend = create_redis_backend(redis_startup_nodes=[{"host": "127.0.0.1", "port": 7000}])
    assert isinstance(backend, RedisClusterBackend)
    monkeypatch.setenv("REDIS_CLUSTER_NODES", "127.0.0.1:7000,127.0.0.1:7001")
    backend = create_redis_backend()
    assert isinstance(backend, RedisClusterBackend)
    assert backend.settings.startup_nodes == (("127.0.0.1", 7000), ("127.0.0.1", 7001))
    assert isinstance(create_redis_backend(host="127.0.0.1", port=6380), RedisBackend)
    assert redis_env_settings({"REDIS_CLUSTER_NODES": '[{"host": "::1", "port": 7002}]'}) == {
        "startup_nodes": [{"host": "::1", "port": 7002}]
    }
    assert parse_cluster_nodes([("127.0.0.1", "7003")]) == [{"host": "127.0.0.1", "port": 7003}]


@pytest.mark.parametrize("settings, message", [
    ({"port": "not-a-port"}, "port"),
    ({"port": 70000}, "port"),
    ({"url": "http://127.0.0.1"}, "url"),
    ({"max_connections": 0}, "max_connections"),
    ({"socket_timeout": -1}, "socket_timeout"),
    ({"redis_startup_nodes": [{"host": "127.0.0.1"}]}, "port"),
    ({"no_such_setting": 1}, "no_such_setting"),
    ({"ssl_ca_certs": "/ca.pem"}, "ssl_ca_certs"),
])
def test_bad_settings_raise_naming_the_setting(settings, message):
    with pytest.raises(ConfigurationError, match=message):
        Cache(type="redis", **settings)


def test_constructor_does_no_io_and_secrets_stay_out_of_repr():
    port = free_port()  # nothing listens there; constructing must not notice
    cache = Cache(type="redis", url=f"redis://user:s3cret-pw@127.0.0.1:{port}/2")
    text = repr(cache) + repr(cache.stats()) + repr(cache.backend.describe())
    assert "s3cret-pw" not in text
    assert cache.backend.settings.db == 2 and cache.backend.settings.username == "user"
    assert "s3cret-pw" not in repr(cache.backend.settings)


def test_rediss_url_uses_tls_connections():
    settings = RedisSettings.resolve(url="rediss://127.0.0.1:6380")
    assert settings.ssl is True
    assert ConnectionSet(settings)._class is SSLConnection


async def test_password_from_url_authenticates(tmp_path):
    try:
        server = start_valkey(tmp_path / "auth", search=False,
                              extra_args=["--requirepass", "pa:ss@word"], name="valkey-auth")
    except ServiceUnavailable as exc:
        service_unavailable("valkey-server", exc)
    try:
        good = Cache(type="redis", url=f"redis://:pa%3Ass%40word@127.0.0.1:{server.port}")
        bad = Cache(type="redis", port=server.port, password="wrong")
        try:
            assert await good.async_set_cache("k", 1) is True
            assert await good.async_get_cache("k") == 1
            assert await bad.async_ping() is False
            assert await bad.async_get_cache("k") is None
        finally:
            await good.aclose()
            await bad.aclose()
    finally:
        server.stop()


async def test_max_connections_is_a_hard_limit(valkey_server, raw):
    name = unique("pool").replace("-", "")
    cache = RedisCache(host="127.0.0.1", port=valkey_server.port, max_connections=2,
                       client_name=name, coalesce_reads=False, namespace=unique("mc"))
    try:
        await cache.async_set_cache_pipeline({f"k{i}": i for i in range(50)})
        got = await asyncio.gather(*(cache.async_batch_get_cache([f"k{i}", "x"])
                                     for i in range(50)))
        assert got == [[i, None] for i in range(50)]
        mine = [c for c in raw.client_list() if c.get("name") == name]
        assert 1 <= len(mine) <= 2
    finally:
        await cache.aclose()


# -- loops and failures ----------------------------------------------------------------------


async def test_same_cache_works_from_this_loop_and_through_the_sync_bridge(make):
    cache = make()
    assert await cache.async_set_cache("from-async", 1) is True
    assert await asyncio.to_thread(cache.get_cache, "from-async") == 1
    assert await asyncio.to_thread(cache.set_cache, "from-sync", 2) is True
    assert await cache.async_get_cache("from-sync") == 2
    assert await asyncio.to_thread(cache.batch_get_cache, ["from-async", "from-sync"]) == [1, 2]
    # One connection set per loop: this one's, and those of the worker threads' own
    # loops the sync twins ran on (to_thread may have used up to three threads).
    assert 2 <= len(cache.backend._connections._items) <= 4


async def test_unreachable_redis_is_a_miss_not_a_hang():
    cache = Cache(type="redis", port=free_port(), namespace="x", breaker_threshold=1000)
    try:
        assert await cache.async_set_cache("k", 1) is False
        assert await cache.async_get_cache("k") is None
        assert await cache.async_batch_get_cache(["a", "b"]) == [None, None]
        assert await cache.async_increment("n") is None
        assert await cache.async_ping() is False
        assert cache.stats()["errors"] >= 4
    finally:
        await cache.aclose()


async def test_frozen_redis_times_out_instead_of_hanging(tmp_path):
    try:
        server = start_valkey(tmp_path / "frozen", search=False, name="valkey-frozen")
    except ServiceUnavailable as exc:
        service_unavailable("valkey-server", exc)
    cache = Cache(type="redis", port=server.port, socket_timeout=0.3, namespace=unique("f"))
    try:
        assert await cache.async_set_cache("k", 1) is True
        server.pause()
        assert await cache.async_get_cache("k") is None
        assert cache.stats()["errors"] + cache.stats()["timeouts"] >= 1
        server.resume()
        for _ in range(200):
            if await cache.async_get_cache("k") == 1:
                break
            await asyncio.sleep(0.02)
        assert await cache.async_get_cache("k") == 1
    finally:
        server.resume()
        await cache.aclose()
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


async def test_redis_killed_and_restarted_under_load(tmp_path):
    try:
        server = start_valkey(tmp_path / "restart", search=False, name="valkey-restart")
    except ServiceUnavailable as exc:
        service_unavailable("valkey-server", exc)
    cache = Cache(type="redis", port=server.port, namespace=unique("kill"), timeout=2,
                  socket_timeout=1, breaker_threshold=3, breaker_cooldown=0.05)
    raised: list[BaseException] = []
    results: dict[str, list[object]] = {"set": [], "get": []}
    stop = asyncio.Event()

    async def load(worker: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                results["set"].append(await cache.async_set_cache(f"w{worker}", i))
                results["get"].append(await cache.async_get_cache(f"w{worker}"))
            except BaseException as exc:  # the test fails if anything escapes
                raised.append(exc)
                return
            await asyncio.sleep(0)

    async def until(condition, what: str) -> None:
        for _ in range(2000):
            if condition():
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"timed out waiting for {what}")

    workers = [asyncio.create_task(load(w)) for w in range(8)]
    try:
        await until(lambda: results["set"].count(True) > 50, "writes to succeed")
        server.kill()
        marker = len(results["set"])
        await until(lambda: False in results["set"][marker:], "writes to fail")
        assert None in results["get"][marker:] or False in results["set"][marker:]
        await asyncio.to_thread(server.start)
        restarted = len(results["set"])
        await until(lambda: results["set"][restarted:].count(True) > 50, "recovery")
    finally:
        stop.set()
        await asyncio.gather(*workers)
        with contextlib.suppress(Exception):
            await cache.aclose()
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
    assert raised == []
    assert cache.stats()["errors"] + cache.stats()["timeouts"] + cache.stats().get(
        "skipped_open_circuit", 0) > 0
