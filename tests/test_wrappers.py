"""``cached`` / ``cached_sync`` over the fake LLM: round trips, controls, errors, groups."""

from __future__ import annotations

import asyncio
import json

import pytest
from openai.types.chat import ChatCompletion

from asynccache import Cache, ConfigurationError, cached, cached_sync, disable_cache, enable_cache
from asynccache.integrations import CachedDict, cache_info
from tests.fake_llm import FakeLLM, UpstreamError, messages
from tests.helpers import FakeClock


@pytest.fixture
async def cache():
    made = Cache()
    yield made
    await made.aclose()


@pytest.fixture
def llm():
    return FakeLLM()


async def test_pydantic_response_round_trips_to_the_same_type(cache, llm):
    acompletion = cached(llm.chat, cache=cache)
    first = await acompletion(model="gpt-4o", messages=messages())
    second = await acompletion(model="gpt-4o", messages=messages())
    assert llm.chat_calls == 1
    assert type(second) is ChatCompletion
    assert second.model_dump() == first.model_dump()
    assert second is not first
    assert cache_info(first).cache_hit is False
    info = cache_info(second)
    assert info.cache_hit is True
    assert info.cache_key == cache.get_cache_key(model="gpt-4o", messages=messages())
    assert info.backend == "memory"
    assert info.age is not None and info.age >= 0
    assert cache.stats()["hits"] == 1


async def test_a_new_wrapper_rebuilds_the_stored_class(cache, llm):
    await cached(llm.chat, cache=cache)(model="gpt-4o", messages=messages())
    fresh = cached(llm.chat, cache=cache)  # knows nothing about the response type yet
    hit = await fresh(model="gpt-4o", messages=messages())
    assert llm.chat_calls == 1
    assert isinstance(hit, ChatCompletion)


async def test_dict_response_stays_a_dict_without_extra_keys(cache):
    llm = FakeLLM(as_dict=True)
    acompletion = cached(llm.chat, cache=cache)
    first = await acompletion(model="gpt-4o", messages=messages())
    second = await acompletion(model="gpt-4o", messages=messages())
    assert llm.chat_calls == 1
    assert isinstance(second, dict) and isinstance(second, CachedDict)
    assert second == first
    assert json.loads(json.dumps(second)) == first  # no metadata leaks into the content
    assert cache_info(second).cache_hit is True
    second["choices"][0]["message"]["content"] = "mutated"
    third = await acompletion(model="gpt-4o", messages=messages())
    assert third == first  # every hit is its own copy


async def test_controls_and_caching_flag_never_reach_upstream(cache, llm):
    acompletion = cached(llm.chat, cache=cache)
    await acompletion(model="gpt-4o", messages=messages(), cache={"ttl": 60})
    await acompletion(model="gpt-4o", messages=messages("other"), caching=False)
    assert all("cache" not in r and "caching" not in r for r in llm.requests)


async def test_caching_false_bypasses_reads_and_writes(cache, llm):
    acompletion = cached(llm.chat, cache=cache)
    await acompletion(model="gpt-4o", messages=messages(), caching=False)
    await acompletion(model="gpt-4o", messages=messages(), caching=False)
    assert llm.chat_calls == 2
    assert cache.stats()["sets"] == 0


async def test_no_cache_skips_lookup_but_stores_fresh_answer(cache, llm):
    acompletion = cached(llm.chat, cache=cache)
    await acompletion(model="gpt-4o", messages=messages())
    fresh = await acompletion(model="gpt-4o", messages=messages(), cache={"no-cache": True})
    assert llm.chat_calls == 2
    assert cache_info(fresh).cache_hit is False
    hit = await acompletion(model="gpt-4o", messages=messages())
    assert hit.id == fresh.id  # the fresh answer replaced the old one


async def test_no_store_does_not_store(cache, llm):
    acompletion = cached(llm.chat, cache=cache)
    await acompletion(model="gpt-4o", messages=messages(), cache={"no-store": True})
    await acompletion(model="gpt-4o", messages=messages())
    assert llm.chat_calls == 2


async def test_ttl_and_s_maxage_controls():
    clock = FakeClock()
    cache = Cache(clock=clock)
    llm = FakeLLM()
    acompletion = cached(llm.chat, cache=cache)
    await acompletion(model="gpt-4o", messages=messages(), cache={"ttl": 30})
    clock.advance(20)
    await acompletion(model="gpt-4o", messages=messages())
    assert llm.chat_calls == 1
    await acompletion(model="gpt-4o", messages=messages(), cache={"s-maxage": 10})
    assert llm.chat_calls == 2  # 20 s old: too old for this caller
    clock.advance(31)
    await acompletion(model="gpt-4o", messages=messages("expired?"), cache={"ttl": 1})
    clock.advance(2)
    await acompletion(model="gpt-4o", messages=messages("expired?"))
    assert llm.chat_calls == 4
    await cache.aclose()


async def test_namespace_control_separates_entries(cache, llm):
    acompletion = cached(llm.chat, cache=cache)
    await acompletion(model="gpt-4o", messages=messages(), cache={"namespace": "eu"})
    await acompletion(model="gpt-4o", messages=messages(), cache={"namespace": "us"})
    await acompletion(model="gpt-4o", messages=messages(), cache={"namespace": "eu"})
    assert llm.chat_calls == 2


async def test_bad_control_raises_naming_it_before_calling_upstream(cache, llm):
    acompletion = cached(llm.chat, cache=cache)
    with pytest.raises(ConfigurationError, match="no-cahce"):
        await acompletion(model="gpt-4o", messages=messages(), cache={"no-cahce": True})
    assert llm.chat_calls == 0


async def test_default_off_mode_caches_only_opted_in_calls(llm):
    cache = Cache(mode="default_off")
    acompletion = cached(llm.chat, cache=cache)
    await acompletion(model="gpt-4o", messages=messages())
    await acompletion(model="gpt-4o", messages=messages())
    assert llm.chat_calls == 2
    await acompletion(model="gpt-4o", messages=messages(), cache={"use-cache": True})
    await acompletion(model="gpt-4o", messages=messages(), cache={"use-cache": True})
    assert llm.chat_calls == 3
    await cache.aclose()


async def test_errors_are_never_cached(cache, llm):
    acompletion = cached(llm.chat, cache=cache)
    llm.fail = True
    with pytest.raises(UpstreamError):
        await acompletion(model="gpt-4o", messages=messages())
    llm.fail = False
    await acompletion(model="gpt-4o", messages=messages())
    await acompletion(model="gpt-4o", messages=messages())
    assert llm.chat_calls == 2


@pytest.mark.parametrize("as_dict", [False, True])
async def test_empty_responses_are_not_cached(cache, as_dict):
    llm = FakeLLM(as_dict=as_dict)
    llm.empty = True
    acompletion = cached(llm.chat, cache=cache)
    await acompletion(model="gpt-4o", messages=messages())
    await acompletion(model="gpt-4o", messages=messages())
    assert llm.chat_calls == 2
    assert cache.stats()["sets"] == 0


async def test_tool_call_only_response_is_cached(cache, llm):
    llm.empty = False
    acompletion = cached(llm.chat, cache=cache)
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    await acompletion(model="gpt-4o", messages=messages(), tools=tools)
    hit = await acompletion(model="gpt-4o", messages=messages(), tools=tools)
    assert llm.chat_calls == 1
    assert hit.choices[0].message.tool_calls[0].function.name == "get_weather"


async def test_caching_groups_share_entries_end_to_end(llm):
    cache = Cache(caching_groups=[("gpt-4o", "gpt-4o-2024-08-06")])
    acompletion = cached(llm.chat, cache=cache)
    await acompletion(model="gpt-4o-2024-08-06", messages=messages())
    hit = await acompletion(model="gpt-4o", messages=messages())
    assert llm.chat_calls == 1
    assert cache_info(hit).cache_hit is True
    await acompletion(model="gpt-4o-mini", messages=messages())
    assert llm.chat_calls == 2  # not in the group
    await cache.aclose()


async def test_on_hit_callback_sync_and_async(cache, llm):
    seen = []

    async def record(info):
        seen.append(info)

    acompletion = cached(llm.chat, cache=cache, on_hit=record)
    await acompletion(model="gpt-4o", messages=messages())
    assert seen == []
    await acompletion(model="gpt-4o", messages=messages())
    assert len(seen) == 1 and seen[0].cache_hit

    def broken(info):
        raise ValueError("callback bug")

    noisy = cached(llm.chat, cache=cache, on_hit=broken)
    hit = await noisy(model="gpt-4o", messages=messages())  # a failing callback is logged
    assert cache_info(hit).cache_hit


async def test_cache_failures_never_break_the_call(cache, llm, monkeypatch):
    async def explode(*args, **kwargs):
        raise RuntimeError("backend on fire")

    monkeypatch.setattr(cache, "async_lookup", explode)
    monkeypatch.setattr(cache, "async_store", explode)
    acompletion = cached(llm.chat, cache=cache)
    first = await acompletion(model="gpt-4o", messages=messages())
    second = await acompletion(model="gpt-4o", messages=messages())
    assert llm.chat_calls == 2
    assert first.choices[0].message.content == second.choices[0].message.content


async def test_backend_failures_are_misses(cache, llm, monkeypatch):
    async def explode(*args, **kwargs):
        raise ConnectionError("store unreachable")

    monkeypatch.setattr(cache.backend, "read_many", explode)
    monkeypatch.setattr(cache.backend, "write_many", explode)
    acompletion = cached(llm.chat, cache=cache)
    await acompletion(model="gpt-4o", messages=messages())
    await acompletion(model="gpt-4o", messages=messages())
    assert llm.chat_calls == 2


async def test_unkeyable_argument_fails_open(cache, llm):
    acompletion = cached(llm.chat, cache=cache)
    marker = object()
    await acompletion(model="gpt-4o", messages=messages(), opaque=marker)
    await acompletion(model="gpt-4o", messages=messages(), opaque=marker)
    assert llm.chat_calls == 2
    assert llm.requests[-1]["opaque"] is marker


async def test_unserializable_response_is_returned_uncached(cache):
    class Odd:
        choices = ["x"]

    calls = []

    async def fn(**kwargs):
        calls.append(kwargs)
        return Odd()

    wrapped = cached(fn, cache=cache)
    first = await wrapped(model="m", messages=messages())
    await wrapped(model="m", messages=messages())
    assert isinstance(first, Odd) and len(calls) == 2


async def test_unsupported_call_type_is_not_cached(llm):
    cache = Cache(supported_call_types=["embedding", "aembedding"])
    acompletion = cached(llm.chat, cache=cache)
    await acompletion(model="gpt-4o", messages=messages())
    await acompletion(model="gpt-4o", messages=messages())
    assert llm.chat_calls == 2
    await cache.aclose()


async def test_litellm_style_async_call_type_names_are_accepted(llm):
    cache = Cache(supported_call_types=["acompletion"])
    acompletion = cached(llm.chat, cache=cache)
    await acompletion(model="gpt-4o", messages=messages())
    await acompletion(model="gpt-4o", messages=messages())
    assert llm.chat_calls == 1
    await cache.aclose()


async def test_custom_key_function(cache, llm):
    acompletion = cached(llm.chat, cache=cache,
                         key=lambda **kw: "user-key:" + kw["messages"][-1]["content"])
    await acompletion(model="gpt-4o", messages=messages())
    hit = await acompletion(model="gpt-4o-mini", messages=messages())  # same key by design
    assert llm.chat_calls == 1
    assert cache_info(hit).cache_key == "user-key:What is the capital of France?"


async def test_default_cache_is_used_when_none_is_passed(llm):
    wrapped = cached(llm.chat)
    await wrapped(model="gpt-4o", messages=messages())
    await wrapped(model="gpt-4o", messages=messages())
    assert llm.chat_calls == 2  # no default cache: plain pass-through
    default = enable_cache()
    try:
        await wrapped(model="gpt-4o", messages=messages())
        await wrapped(model="gpt-4o", messages=messages())
        assert llm.chat_calls == 3
    finally:
        disable_cache()
        await default.aclose()


async def test_positional_arguments_are_part_of_the_key(cache):
    calls = []

    async def fn(prompt, **kwargs):
        calls.append(prompt)
        return {"choices": [{"index": 0, "text": prompt.upper()}]}

    wrapped = cached(fn, cache=cache, call_type="text_completion")
    assert (await wrapped("a", model="m"))["choices"][0]["text"] == "A"
    assert (await wrapped("b", model="m"))["choices"][0]["text"] == "B"
    assert (await wrapped("a", model="m"))["choices"][0]["text"] == "A"
    assert calls == ["a", "b"]


def test_wrapper_rejects_bad_arguments():
    with pytest.raises(ConfigurationError, match="callable"):
        cached(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="Cache"):
        cached(FakeLLM().chat, cache={"ttl": 1})  # type: ignore[arg-type]


def test_sync_shim_over_an_async_function():
    cache = Cache()
    llm = FakeLLM()
    completion = cached_sync(llm.chat, cache=cache)
    first = completion(model="gpt-4o", messages=messages())
    second = completion(model="gpt-4o", messages=messages())
    assert llm.chat_calls == 1
    assert isinstance(second, ChatCompletion)
    assert cache_info(second).cache_hit and second.model_dump() == first.model_dump()
    cache.close()


def test_sync_shim_over_a_sync_function():
    cache = Cache()
    calls = []

    def completion_fn(**kwargs):
        calls.append(kwargs)
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "42"}}]}

    completion = cached_sync(completion_fn, cache=cache)
    assert completion(model="m", messages=messages())["choices"][0]["message"]["content"] == "42"
    hit = completion(model="m", messages=messages(), cache={"s-maxage": 600})
    assert len(calls) == 1 and cache_info(hit).cache_hit
    cache.close()


async def test_sync_shim_works_from_a_thread_while_a_loop_runs(cache):
    # A worker thread of a running app (or Jupyter): the shim runs on the bridge loop.
    calls = []

    def completion_fn(**kwargs):
        calls.append(kwargs)
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}

    completion = cached_sync(completion_fn, cache=cache)
    await asyncio.to_thread(completion, model="m", messages=messages())
    await asyncio.to_thread(completion, model="m", messages=messages())
    assert len(calls) == 1
