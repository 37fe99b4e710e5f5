"""S3, GCS and Azure Blob backends against real emulators (moto, fake-gcs-server, Azurite).

The shared behaviour runs in tests/test_contract.py; this file covers what is specific to
object stores: object naming, expiry metadata and background deletion, large batches,
prefix clears, a server crashing mid-batch and health-check errors.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from typing import Any

import pytest

from asynccache import Cache, CacheConnectionError, ConfigurationError
from asynccache.backends._blob import (
    MAX_PATH_CHARS,
    BlobBackend,
    listing_prefix,
    normalize_path,
    object_name,
)
from asynccache.backends.azure_blob import AzureBlobBackend, AzureBlobCache
from asynccache.backends.gcs import GCSBackend, GCSCache, lifecycle_rules
from asynccache.backends.s3 import S3Backend, S3Cache
from asynccache.base import BaseCache
from asynccache.keys import namespace_prefix
from tests.helpers import FakeClock, chat_completion, unique
from tests.plugins.blob import bucket_name
from tests.plugins.services import service_unavailable
from tests.servers import blob_servers
from tests.servers.processes import ManagedProcess, ServiceUnavailable

CACHES = {"s3": S3Cache, "gcs": GCSCache, "azure_blob": AzureBlobCache}
PATH_SETTING = {"s3": "s3_path", "gcs": "gcs_path", "azure_blob": "azure_path"}
HOSTILE_KEYS = ["../../x", "..", ".", "/", "a/../../b", "nul\x00byte", "line\nbreak", "tab\tkey",
                "\x7f", "%2e%2e%2f", "~7E", "~~", "k" * 10_000, "ключ/🔑", "\\..\\..\\x"]


def make(store: str, settings: dict[str, Any], **extra: Any) -> BaseCache:
    return CACHES[store](**{**settings, **extra})


async def all_names(cache: BaseCache) -> list[str]:
    """Every object name in the bucket/container (paging through the whole listing)."""
    backend = cache.backend
    assert isinstance(backend, BlobBackend)
    names: list[str] = []
    token = None
    while True:
        page, token = await backend._list_page("", token)
        names.extend(page)
        if not token:
            return names


# -- naming (pure) ----------------------------------------------------------------------

@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_object_names_are_safe_for_any_key(key):
    for stored in (key, "ns:" + key, namespace_prefix("a:b/../c") + key):
        name = object_name(stored)
        assert re.fullmatch(r"[A-Za-z0-9_~/-]+", name), name
        assert len(name) <= 800
        segments = name.split("/")
        assert all(seg not in {"", ".", ".."} for seg in segments[:-1] if seg)
        assert ".." not in name and "\x00" not in name


def test_object_names_are_distinct_and_prefix_preserving():
    keys = HOSTILE_KEYS + [k + "-other" for k in HOSTILE_KEYS] + ["k" * 10_001, "k" * 9_999]
    stored = [p + k for p in ("", "ns:", "ns2:", "n:s:") for k in keys]
    names = [object_name(s) for s in stored]
    assert len(set(names)) == len(names)
    for s, name in zip(stored, names, strict=True):
        for cut in {0, 1, 3, len(s) // 2, len(s)}:
            prefix = s[:cut]
            if len(listing_prefix(prefix)) <= 500:
                assert name.startswith(listing_prefix(prefix)), (prefix, name)
    # A namespace is a folder: "ns:" never matches namespace "ns2" or "nsx".
    assert listing_prefix("ns:") == "ns/"
    assert not object_name("ns2:k").startswith(listing_prefix("ns:"))


@pytest.mark.parametrize("bad", ["../x", "a/../b", "a/./b", "line\nbreak", "x" * 300])
def test_bad_paths_are_rejected_naming_the_setting(bad):
    with pytest.raises(ConfigurationError, match="s3_path"):
        normalize_path(bad, "s3_path")
    assert normalize_path("x" * MAX_PATH_CHARS, "s3_path") == "x" * MAX_PATH_CHARS + "/"


def test_paths_are_normalised():
    assert normalize_path("cache", "p") == "cache/"
    assert normalize_path("/llm//cache/", "p") == "llm/cache/"
    assert normalize_path(None, "p") == ""


# -- configuration, registry, secrets ---------------------------------------------------

def test_cache_type_names_build_native_async_backends(monkeypatch):
    s3 = Cache(type="s3", s3_bucket_name="llm-cache", s3_region_name="us-west-2",
               s3_path="cache/", s3_aws_access_key_id="AKIAEXAMPLE",
               s3_aws_secret_access_key="very-secret-value", ttl=86400)
    assert isinstance(s3.backend, S3Backend) and s3.backend.path == "cache/"
    gcs = Cache(type="gcs", gcs_bucket_name="llm-cache", gcs_path="cache/",
                gcs_path_service_account="/nonexistent/sa.json")
    assert isinstance(gcs.backend, GCSBackend)
    conn = ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0LWtleQ==;"
            "EndpointSuffix=core.windows.net")
    azure = Cache(type="azure_blob", azure_connection_string=conn, azure_blob_container="c")
    assert isinstance(azure.backend, AzureBlobBackend)
    for cache, secret in ((s3, "very-secret-value"), (azure, "c2VjcmV0LWtleQ==")):
        text = repr(cache) + str(cache.stats()) + str(cache.backend.describe())
        assert secret not in text
    with pytest.raises(ConfigurationError, match="max_concurrency"):
        Cache(type="s3", s3_bucket_name="b", max_concurrency=0)
    with pytest.raises(ConfigurationError, match="azure_account_url"):
        Cache(type="azure_blob", azure_blob_container="c")


# -- expiry -----------------------------------------------------------------------------

async def test_expired_object_is_a_miss_and_deleted_in_background(blob_store):
    store, settings = blob_store
    clock = FakeClock()
    cache = make(store, settings, clock=clock, namespace=unique("ns"))
    backend = cache.backend
    assert isinstance(backend, BlobBackend)
    try:
        await cache.async_set_cache("short", chat_completion(), ttl=30)
        await cache.async_set_cache("long", "kept", ttl=3600)
        assert await cache.async_increment("counter", ttl=30) == 1
        assert len(await all_names(cache)) == 3
        remaining = await cache.async_get_ttl("short")
        assert remaining is not None and 29 <= remaining <= 30
        clock.advance(31)
        assert await cache.async_batch_get_cache(["short", "long"]) == [None, "kept"]
        assert await cache.async_get_ttl("counter") is None  # bare counter: metadata expiry
        await backend.wait_for_cleanup()
        assert backend.expired_deleted == 2
        names = await all_names(cache)
        assert len(names) == 1 and names[0].endswith("/long")
        assert await cache.async_increment("counter") == 1  # starts afresh
    finally:
        await cache.aclose()


async def test_rewrite_racing_the_background_delete_survives(blob_store):
    store, settings = blob_store
    clock = FakeClock()
    cache = make(store, settings, clock=clock)
    backend = cache.backend
    assert isinstance(backend, BlobBackend)
    try:
        await cache.async_set_cache("k", "old", ttl=10)
        clock.advance(11)
        name = backend.object_name("k")
        found = await backend._get_object(name)
        assert found is not None
        await cache.async_set_cache("k", "new", ttl=100)
        # The cleanup of the old version runs only now, after the rewrite.
        backend._schedule_cleanup(name, found.version)
        await backend.wait_for_cleanup()
        assert await cache.async_get_cache("k") == "new"
    finally:
        await cache.aclose()


# -- batches ----------------------------------------------------------------------------

async def test_batch_of_500_sets_and_gets(blob_store):
    store, settings = blob_store
    cache = make(store, settings, timeout=None, max_concurrency=32)
    try:
        items = {f"item-{i}": {"n": i, "text": "réponse " * 20} for i in range(500)}
        assert await cache.async_set_cache_pipeline(items, ttl=600) == [True] * 500
        keys = [*list(items), "absent-1", "absent-2"]
        got = await cache.async_batch_get_cache(keys)
        assert got == [*items.values(), None, None]
        assert len(await all_names(cache)) == 500
        stats = cache.stats()
        assert stats["hits"] == 500 and stats["misses"] == 2 and stats["errors"] == 0
        assert await cache.async_delete_many([*list(items)[:250], "absent-1"]) == 250
    finally:
        await cache.aclose()


async def test_concurrency_is_bounded_per_loop(blob_store):
    store, settings = blob_store
    cache = make(store, settings, max_concurrency=4)
    backend = cache.backend
    assert isinstance(backend, BlobBackend)
    in_flight = peak = 0
    put = backend._put_object

    async def counting_put(*args: Any) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await put(*args)
        finally:
            in_flight -= 1

    backend._put_object = counting_put  # type: ignore[method-assign]
    try:
        assert all(await cache.async_set_cache_pipeline({f"k{i}": i for i in range(40)}))
        assert peak == 4
    finally:
        await cache.aclose()


# -- hostile keys and prefixes ----------------------------------------------------------

async def test_hostile_keys_stay_under_the_path_and_namespace(blob_store):
    store, settings = blob_store
    namespace = "tenant/../" + unique("ns")
    cache = make(store, settings, **{PATH_SETTING[store]: "llm/cache"}, namespace=namespace)
    try:
        for key in HOSTILE_KEYS:
            assert await cache.async_set_cache(key, {"key": key}) is True
        assert await cache.async_batch_get_cache(HOSTILE_KEYS) == [
            {"key": key} for key in HOSTILE_KEYS]
        names = await all_names(cache)
        assert len(names) == len(HOSTILE_KEYS)
        folder = "llm/cache/" + listing_prefix(namespace_prefix(namespace))
        for name in names:
            assert name.startswith(folder), name
            assert "/" not in name[len(folder):], name
            assert ".." not in name and not re.search(r"[\x00-\x1f\x7f]", name)
            assert len(name) <= 1024
        assert await cache.async_clear() == len(HOSTILE_KEYS)
        assert await all_names(cache) == []
    finally:
        await cache.aclose()


async def test_clear_of_a_namespace_pages_and_leaves_others(blob_store):
    store, settings = blob_store
    path = PATH_SETTING[store]
    mine = make(store, settings, **{path: "cache"}, namespace="team", list_page_size=7)
    near = make(store, settings, **{path: "cache"}, namespace="team2")
    other_path = make(store, settings, **{path: "elsewhere"}, namespace="team")
    try:
        assert all(await mine.async_set_cache_pipeline({f"m{i}": i for i in range(30)}))
        await mine.async_set_cache("k", "sub", namespace="team:sub")
        await near.async_set_cache("k", "near")
        await other_path.async_set_cache("k", "other path")
        assert await mine.async_clear() == 30
        assert await mine.async_batch_get_cache(["m0", "m29"]) == [None, None]
        assert await mine.async_get_cache("k", namespace="team:sub") == "sub"
        assert await near.async_get_cache("k") == "near"
        assert await other_path.async_get_cache("k") == "other path"
    finally:
        for cache in (mine, near, other_path):
            await cache.aclose()


# -- a server crashing mid-batch --------------------------------------------------------

def _start_store(store: str) -> tuple[ManagedProcess, dict[str, Any]]:
    name = bucket_name("crash")
    if store == "s3":
        server = blob_servers.start_moto()
        blob_servers.create_s3_bucket(server, name)
        return server, {**blob_servers.moto_settings(server, name),
                        "s3_config": {"retries": {"total_max_attempts": 1}}}
    if store == "gcs":
        server = blob_servers.start_fake_gcs()
        blob_servers.create_gcs_bucket(server, name)
        return server, blob_servers.gcs_settings(server, name)
    server = blob_servers.start_azurite()
    return server, {**blob_servers.azurite_settings(server, name), "azure_retry_total": 0}


def _recreate(store: str, server: ManagedProcess, settings: dict[str, Any]) -> None:
    # The emulators keep data in memory: a restarted one has lost its buckets.
    if store == "s3":
        blob_servers.create_s3_bucket(server, settings["s3_bucket_name"])
    elif store == "gcs":
        blob_servers.create_gcs_bucket(server, settings["gcs_bucket_name"])
    # Azure: the backend creates the container again on the first write.


@pytest.mark.parametrize("store", ["s3", "gcs", "azure_blob"])
async def test_server_killed_mid_batch_fails_soft_then_recovers(store):
    try:
        server, settings = _start_store(store)
    except ServiceUnavailable as exc:
        service_unavailable(store, exc)
    cache = make(store, settings, timeout=None, breaker_threshold=0, max_concurrency=8)
    backend = cache.backend
    assert isinstance(backend, BlobBackend)
    put = backend._put_object
    done = 0
    killed: asyncio.Task[None] | None = None

    async def put_then_maybe_kill(*args: Any) -> None:
        nonlocal done, killed
        await put(*args)
        done += 1
        if done == 100 and killed is None:
            killed = asyncio.create_task(asyncio.to_thread(server.kill))
            await killed

    backend._put_object = put_then_maybe_kill  # type: ignore[method-assign]
    try:
        results = await cache.async_set_cache_pipeline({f"k{i}": i for i in range(500)})
        assert killed is not None and not server.running
        stored = sum(results)
        assert 100 <= stored < 500
        stats = cache.stats()
        assert stats["set_failures"] == 500 - stored
        assert await cache.async_batch_get_cache([f"k{i}" for i in range(500)]) == [None] * 500
        assert cache.stats()["errors"] >= 1
        with pytest.raises(CacheConnectionError):
            await cache.async_test_connection()

        await asyncio.to_thread(server.restart)
        await asyncio.to_thread(_recreate, store, server, settings)
        assert await cache.async_set_cache_pipeline({f"k{i}": i for i in range(50)}) == [
            True] * 50
        assert await cache.async_batch_get_cache([f"k{i}" for i in range(50)]) == list(range(50))
        assert (await cache.async_test_connection())["status"] == "healthy"
    finally:
        await cache.aclose()
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


# -- health checks ----------------------------------------------------------------------

@pytest.mark.parametrize("store", ["s3", "gcs", "azure_blob"])
async def test_missing_bucket_or_container_is_a_clear_error(store, request):
    if store == "s3":
        settings = blob_servers.moto_settings(request.getfixturevalue("moto_server"),
                                              bucket_name("missing"))
    elif store == "gcs":
        settings = blob_servers.gcs_settings(request.getfixturevalue("fake_gcs_server"),
                                             bucket_name("missing"))
    else:
        settings = {**blob_servers.azurite_settings(request.getfixturevalue("azurite_server"),
                                                    bucket_name("missing")),
                    "azure_create_container": False}
    cache = make(store, settings)
    try:
        with pytest.raises(CacheConnectionError, match="does not exist"):
            await cache.async_test_connection()
        assert await cache.async_ping() is False
        # In normal calls the same failure is a miss and a failed write, never an exception.
        assert await cache.async_get_cache("k") is None
        assert await cache.async_set_cache("k", 1) is False
        assert cache.stats()["set_failures"] == 1
    finally:
        await cache.aclose()


async def test_s3_bad_credentials_are_a_clear_error():
    try:
        server = blob_servers.start_moto(auth=True)
    except ServiceUnavailable as exc:
        service_unavailable("moto_server", exc)
    settings = {**blob_servers.moto_settings(server, "some-bucket"),
                "s3_aws_secret_access_key": "wrong-secret-123"}
    cache = make("s3", settings)
    try:
        with pytest.raises(CacheConnectionError, match="access denied") as info:
            await cache.async_test_connection()
        assert "wrong-secret-123" not in str(info.value)
        assert await cache.async_set_cache("k", 1) is False
    finally:
        await cache.aclose()
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


async def test_azure_bad_key_is_a_clear_error(azurite_server):
    bad = "d3Jvbmcta2V5LXZhbHVl"
    cache = AzureBlobCache(
        azure_connection_string=blob_servers.azurite_connection_string(azurite_server, key=bad),
        azure_blob_container=bucket_name("az"))
    try:
        with pytest.raises(CacheConnectionError, match="access denied") as info:
            await cache.async_test_connection()
        assert bad not in str(info.value) and bad not in repr(cache)
        assert await cache.async_get_cache("k") is None
    finally:
        await cache.aclose()


async def test_gcs_unreadable_service_account_is_a_clear_error(gcs_settings, tmp_path):
    broken = tmp_path / "sa.json"
    broken.write_text("{not json")
    for path in (broken, tmp_path / "missing.json"):
        cache = GCSCache(**gcs_settings, gcs_path_service_account=str(path))
        try:
            with pytest.raises(CacheConnectionError, match="GCS"):
                await cache.async_test_connection()
        finally:
            await cache.aclose()


async def test_gcs_emulator_from_environment(fake_gcs_server, gcs_settings, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{fake_gcs_server.port}")
    cache = Cache(type="gcs", gcs_bucket_name=gcs_settings["gcs_bucket_name"])
    try:
        assert (await cache.async_test_connection())["status"] == "healthy"
        assert await cache.async_set_cache("k", [1, 2]) is True
        assert await cache.async_get_cache("k") == [1, 2]
    finally:
        await cache.aclose()


# -- lifecycle rules --------------------------------------------------------------------

async def test_s3_lifecycle_rule_targets_the_path(s3_settings):
    cache = S3Cache(**s3_settings, s3_path="llm/cache")
    backend = cache.backend
    assert isinstance(backend, S3Backend)
    try:
        await backend.install_lifecycle_rule(30)
        await backend.install_lifecycle_rule(7)  # replaces, does not duplicate
        client = await backend._client()
        rules = (await client.get_bucket_lifecycle_configuration(
            Bucket=s3_settings["s3_bucket_name"]))["Rules"]
        assert len(rules) == 1
        assert rules[0]["Filter"] == {"Prefix": "llm/cache/"}
        assert rules[0]["Expiration"] == {"Days": 7}
        with pytest.raises(ConfigurationError, match="days"):
            await backend.install_lifecycle_rule(0)
    finally:
        await cache.aclose()


def test_gcs_lifecycle_rules_replace_only_their_own():
    theirs = {"action": {"type": "SetStorageClass", "storageClass": "COLDLINE"},
              "condition": {"age": 90}}
    ours_old = {"action": {"type": "Delete"},
                "condition": {"age": 30, "matchesPrefix": ["llm/cache/"]}}
    other_prefix = {"action": {"type": "Delete"},
                    "condition": {"age": 5, "matchesPrefix": ["tmp/"]}}
    rules = lifecycle_rules([theirs, ours_old, other_prefix], "llm/cache/", 7)
    assert rules == [theirs, other_prefix, {"action": {"type": "Delete"},
                                            "condition": {"age": 7,
                                                          "matchesPrefix": ["llm/cache/"]}}]
    assert lifecycle_rules([], "", 1) == [{"action": {"type": "Delete"},
                                           "condition": {"age": 1}}]


async def test_gcs_lifecycle_request_is_accepted(gcs_settings):
    # fake-gcs-server accepts the bucket PATCH but does not keep lifecycle rules, so the
    # rule's content is checked by the pure test above.
    cache = GCSCache(**gcs_settings, gcs_path="llm/cache")
    try:
        await cache.backend.install_lifecycle_rule(7)  # type: ignore[attr-defined]
        with pytest.raises(ConfigurationError, match="days"):
            await cache.backend.install_lifecycle_rule(-1)  # type: ignore[attr-defined]
    finally:
        await cache.aclose()


async def test_azure_has_no_lifecycle_helper(azure_settings):
    cache = AzureBlobCache(**azure_settings)
    try:
        with pytest.raises(NotImplementedError, match="azure_blob"):
            await cache.backend.install_lifecycle_rule(7)  # type: ignore[attr-defined]
    finally:
        await cache.aclose()


def test_emulator_helpers_refuse_other_hosts():
    import urllib.request

    from tests.servers.blob_servers import _send

    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        _send(urllib.request.Request("http://example.com/"), {200})
