"""Sampling-aware caching: cache, skip or pool requests meant to vary."""

from __future__ import annotations

import pytest

from asynccache import Cache, ConfigurationError, ReplayMissError, cached
from asynccache.integrations import cache_info
from asynccache.sampling import SamplingPolicy, is_sampling, parse_sampling
from tests.fake_llm import messages


class Sampler:
    """An upstream whose every choice is a new sample ("sample 1", "sample 2"...)."""

    def __init__(self) -> None:
        self.calls = 0
        self.drawn = 0

    async def chat(self, **kwargs):
        self.calls += 1
        choices = []
        for index in range(kwargs.get("n") or 1):
            self.drawn += 1
            choices.append({"index": index, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": f"sample {self.drawn}"}})
        count = len(choices)
        return {"id": f"c{self.calls}", "object": "chat.completion", "created": 0,
                "model": kwargs["model"], "choices": choices,
                "usage": {"prompt_tokens": 10, "completion_tokens": 5 * count,
                          "total_tokens": 10 + 5 * count}}


def contents(result) -> list[str]:
    return [choice["message"]["content"] for choice in result["choices"]]


SAMPLED = {"model": "gpt-4o-mini", "messages": messages("Write a haiku"), "temperature": 0.9}


def test_what_counts_as_sampling():
    assert is_sampling({"temperature": 0.2}) and is_sampling({"top_p": 0.9})
    assert is_sampling({"n": 2, "temperature": 0})
    assert not is_sampling({"temperature": 0}) and not is_sampling({"top_p": 1})
    assert not is_sampling({"temperature": 1.0, "seed": 42})
    assert not is_sampling({})  # no temperature given: not treated as sampling


def test_bad_policies_are_refused_by_name():
    with pytest.raises(ConfigurationError, match="sampling mode must be one of"):
        Cache(sampling="sometimes")
    with pytest.raises(ConfigurationError, match="pool_size"):
        parse_sampling({"mode": "pool", "pool_size": 0})
    with pytest.raises(ConfigurationError, match="serve"):
        SamplingPolicy(mode="pool", serve="shuffle")
    with pytest.raises(ConfigurationError, match="unknown sampling setting"):
        parse_sampling({"mode": "pool", "size": 3})


async def test_the_default_caches_sampled_requests_like_any_other():
    cache, upstream = Cache(), Sampler()
    ask = cached(upstream.chat, cache=cache)
    first, second = await ask(**SAMPLED), await ask(**SAMPLED)
    assert cache.sampling.mode == "cache"
    assert upstream.calls == 1 and contents(first) == contents(second) == ["sample 1"]
    await cache.aclose()


async def test_skip_always_goes_upstream_and_stores_nothing():
    cache, upstream = Cache(sampling="skip"), Sampler()
    ask = cached(upstream.chat, cache=cache)
    answers = [contents(await ask(**SAMPLED))[0] for _ in range(3)]
    assert answers == ["sample 1", "sample 2", "sample 3"] and upstream.calls == 3
    assert cache.stats()["sets"] == 0
    await ask(**{**SAMPLED, "seed": 7})  # a seeded request is cached as usual
    await ask(**{**SAMPLED, "seed": 7})
    assert upstream.calls == 4
    await cache.aclose()


async def test_pool_fills_on_misses_then_serves_round_robin():
    cache, upstream = Cache(sampling={"mode": "pool", "pool_size": 3}), Sampler()
    ask = cached(upstream.chat, cache=cache)
    results = [await ask(**SAMPLED) for _ in range(9)]
    assert upstream.calls == 3
    assert [contents(r)[0] for r in results] == [
        "sample 1", "sample 2", "sample 3",  # filling: each a fresh sample
        "sample 1", "sample 2", "sample 3", "sample 1", "sample 2", "sample 3"]
    assert [cache_info(r).cache_hit for r in results] == [False] * 3 + [True] * 6
    saved = cache.stats()["saved"]["models"]["gpt-4o-mini"]
    assert saved["hits"] == 6 and saved["completion_tokens"] == 30
    await cache.aclose()


async def test_pool_served_at_random_stays_within_the_pool():
    cache = Cache(sampling={"mode": "pool", "pool_size": 3, "serve": "random"})
    upstream = Sampler()
    ask = cached(upstream.chat, cache=cache)
    served = [contents(await ask(**SAMPLED))[0] for _ in range(40)]
    assert upstream.calls == 3
    assert set(served[3:]) <= {"sample 1", "sample 2", "sample 3"}
    assert len(set(served[3:])) > 1
    await cache.aclose()


async def test_n_greater_than_one_is_served_from_the_pool_when_it_holds_enough():
    cache, upstream = Cache(sampling={"mode": "pool", "pool_size": 4}), Sampler()
    ask = cached(upstream.chat, cache=cache)
    assert contents(await ask(**SAMPLED, n=2)) == ["sample 1", "sample 2"]  # fills 2
    assert contents(await ask(**SAMPLED, n=2)) == ["sample 3", "sample 4"]  # full now
    assert upstream.calls == 2
    three = await ask(**SAMPLED, n=3)
    assert contents(three) == ["sample 1", "sample 2", "sample 3"]
    assert [c["index"] for c in three["choices"]] == [0, 1, 2]
    assert three["usage"]["completion_tokens"] == 15
    assert contents(await ask(**SAMPLED)) == ["sample 4"]  # n=1 shares the pool
    assert upstream.calls == 2
    five = await ask(**SAMPLED, n=5)  # more than the pool holds: upstream
    assert upstream.calls == 3 and len(five["choices"]) == 5
    await cache.aclose()


async def test_pool_works_for_streams():
    cache, upstream = Cache(sampling={"mode": "pool", "pool_size": 2}), Sampler()

    async def streamed(**kwargs):
        data = await upstream.chat(**kwargs)
        chunks = [{"id": data["id"], "object": "chat.completion.chunk", "created": 0,
                   "model": data["model"],
                   "choices": [{"index": 0, "delta": {"role": "assistant",
                                                      "content": contents(data)[0]},
                                "finish_reason": "stop"}]}]

        async def generate():
            for chunk in chunks:
                yield chunk

        return generate()

    ask = cached(streamed, cache=cache)

    async def text(**kwargs):
        stream = await ask(**kwargs, stream=True)
        return "".join([c["choices"][0]["delta"].get("content") or ""
                        async for c in stream if c["choices"]])

    assert [await text(**SAMPLED) for _ in range(4)] == [
        "sample 1", "sample 2", "sample 1", "sample 2"]
    assert upstream.calls == 2
    await cache.aclose()


async def test_a_recorded_pool_replays_without_upstream(tmp_path):
    path = tmp_path / "pool.json"
    policy = {"mode": "pool", "pool_size": 2}
    cache = Cache(type="cassette", path=str(path), record_mode="record", sampling=policy)
    ask = cached(Sampler().chat, cache=cache)
    await ask(**SAMPLED)
    await ask(**SAMPLED)
    await cache.aclose()
    cache = Cache(type="cassette", path=str(path), record_mode="replay", sampling=policy)
    upstream = Sampler()
    ask = cached(upstream.chat, cache=cache)
    assert [contents(await ask(**SAMPLED))[0] for _ in range(3)] == [
        "sample 1", "sample 2", "sample 1"]
    with pytest.raises(ReplayMissError):
        await ask(**SAMPLED, n=3)
    with pytest.raises(ReplayMissError, match=r"temperature: recorded 0\.9, requested 0\.5"):
        await ask(**{**SAMPLED, "temperature": 0.5})
    assert upstream.calls == 0
    await cache.aclose()


async def test_litellm_skips_sampled_requests_and_refuses_a_pool(monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    from asynccache.integrations.litellm import as_litellm_cache

    with pytest.raises(ConfigurationError, match="sampling='pool' works with cached"):
        as_litellm_cache(Cache(sampling="pool"))
    cache = Cache(sampling="skip")
    litellm.cache = as_litellm_cache(cache)
    backend = litellm.cache.cache
    try:
        sampled = {"model": "gpt-4o-mini", "messages": messages("Write a haiku"),
                   "temperature": 0.9}
        seeded = {**sampled, "seed": 3}
        await backend.async_set_cache("k-sampled", {"answer": 1}, **sampled)
        await backend.async_set_cache("k-seeded", {"answer": 2}, **seeded)
        assert cache.stats()["sets"] == 1  # only the seeded request was stored
        assert await backend.async_get_cache("k-seeded", **seeded) == {"answer": 2}
        await cache.async_set_cache("k-sampled", {"answer": 1})  # even if present...
        assert await backend.async_get_cache("k-sampled", **sampled) is None  # ...not served
        reply = await litellm.acompletion(**sampled, mock_response="fresh")
        assert reply.choices[0].message.content == "fresh"
    finally:
        litellm.disable_cache()
        await cache.aclose()
