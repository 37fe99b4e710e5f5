"""The LangChain adapter against langchain-tests' standard cache suites (memory, Redis,
memcached, SQLite and SQL)."""

from __future__ import annotations

import importlib.util

import pytest
from langchain_core.caches import BaseCache
from langchain_core.globals import set_llm_cache
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation
from langchain_tests.integration_tests import AsyncCacheTestSuite, SyncCacheTestSuite

from asynccache import Cache
from asynccache.integrations.langchain import AsyncCacheLangChain
from tests.helpers import unique

HAS_REDIS_BACKEND = importlib.util.find_spec("asynccache.backends.redis") is not None

BACKENDS = [
    "memory",
    pytest.param("redis", marks=pytest.mark.skipif(
        not HAS_REDIS_BACKEND,
        reason="asynccache.backends.redis is not written yet (another issue)")),
    "memcached", "sqlite", "sql-postgres", "sql-mariadb",
]


def make_cache(kind: str, request: pytest.FixtureRequest) -> Cache:
    if kind == "memory":
        return Cache()
    if kind == "sqlite":
        return Cache(type="sqlite", path=str(request.getfixturevalue("tmp_path") / "lc.db"))
    if kind.startswith("sql-"):
        server = request.getfixturevalue(kind.removeprefix("sql-") + "_server")
        return Cache(type="sql", url=server.url, namespace=unique("lc"))
    if kind == "memcached":
        nodes = request.getfixturevalue("memcached_nodes")
        return Cache(type="memcached", servers=nodes.servers, namespace=unique("lc"))
    server = request.getfixturevalue("valkey_server")
    return Cache(type="redis", host="127.0.0.1", port=server.port, namespace=unique("lc"))


@pytest.fixture(params=BACKENDS)
def sync_cache(request):
    cache = make_cache(request.param, request)
    yield cache
    cache.close()


@pytest.fixture(params=BACKENDS)
async def async_cache(request):
    cache = make_cache(request.param, request)
    yield cache
    await cache.aclose()


class TestSyncStandardSuite(SyncCacheTestSuite):
    @pytest.fixture
    def cache(self, sync_cache) -> BaseCache:
        return AsyncCacheLangChain(sync_cache)


class TestAsyncStandardSuite(AsyncCacheTestSuite):
    @pytest.fixture
    async def cache(self, async_cache) -> BaseCache:
        return AsyncCacheLangChain(async_cache)


async def test_chat_generations_round_trip_with_messages(async_cache):
    adapter = AsyncCacheLangChain(async_cache)
    generation = ChatGeneration(message=AIMessage(content="Paris — ✓",
                                                  tool_calls=[{"name": "f", "args": {"x": 1},
                                                               "id": "call_1"}]))
    await adapter.aupdate("prompt", "llm", [generation])
    assert await adapter.alookup("prompt", "llm") == [generation]
    assert await adapter.alookup("prompt", "other llm") is None


async def test_clear_only_removes_langchain_entries():
    cache = Cache()
    await cache.async_set_cache("mine", {"x": 1})
    adapter = AsyncCacheLangChain(cache)
    await adapter.aupdate("p", "l", [Generation(text="t")])
    await adapter.aclear()
    assert await adapter.alookup("p", "l") is None
    assert await cache.async_get_cache("mine") == {"x": 1}
    await cache.aclose()


async def test_a_chat_model_is_served_from_the_cache():
    cache = Cache()
    set_llm_cache(AsyncCacheLangChain(cache))
    try:
        model = FakeListChatModel(responses=["first answer", "second answer"])
        one = await model.ainvoke("What is the capital of France?")
        two = await model.ainvoke("What is the capital of France?")
        assert one.content == two.content == "first answer"
        assert cache.stats()["hits"] == 1
        sync = model.invoke("What is the capital of France?")  # the sync path, via the bridge
        assert sync.content == "first answer"
    finally:
        set_llm_cache(None)
        await cache.aclose()


def test_rejects_a_value_that_is_not_a_generation():
    adapter = AsyncCacheLangChain(Cache())
    with pytest.raises(ValueError, match="Generation"):
        adapter.update("p", "l", ["not a generation"])  # type: ignore[list-item]
