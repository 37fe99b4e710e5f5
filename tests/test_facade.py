"""Cache(type=...), the lazy registry, the default-cache helpers and the LLM-call hooks."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import pytest

from asynccache import (
    BaseCache,
    Cache,
    CacheMode,
    ConfigurationError,
    MemoryCache,
    MissingExtraError,
    cache_types,
    disable_cache,
    enable_cache,
    facade,
    get_default_cache,
    parse_controls,
    registry,
    update_cache,
)
from asynccache.backends.memory import MemoryBackend
from asynccache.contract import Backend, WriteItem
from asynccache.registry import BackendSpec
from tests.helpers import FakeClock

REQUEST = {"model": "gpt-4o", "messages": [{"role": "user", "content": "capital of France?"}]}
ANSWER = {"choices": [{"message": {"role": "assistant", "content": "Paris"}}]}


class SecretBackend(MemoryBackend):
    """A backend that takes credentials, like the network ones do."""

    name = "secret-test"

    def __init__(self, host: str = "127.0.0.1", password: str | None = None,
                 api_key: str | None = None, connection_string: str | None = None) -> None:
        super().__init__()
        self.host = host
        self._password = password

    def describe(self) -> dict[str, Any]:
        return {"host": self.host}


@pytest.fixture
def fake_types(monkeypatch: pytest.MonkeyPatch):
    """Register extra cache types for one test only."""

    def add(name: str, target: str, extra: str | None = "fancy") -> None:
        monkeypatch.setitem(registry._SPECS, name, BackendSpec(target, extra, "test type"))

    return add


@pytest.fixture
def restore_default_cache():
    saved = facade._default_cache
    yield
    facade._default_cache = saved


# -- construction and the registry --------------------------------------------------------


async def test_default_cache_is_in_memory():
    cache = Cache()
    assert cache.type == "local"
    assert isinstance(cache.backend, MemoryBackend)
    assert cache.mode is CacheMode.default_on
    assert await cache.async_set_cache("k", ANSWER, ttl=60) is True
    assert await cache.async_get_cache("k") == ANSWER


@pytest.mark.parametrize("alias", ["memory", "in-memory", "LOCAL", "Memory"])
def test_type_aliases(alias):
    assert Cache(alias).type == "local"


def test_unknown_type_lists_the_types():
    with pytest.raises(ConfigurationError, match="unknown cache type 'mongo'") as caught:
        Cache(type="mongo")
    for name in cache_types():
        assert name in str(caught.value)
    assert {"local", "disk", "redis", "s3", "gcs", "azure_blob"} <= set(cache_types())


def test_non_string_type_is_rejected():
    with pytest.raises(ConfigurationError, match="str"):
        Cache(type=None)  # type: ignore[arg-type]


def test_unknown_setting_is_named():
    with pytest.raises(ConfigurationError, match="max_entires"):
        Cache(max_entires=10)


def test_missing_extra_names_the_extra(monkeypatch, fake_types):
    # The backend module imports fine until it needs its client library, as real ones do.
    fake_types("fancy-store", "fancy_client_for_tests:Client", extra="fancy")
    monkeypatch.setitem(sys.modules, "fancy_client_for_tests", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'asynccache\[fancy\]'") as caught:
        Cache(type="fancy-store")
    assert isinstance(caught.value, ImportError)
    assert "fancy_client_for_tests" in str(caught.value)


def test_missing_extra_of_a_real_backend(monkeypatch):
    monkeypatch.delitem(sys.modules, "asynccache.semantic.qdrant", raising=False)
    monkeypatch.setitem(sys.modules, "qdrant_client", None)
    with pytest.raises(MissingExtraError, match=r"asynccache\[qdrant\]"):
        Cache(type="qdrant-semantic")


def test_a_broken_asynccache_module_is_not_blamed_on_an_extra(fake_types):
    fake_types("broken", "asynccache.backends.does_not_exist_for_tests:X", extra="fancy")
    with pytest.raises(ImportError) as caught:
        Cache(type="broken")
    assert not isinstance(caught.value, MissingExtraError)


# -- settings -----------------------------------------------------------------------------


def test_litellm_setting_aliases():
    cache = Cache(default_in_memory_ttl=5, max_size_in_memory=3)
    assert cache.default_ttl == 5.0
    assert cache.backend.max_entries == 3
    assert Cache(default_ttl=7).default_ttl == 7.0
    behind = Cache(redis_flush_size=10, redis_flush_interval=2.0)
    assert behind._queue is not None
    assert behind._queue.flush_size == 10 and behind._queue.flush_interval == 2.0


def test_common_settings_are_validated_naming_them():
    with pytest.raises(ConfigurationError, match="ttl"):
        Cache(ttl=-1)
    with pytest.raises(ConfigurationError, match="namespace"):
        Cache(namespace="")
    with pytest.raises(ConfigurationError, match="max_entries"):
        Cache(max_entries=0)


def test_settings_mask_secrets_and_repr_holds_none(fake_types):
    fake_types("secret-test", "tests.test_facade:SecretBackend", extra=None)
    cache = Cache(type="secret-test", host="127.0.0.1", password="hunter2",
                  api_key="sk-live-123", connection_string="AccountKey=abc==", ttl=60)
    shown = cache.settings()
    assert shown["host"] == "127.0.0.1" and shown["ttl"] == 60
    for name in ("password", "api_key", "connection_string"):
        assert shown[name] == "***"
    text = repr(cache) + repr(shown) + str(cache.stats())
    for secret in ("hunter2", "sk-live-123", "abc=="):
        assert secret not in text
    assert Cache(type="secret-test").settings() == {}


def test_masked_unset_secret_shows_none(fake_types):
    fake_types("secret-test", "tests.test_facade:SecretBackend", extra=None)
    assert Cache(type="secret-test", password=None).settings() == {"password": None}


# -- the process-wide default cache -------------------------------------------------------


def test_enable_update_disable_default_cache(restore_default_cache):
    disable_cache()
    assert get_default_cache() is None
    first = enable_cache(ttl=30)
    assert get_default_cache() is first and first.default_ttl == 30.0
    second = update_cache(ttl=60, namespace="app")
    assert get_default_cache() is second and second is not first
    assert second.default_ttl == 60.0 and second.namespace == "app"
    disable_cache()
    assert get_default_cache() is None
    with pytest.raises(ConfigurationError):
        enable_cache("nope")


# -- async_lookup / async_store -----------------------------------------------------------


async def test_lookup_and_store_round_trip_by_request():
    cache = Cache()
    assert await cache.async_lookup(REQUEST) is None
    assert await cache.async_store(REQUEST, ANSWER) is True
    hit = await cache.async_lookup({**REQUEST, "api_key": "sk-other", "stream": True})
    assert hit is not None and hit.value == ANSWER
    assert hit.key == cache.get_cache_key(**REQUEST)
    assert await cache.async_get_cache(cache.get_cache_key(**REQUEST)) == ANSWER
    assert await cache.async_lookup({**REQUEST, "temperature": 0.7}) is None


async def test_lookup_honours_no_cache():
    cache = Cache()
    await cache.async_store(REQUEST, ANSWER)
    assert await cache.async_lookup(REQUEST, controls=parse_controls({"no-cache": True})) is None
    assert await cache.async_lookup(REQUEST) is not None


async def test_store_honours_no_store():
    cache = Cache()
    assert await cache.async_store(REQUEST, ANSWER,
                                   controls=parse_controls({"no-store": True})) is False
    assert await cache.async_lookup(REQUEST) is None


async def test_store_honours_ttl_and_lookup_honours_s_maxage():
    clock = FakeClock()
    cache = Cache(clock=clock, ttl=3600)
    await cache.async_store(REQUEST, ANSWER, controls=parse_controls({"ttl": 10}))
    other = {**REQUEST, "seed": 1}
    await cache.async_store(other, ANSWER)
    clock.advance(5)
    assert await cache.async_lookup(REQUEST, controls=parse_controls({"s-maxage": 10}))
    assert await cache.async_lookup(REQUEST, controls=parse_controls({"s-maxage": 2})) is None
    clock.advance(6)
    assert await cache.async_lookup(REQUEST) is None  # the per-call ttl (10 s) ran out
    assert await cache.async_lookup(other) is not None  # the default ttl (1 h) did not


async def test_namespace_control_reads_and_writes_there():
    cache = Cache(namespace="default-ns")
    eu = parse_controls({"namespace": "eu"})
    await cache.async_store(REQUEST, ANSWER, controls=eu)
    assert await cache.async_lookup(REQUEST) is None
    assert (await cache.async_lookup(REQUEST, controls=eu)).value == ANSWER
    key = cache.get_cache_key(**REQUEST)
    assert await cache.async_get_cache(key, namespace="eu") == ANSWER
    assert cache.stats()["namespaces"]["eu"]["sets"] == 1


async def test_default_off_caches_only_calls_that_opt_in():
    cache = Cache(mode="default_off")
    opt_in = parse_controls({"use-cache": True})
    assert await cache.async_store(REQUEST, ANSWER) is False
    assert await cache.async_lookup(REQUEST, controls=opt_in) is None
    assert await cache.async_store(REQUEST, ANSWER, controls=opt_in) is True
    assert await cache.async_lookup(REQUEST) is None
    assert (await cache.async_lookup(REQUEST, controls=opt_in)).value == ANSWER


async def test_lookup_with_preset_key_and_unserializable_store():
    cache = Cache()
    assert await cache.async_store(REQUEST, ANSWER, key="fixed") is True
    assert (await cache.async_lookup({"anything": 1}, key="fixed")).value == ANSWER
    with pytest.raises(TypeError, match="odd"):
        await cache.async_store(REQUEST, object(), key="odd")


class FailingBackend(Backend):
    name = "failing"
    remote = False

    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        raise ConnectionError("down")

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        raise ConnectionError("down")

    async def remove_many(self, keys: Sequence[str]) -> int:
        raise ConnectionError("down")

    async def remove_prefix(self, prefix: str) -> int:
        raise ConnectionError("down")


async def test_lookup_and_store_never_raise_for_backend_failures(fake_types):
    fake_types("failing", "tests.test_facade:FailingBackend", extra=None)
    cache = Cache(type="failing")
    assert await cache.async_lookup(REQUEST) is None
    assert await cache.async_store(REQUEST, ANSWER) is False
    assert cache.stats()["errors"] == 2


def test_memory_cache_is_the_class_behind_local():
    assert isinstance(MemoryCache().backend, type(Cache().backend))


# -- settings: one declaration, suggestions for typos --------------------------------------


@pytest.mark.parametrize("make", [lambda **s: Cache(**s), lambda **s: MemoryCache(**s),
                                  lambda **s: Cache(type="disk", **s)])
def test_a_misspelt_setting_suggests_the_known_one(make):
    with pytest.raises(ConfigurationError, match="unknown setting 'tll'; did you mean 'ttl'"):
        make(tll=5)


def test_unknown_redis_setting_lists_the_connection_settings():
    with pytest.raises(ConfigurationError, match="did you mean 'host'"):
        Cache(type="redis", hots="127.0.0.1")
    with pytest.raises(ConfigurationError) as caught:
        Cache(type="redis", colour="blue")
    for name in ("host", "port", "url", "password", "ssl_ca_certs", "ttl"):
        assert f" {name}," in caught.value.args[0] or caught.value.args[0].endswith(name)


def test_memory_and_dual_are_listed_types():
    assert {"memory", "local", "dual"} <= set(cache_types())
    assert Cache(type="memory").backend.name == "memory"


async def test_dual_type_builds_both_tiers_from_settings():
    cache = Cache(type="dual", l1={"type": "memory", "ttl": 5}, l2={"type": "memory"},
                  namespace="tiers")
    assert (cache.backend.l1.default_ttl, cache.backend.l2.backend.name) == (5, "memory")
    await cache.async_set_cache("k", ANSWER)
    assert await cache.backend.l2.async_get_cache("k", namespace="tiers") == ANSWER
    await cache.aclose()


def test_dual_without_l2_is_a_cache_error_and_a_type_error():
    from asynccache import CacheError, MissingArgumentError

    with pytest.raises(MissingArgumentError, match="L2") as caught:
        Cache(type="dual")
    assert isinstance(caught.value, CacheError) and isinstance(caught.value, TypeError)


def test_settings_object_and_keywords_combine():
    from asynccache.config import CacheSettings

    shared = CacheSettings(ttl=30, namespace="a")
    cache = MemoryCache(cache_settings=shared, namespace="b")
    assert (cache.default_ttl, cache.namespace) == (30, "b")
    assert Cache(type="disk", cache_settings=shared).namespace == "a"


def test_every_raised_error_type_belongs_to_the_tree():
    from asynccache import exceptions

    for name in exceptions.__all__:
        assert issubclass(getattr(exceptions, name), exceptions.CacheError), name


async def test_a_backend_with_the_old_primitive_names_still_works():
    with pytest.warns(DeprecationWarning, match="get_many -> read_many, set_many -> write_many"):
        class OldStyle(Backend):
            def __init__(self) -> None:
                self.data: dict[str, bytes] = {}

            async def get_many(self, keys):
                return [self.data.get(key) for key in keys]

            async def set_many(self, items):
                self.data.update((key, data) for key, data, _ in items)

            async def delete_many(self, keys):
                return sum(self.data.pop(key, None) is not None for key in keys)

            async def clear(self, prefix):
                return 0

    cache = BaseCache(OldStyle())
    assert await cache.async_set_cache("k", 1) is True
    assert await cache.async_get_cache("k") == 1
