"""LiteLLM's own calls stored in asynccache (``litellm.cache = as_litellm_cache(cache)``)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import

import litellm
from litellm.types.utils import Embedding, EmbeddingResponse, Usage

from asynccache import Cache
from asynccache.integrations.litellm import LiteLLMBackend, as_litellm_cache
from tests.helpers import unique

HAS_REDIS_BACKEND = importlib.util.find_spec("asynccache.backends.redis") is not None
WAIT = 30.0  # safety bound on waiting for LiteLLM's background write (an event, not a sleep)


def messages(text: str = "What is the capital of France?") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class Installed:
    """``litellm.cache`` set to our adapter; ``written`` fires on every write."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.written = threading.Event()
        litellm.cache = as_litellm_cache(cache)
        backend = litellm.cache.cache
        assert isinstance(backend, LiteLLMBackend)
        real_set = backend.async_set_cache

        async def set_and_signal(key, value, **kwargs):
            await real_set(key, value, **kwargs)
            self.written.set()

        backend.async_set_cache = set_and_signal  # the sync twin looks it up at call time

    async def wait_written(self) -> None:
        assert await asyncio.to_thread(self.written.wait, WAIT), "LiteLLM never wrote"
        self.written.clear()


@pytest.fixture(params=[
    "memory",
    pytest.param("redis", marks=pytest.mark.skipif(
        not HAS_REDIS_BACKEND, reason="asynccache.backends.redis is not written yet")),
])
async def installed(request):
    if request.param == "memory":
        cache = Cache()
    else:
        server = request.getfixturevalue("valkey_server")
        cache = Cache(type="redis", host="127.0.0.1", port=server.port, namespace=unique("ll"))
    yield Installed(cache)
    litellm.disable_cache()
    await cache.aclose()


async def test_second_acompletion_is_served_by_asynccache(installed):
    first = await litellm.acompletion(model="gpt-4o", messages=messages(),
                                      mock_response="Paris is the capital — ✓")
    assert not first._hidden_params.get("cache_hit")
    await installed.wait_written()
    second = await litellm.acompletion(model="gpt-4o", messages=messages(),
                                       mock_response="a different mock answer")
    assert second._hidden_params.get("cache_hit") is True
    assert second.choices[0].message.content == "Paris is the capital — ✓"
    stats = installed.cache.stats()
    assert stats["hits"] == 1 and stats["sets"] == 1


async def test_sync_completion_goes_through_the_bridge(installed):
    await asyncio.to_thread(litellm.completion, model="gpt-4o", messages=messages("sync?"),
                            mock_response="sync answer")
    await installed.wait_written()
    second = await asyncio.to_thread(litellm.completion, model="gpt-4o",
                                     messages=messages("sync?"), mock_response="other")
    assert second.choices[0].message.content == "sync answer"
    assert installed.cache.stats()["hits"] == 1


async def test_per_call_ttl_reaches_asynccache(installed):
    await litellm.acompletion(model="gpt-4o", messages=messages("ttl?"), mock_response="x",
                              cache={"ttl": 120})
    await installed.wait_written()
    key = litellm.cache.get_cache_key(model="gpt-4o", messages=messages("ttl?"))
    remaining = await installed.cache.async_get_ttl(key)
    assert remaining is not None and 0 < remaining <= 120


async def test_embedding_entries_are_written_in_one_pipelined_batch():
    cache = Cache()
    litellm.cache = as_litellm_cache(cache)
    batches: list[int] = []
    real = cache.backend.write_many

    async def counting(items):
        batches.append(len(items))
        return await real(items)

    cache.backend.write_many = counting  # type: ignore[method-assign]
    try:
        response = EmbeddingResponse(
            model="text-embedding-3-small",
            data=[Embedding(embedding=[0.1, 0.2], index=0, object="embedding"),
                  Embedding(embedding=[0.3, 0.4], index=1, object="embedding")],
            usage=Usage(prompt_tokens=4, total_tokens=4),
        )
        await litellm.cache.async_add_cache_pipeline(
            response, model="text-embedding-3-small", input=["a", "b"])
        assert batches == [2]
        found = await litellm.cache.async_get_cache(model="text-embedding-3-small", input="b")
        assert found["embedding"] == [0.3, 0.4]
    finally:
        litellm.disable_cache()
        await cache.aclose()


async def test_default_off_mode_is_handed_to_litellm():
    cache = Cache(mode="default_off")
    litellm.cache = as_litellm_cache(cache)
    try:
        assert litellm.cache.should_use_cache(model="m") is False
        assert litellm.cache.should_use_cache(model="m", cache={"use-cache": True}) is True
    finally:
        litellm.disable_cache()
        await cache.aclose()


async def test_health_check_shape_and_the_cache_stays_open():
    cache = Cache()
    backend = as_litellm_cache(cache).cache
    report = await backend.test_connection()
    assert report["status"] == "success" and report["backend"] == "memory"
    await backend.disconnect()
    assert not cache.closed
    litellm.disable_cache()  # litellm.Cache() registered its callbacks
    await cache.aclose()


def test_rejects_other_objects_and_storage_choice():
    with pytest.raises(ValueError, match=r"needs an asynccache cache"):
        LiteLLMBackend(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="type="):
        as_litellm_cache(Cache(), type="redis")


async def test_cached_wraps_litellm_acompletion_streamed_and_not():
    from litellm.types.utils import ModelResponse, ModelResponseStream

    from asynccache import cached
    from asynccache.integrations import cache_info

    cache = Cache()
    acompletion = cached(litellm.acompletion, cache=cache)
    request = {"model": "gpt-4o", "messages": messages("stream?"),
               "mock_response": "Hello there, streamed friend"}
    chunks = [chunk async for chunk in await acompletion(**request, stream=True)]
    assert all(isinstance(chunk, ModelResponseStream) for chunk in chunks)
    assert cache.stats()["sets"] == 1
    hit = await acompletion(**request)  # non-streamed, answered by the streamed entry
    assert isinstance(hit, ModelResponse)
    assert hit.choices[0].message.content == "Hello there, streamed friend"
    assert hit._hidden_params["cache_hit"] is True
    assert cache_info(hit).cache_hit
    replay = [chunk async for chunk in await acompletion(**request, stream=True)]
    assert all(isinstance(chunk, ModelResponseStream) for chunk in replay)
    text = "".join(c.choices[0].delta.content or "" for c in replay if c.choices)
    assert text == "Hello there, streamed friend"
    assert cache.stats()["hits"] == 2
    await cache.aclose()
