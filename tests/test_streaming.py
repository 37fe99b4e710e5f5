"""Streamed calls: pass-through, assembly, storing once complete, replay on hits."""

from __future__ import annotations

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from asynccache import Cache, cached, cached_sync
from asynccache.integrations import cache_info
from asynccache.integrations.streaming import StreamAssembler, replay_chunks
from tests.fake_llm import FakeLLM, UpstreamError, answer_for, messages, stream_chunks

TOOLS = [{"type": "function", "function": {"name": "get_weather"}}]


@pytest.fixture
async def cache():
    made = Cache()
    yield made
    await made.aclose()


def request(**extra):
    return {"model": "gpt-4o", "messages": messages(), **extra}


async def collect(stream):
    return [chunk async for chunk in stream]


def text_of(chunks):
    assembler = StreamAssembler()
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.result()


async def test_miss_passes_every_upstream_chunk_through_then_stores(cache):
    llm = FakeLLM()
    acompletion = cached(llm.chat, cache=cache)
    stream = await acompletion(**request(stream=True))
    assert cache_info(stream).cache_hit is False
    assert stream.response == "fake-http-response"  # upstream attributes stay reachable
    got = await collect(stream)
    expected = stream_chunks(llm._completion(request()), include_usage=False)
    assert [c.model_dump(exclude_unset=True) for c in got] == expected
    assert cache.stats()["sets"] == 1


@pytest.mark.parametrize("as_dict", [False, True])
async def test_streamed_miss_answers_a_later_non_streamed_call(cache, as_dict):
    llm = FakeLLM(as_dict=as_dict)
    acompletion = cached(llm.chat, cache=cache)
    extra = {"tools": TOOLS, "reasoning_effort": "high",
             "stream_options": {"include_usage": True}}
    await collect(await acompletion(**request(stream=True, **extra)))
    hit = await acompletion(**request(**extra))
    assert llm.chat_calls == 1
    data = hit if as_dict else hit.model_dump()
    if not as_dict:
        assert isinstance(hit, ChatCompletion)
    message = data["choices"][0]["message"]
    assert message["content"] == answer_for(request())
    assert message["reasoning_content"] == "Thinking step one. Then step two, carefully."
    assert message["tool_calls"] == [{"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'}}]
    assert data["choices"][0]["finish_reason"] == "tool_calls"
    assert data["usage"]["total_tokens"] == 40


async def test_hit_replays_as_a_stream_of_chunks(cache):
    llm = FakeLLM()
    acompletion = cached(llm.chat, cache=cache)
    extra = {"tools": TOOLS, "reasoning_effort": "high"}
    original = await acompletion(**request(**extra))  # non-streamed first
    replay = await acompletion(**request(stream=True, **extra))
    assert llm.chat_calls == 1
    assert cache_info(replay).cache_hit is True
    chunks = await collect(replay)
    assert all(isinstance(chunk, ChatCompletionChunk) for chunk in chunks)
    rebuilt = text_of(chunks)
    message = original.model_dump()["choices"][0]["message"]
    assert rebuilt["choices"][0]["message"]["content"] == message["content"]
    assert rebuilt["choices"][0]["message"]["reasoning_content"] == message["reasoning_content"]
    assert rebuilt["choices"][0]["message"]["tool_calls"] == message["tool_calls"]
    assert rebuilt["choices"][0]["finish_reason"] == "tool_calls"
    assert rebuilt["usage"]["total_tokens"] == 40


async def test_streamed_hit_from_a_streamed_miss(cache):
    llm = FakeLLM()
    acompletion = cached(llm.chat, cache=cache)
    first = await collect(await acompletion(**request(stream=True)))
    second = await collect(await acompletion(**request(stream=True)))
    assert llm.chat_calls == 1
    assert text_of(second)["choices"][0]["message"]["content"] == \
        text_of(first)["choices"][0]["message"]["content"]


async def test_errored_stream_is_not_stored(cache):
    llm = FakeLLM()
    llm.stream_error_after = 4
    acompletion = cached(llm.chat, cache=cache)
    stream = await acompletion(**request(stream=True))
    with pytest.raises(UpstreamError):
        await collect(stream)
    llm.stream_error_after = None
    await collect(await acompletion(**request(stream=True)))
    assert llm.chat_calls == 2


async def test_abandoned_stream_is_not_stored_and_upstream_is_closed(cache):
    llm = FakeLLM()
    acompletion = cached(llm.chat, cache=cache)
    stream = await acompletion(**request(stream=True))
    async with stream:
        async for _chunk in stream:
            break
    assert stream._upstream.closed
    assert cache.stats()["sets"] == 0
    await acompletion(**request())
    assert llm.chat_calls == 2


async def test_empty_stream_is_not_stored(cache):
    llm = FakeLLM()
    llm.empty = True
    acompletion = cached(llm.chat, cache=cache)
    await collect(await acompletion(**request(stream=True)))
    assert cache.stats()["sets"] == 0


async def test_async_generator_functions_are_supported(cache):
    calls = []

    async def gen(**kwargs):
        calls.append(kwargs)
        for piece in ["Hel", "lo"]:
            yield {"id": "x", "model": "m", "choices": [{"index": 0, "delta": {"content": piece}}]}
        yield {"id": "x", "model": "m", "choices": [{"index": 0, "delta": {},
                                                      "finish_reason": "stop"}]}

    wrapped = cached(gen, cache=cache)
    await collect(await wrapped(model="m", messages=messages(), stream=True))
    hit = await wrapped(model="m", messages=messages())
    assert hit["choices"][0]["message"]["content"] == "Hello" and len(calls) == 1


async def test_non_chat_chunks_pass_through_uncached(cache):
    async def events(**kwargs):
        for event in [{"type": "message_start"}, {"type": "content_block_delta"}]:
            yield event

    wrapped = cached(events, cache=cache)
    got = await collect(await wrapped(model="claude", messages=messages(), stream=True))
    assert got == [{"type": "message_start"}, {"type": "content_block_delta"}]
    assert cache.stats()["sets"] == 0


def test_assembler_merges_tool_call_deltas_and_choices():
    assembler = StreamAssembler()
    base = {"id": "c", "created": 1, "model": "m"}
    deltas = [
        {"index": 0, "delta": {"role": "assistant", "tool_calls": [
            {"index": 0, "id": "a", "type": "function",
             "function": {"name": "f", "arguments": ""}},
            {"index": 1, "id": "b", "type": "function",
             "function": {"name": "g", "arguments": "{"}},
        ]}},
        {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"x":1}'}}]}},
        {"index": 0, "delta": {"tool_calls": [{"index": 1, "function": {"arguments": "}"}}]}},
        {"index": 1, "delta": {"content": "second choice"}, "finish_reason": "stop"},
        {"index": 0, "delta": {}, "finish_reason": "tool_calls"},
    ]
    for delta in deltas:
        assembler.add({**base, "choices": [delta]})
    result = assembler.result()
    calls = result["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], c["function"]["arguments"]) for c in calls] == [("a", '{"x":1}'), ("b", "{}")]
    assert result["choices"][1]["message"]["content"] == "second choice"
    assert [c["finish_reason"] for c in result["choices"]] == ["tool_calls", "stop"]


def test_replay_round_trips_through_the_assembler():
    response = {"id": "r", "created": 5, "model": "m", "object": "chat.completion",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": "x" * 300, "refusal": None}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
    chunks = replay_chunks(response)
    assert len(chunks) > 3  # content is split into several chunks
    rebuilt = text_of(chunks)
    assert rebuilt["choices"][0]["message"]["content"] == "x" * 300
    assert rebuilt["usage"] == response["usage"]


def test_sync_shim_streams_and_replays():
    cache = Cache()
    llm = FakeLLM()
    completion = cached_sync(llm.chat, cache=cache)
    first = list(completion(**request(stream=True)))
    replay = completion(**request(stream=True))
    assert replay.cache_info.cache_hit
    second = list(replay)
    assert llm.chat_calls == 1
    assert text_of(second)["choices"][0]["message"]["content"] == \
        text_of(first)["choices"][0]["message"]["content"]
    cache.close()
