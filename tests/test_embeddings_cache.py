"""Embedding calls cached per input: one batch read, misses only upstream, one batch write."""

from __future__ import annotations

import pytest
from openai.types import CreateEmbeddingResponse

from asynccache import Cache, cached
from asynccache.integrations import cache_info
from asynccache.integrations.embeddings import split_inputs
from tests.fake_llm import FakeLLM, tokens_for, vector_for


class CountingBackend:
    """Counts the backend primitive calls of a cache (batch reads and writes)."""

    def __init__(self, cache, monkeypatch):
        self.gets: list[int] = []
        self.sets: list[int] = []
        backend = cache.backend
        real_get, real_set = backend.read_many, backend.write_many

        async def get_many(keys):
            self.gets.append(len(keys))
            return await real_get(keys)

        async def set_many(items):
            self.sets.append(len(items))
            return await real_set(items)

        monkeypatch.setattr(backend, "read_many", get_many)
        monkeypatch.setattr(backend, "write_many", set_many)


@pytest.fixture
async def cache():
    made = Cache()
    yield made
    await made.aclose()


@pytest.fixture
def llm():
    return FakeLLM()


def vectors(response):
    data = response["data"] if isinstance(response, dict) else response.model_dump()["data"]
    assert [item["index"] for item in data] == list(range(len(data)))
    return [item["embedding"] for item in data]


async def test_only_misses_go_upstream_and_results_merge_in_order(cache, llm, monkeypatch):
    counts = CountingBackend(cache, monkeypatch)
    embed = cached(llm.embed, cache=cache, call_type="embedding")
    first = await embed(model="text-embedding-3-small", input=["alpha beta", "gamma", "delta"])
    assert counts.gets == [3] and counts.sets == [3]
    assert vectors(first) == [vector_for(t) for t in ["alpha beta", "gamma", "delta"]]

    batch = ["gamma", "new input here", "alpha beta", "zeta"]
    second = await embed(model="text-embedding-3-small", input=batch)
    assert llm.embed_calls == 2
    assert llm.requests[-1]["input"] == ["new input here", "zeta"]
    assert counts.gets == [3, 4] and counts.sets == [3, 2]  # one batch read, one batch write
    assert vectors(second) == [vector_for(t) for t in batch]
    assert isinstance(second, CreateEmbeddingResponse)
    # Usage counts only the tokens actually sent upstream.
    assert second.usage.prompt_tokens == tokens_for("new input here") + tokens_for("zeta")
    info = cache_info(second)
    assert (info.cache_hit, info.items_hit, info.items_total) == (False, 2, 4)


async def test_fully_cached_batch_makes_no_upstream_call(cache, llm):
    embed = cached(llm.embed, cache=cache, call_type="embedding")
    await embed(model="m", input=["a", "b"])
    hit = await embed(model="m", input=["b", "a"])
    assert llm.embed_calls == 1
    assert vectors(hit) == [vector_for("b"), vector_for("a")]
    assert hit.usage.prompt_tokens == 0 and hit.usage.total_tokens == 0
    assert hit.model == "m"
    assert cache_info(hit).cache_hit is True


async def test_a_new_wrapper_rebuilds_the_stored_response_class(cache, llm):
    await cached(llm.embed, cache=cache, call_type="embedding")(model="m", input=["a"])
    hit = await cached(llm.embed, cache=cache, call_type="embedding")(model="m", input=["a"])
    assert isinstance(hit, CreateEmbeddingResponse) and llm.embed_calls == 1


async def test_duplicate_inputs_are_sent_once(cache, llm):
    embed = cached(llm.embed, cache=cache, call_type="embedding")
    result = await embed(model="m", input=["x", "y", "x"])
    assert llm.requests[-1]["input"] == ["x", "y"]
    assert vectors(result) == [vector_for("x"), vector_for("y"), vector_for("x")]


async def test_single_string_and_batch_share_entries(cache, llm):
    embed = cached(llm.embed, cache=cache, call_type="embedding")
    await embed(model="m", input="solo")
    hit = await embed(model="m", input=["solo"])
    assert llm.embed_calls == 1
    assert vectors(hit) == [vector_for("solo")]
    assert llm.requests[0]["input"] == "solo"  # a single input goes upstream unchanged


async def test_dimensions_and_model_are_part_of_each_key(cache, llm):
    embed = cached(llm.embed, cache=cache, call_type="embedding")
    await embed(model="m", input=["a"], dimensions=4)
    other = await embed(model="m", input=["a"], dimensions=6)
    await embed(model="other", input=["a"], dimensions=4)
    assert llm.embed_calls == 3
    assert len(vectors(other)[0]) == 6


async def test_dict_responses_and_per_item_token_shares(cache):
    llm = FakeLLM(as_dict=True)
    embed = cached(llm.embed, cache=cache, call_type="embedding")
    await embed(model="m", input=["one two three", "four"])
    keys = [cache.get_cache_key(model="m", input=text) for text in ["one two three", "four"]]
    stored = await cache.async_batch_get_cache(keys)
    assert sum(entry["prompt_tokens"] for entry in stored) == 4  # shares add up to the total
    hit = await embed(model="m", input=["four"])
    assert isinstance(hit, dict) and vectors(hit) == [vector_for("four")]


async def test_no_cache_and_no_store_controls(cache, llm):
    embed = cached(llm.embed, cache=cache, call_type="embedding")
    await embed(model="m", input=["a"], cache={"no-store": True})
    await embed(model="m", input=["a"])
    await embed(model="m", input=["a"], cache={"no-cache": True})
    assert llm.embed_calls == 3


async def test_upstream_error_propagates_and_nothing_is_stored(cache):
    calls = []

    async def broken(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("rate limited")

    embed = cached(broken, cache=cache, call_type="embedding")
    with pytest.raises(RuntimeError, match="rate limited"):
        await embed(model="m", input=["a", "b"])
    assert cache.stats()["sets"] == 0


async def test_mismatched_response_is_answered_uncached(cache, llm):
    embed = cached(llm.embed, cache=cache, call_type="embedding")
    await embed(model="m", input=["cached"])

    async def short(**kwargs):
        return {"object": "list", "data": [], "model": "m",
                "usage": {"prompt_tokens": 0, "total_tokens": 0}}

    odd = cached(short, cache=cache, call_type="embedding")
    result = await odd(model="m", input=["fresh"])
    assert result["data"] == []
    assert cache.stats()["sets"] == 1  # only the first, well-formed call stored anything


def test_split_inputs_shapes():
    assert split_inputs("a") == (["a"], True)
    assert split_inputs([1, 2, 3]) == ([[1, 2, 3]], True)
    assert split_inputs(["a", "b"]) == (["a", "b"], False)
    assert split_inputs([[1, 2], [3]]) == ([[1, 2], [3]], False)
    assert split_inputs([]) is None
    assert split_inputs([{"image": "x"}]) is None
