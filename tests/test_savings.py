"""What hits saved: tokens, USD from the offline price table, upstream seconds."""

from __future__ import annotations

import importlib.util
from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price

from asynccache import Cache, MemoryCache, cached
from asynccache.savings import SavingsLedger, price_usd, usage_of
from tests.fake_llm import FakeLLM, messages


def list_price(model: str, prompt: int, completion: int) -> float:
    return float(calc_price(Usage(input_tokens=prompt, output_tokens=completion), model)
                 .total_price)


@pytest.fixture
async def cache():
    made = Cache(namespace="shop")
    yield made
    await made.aclose()


async def test_a_hit_counts_tokens_and_price_per_model_and_namespace(cache):
    ask = cached(FakeLLM().chat, cache=cache)  # usage: 11 prompt, 29 completion tokens
    await ask(model="gpt-4o-mini", messages=messages())
    assert cache.stats()["saved"]["hits"] == 0  # a miss saves nothing
    await ask(model="gpt-4o-mini", messages=messages())
    await ask(model="gpt-4o-mini", messages=messages())
    await ask(model="gpt-4o-mini", messages=messages(), cache={"namespace": "eu"})  # a miss
    await ask(model="gpt-4o-mini", messages=messages(), cache={"namespace": "eu"})
    saved = cache.stats()["saved"]
    expected = 3 * list_price("gpt-4o-mini", 11, 29)
    assert saved["hits"] == 3 and saved["unpriced_hits"] == 0 and saved["price"] == "known"
    assert saved["prompt_tokens"] == 33 and saved["completion_tokens"] == 87
    assert saved["total_tokens"] == 120
    assert saved["cost_usd"] == pytest.approx(expected, rel=1e-9)
    assert saved["price_sources"][0].startswith("genai-prices")
    model = saved["models"]["gpt-4o-mini"]
    assert model["hits"] == 3 and model["cost_usd"] == pytest.approx(expected, rel=1e-9)
    assert saved["namespaces"]["shop"]["hits"] == 2 and saved["namespaces"]["eu"]["hits"] == 1


async def test_the_upstream_time_recorded_at_store_is_what_a_hit_saves(cache):
    ask = cached(FakeLLM().chat, cache=cache)
    await ask(model="gpt-4o", messages=messages())
    key = cache.get_cache_key(model="gpt-4o", messages=messages())
    stored = (await cache.async_get_cache(key))["upstream_seconds"]
    assert isinstance(stored, float) and stored >= 0
    await ask(model="gpt-4o", messages=messages())
    await ask(model="gpt-4o", messages=messages())
    assert cache.stats()["saved"]["upstream_seconds"] == pytest.approx(2 * stored, abs=1e-3)


async def test_an_unknown_model_counts_tokens_and_says_the_price_is_unknown(cache):
    ask = cached(FakeLLM().chat, cache=cache)
    await ask(model="acme-internal-7b", messages=messages())
    await ask(model="acme-internal-7b", messages=messages())
    saved = cache.stats()["saved"]
    row = saved["models"]["acme-internal-7b"]
    assert row["hits"] == 1 and row["total_tokens"] == 40
    assert row["cost_usd"] is None and row["price"] == "unknown" and row["unpriced_hits"] == 1
    await ask(model="gpt-4o-mini", messages=messages())
    await ask(model="gpt-4o-mini", messages=messages())
    saved = cache.stats()["saved"]
    assert saved["price"] == "partly known" and saved["unpriced_hits"] == 1
    assert saved["cost_usd"] == pytest.approx(list_price("gpt-4o-mini", 11, 29))


async def test_plain_gets_and_dict_responses_without_usage_cost_nothing(cache):
    await cache.async_set_cache("k", {"a": 1})
    assert await cache.async_get_cache("k") == {"a": 1}

    async def no_usage(**kwargs):
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]}

    ask = cached(no_usage, cache=cache)
    await ask(model="gpt-4o", messages=messages())
    await ask(model="gpt-4o", messages=messages())
    saved = cache.stats()["saved"]
    assert saved["hits"] == 1 and saved["total_tokens"] == 0
    cache.reset_stats()
    assert cache.stats()["saved"]["hits"] == 0


async def test_streamed_and_embedding_hits_are_counted(cache):
    llm = FakeLLM()
    ask = cached(llm.chat, cache=cache)
    stream = await ask(model="gpt-4o-mini", messages=messages(), stream=True,
                       stream_options={"include_usage": True})
    [chunk async for chunk in stream]
    stream = await ask(model="gpt-4o-mini", messages=messages(), stream=True)
    [chunk async for chunk in stream]
    embed = cached(llm.embed, cache=cache, call_type="embedding")
    await embed(model="text-embedding-3-small", input=["one two", "three four five"])
    await embed(model="text-embedding-3-small", input=["three four five", "new words"])
    saved = cache.stats()["saved"]["models"]
    assert saved["gpt-4o-mini"]["hits"] == 1 and saved["gpt-4o-mini"]["total_tokens"] == 40
    embedding = saved["text-embedding-3-small"]
    # The stored vector's share of its batch's 5 prompt tokens (an even split: 3 and 2).
    assert embedding["hits"] == 1 and embedding["prompt_tokens"] == 2
    assert embedding["completion_tokens"] == 0


def test_prices_come_from_the_table_for_bare_and_provider_prefixed_names():
    bare = price_usd("gpt-4o-mini", 1000, 500)
    prefixed = price_usd("openai/gpt-4o-mini", 1000, 500)
    assert bare is not None and prefixed is not None
    assert bare[0] == prefixed[0] == Decimal(str(list_price("gpt-4o-mini", 1000, 500)))
    cached_read = price_usd("gpt-4o-mini", 1000, 500, 800)
    assert cached_read is not None and cached_read[0] < bare[0]  # cached prompt tokens are cheaper
    assert price_usd("acme-internal-7b", 10, 10) is None


def test_usage_is_read_from_openai_anthropic_and_responses_shapes():
    assert usage_of({"usage": {"prompt_tokens": 7, "completion_tokens": 3,
                               "prompt_tokens_details": {"cached_tokens": 4}}}) == (7, 3, 4)
    assert usage_of({"usage": {"input_tokens": 9, "output_tokens": 2,
                               "cache_read_input_tokens": 5}}) == (9, 2, 5)
    assert usage_of({"usage": None}) is None and usage_of("text") is None


def test_ledger_snapshot_breaks_down_by_model_and_namespace():
    ledger = SavingsLedger()
    ledger.add("a", "gpt-4o-mini", prompt=100, completion=50, seconds=1.5)
    ledger.add("b", "gpt-4o-mini", prompt=100, completion=50, seconds=0.5)
    ledger.add("b", None, prompt=1, completion=1)
    snap = ledger.snapshot()
    assert snap["hits"] == 3 and snap["upstream_seconds"] == 2.0
    assert set(snap["models"]) == {"gpt-4o-mini", "(unknown model)"}
    assert snap["namespaces"]["b"]["hits"] == 2


async def test_the_litellm_adapter_counts_its_hits(monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    from asynccache.integrations.litellm import as_litellm_cache

    cache = Cache()
    litellm.cache = as_litellm_cache(cache)
    try:
        first = await litellm.acompletion(model="gpt-4o-mini", messages=messages(),
                                          mock_response="Paris.")
        for _ in range(2000):  # LiteLLM stores in a background task
            if cache.stats()["sets"]:
                break
            import asyncio

            await asyncio.sleep(0.005)
        second = await litellm.acompletion(model="gpt-4o-mini", messages=messages(),
                                           mock_response="other")
        assert second._hidden_params.get("cache_hit") is True
        saved = cache.stats()["saved"]["models"]["gpt-4o-mini"]
        usage = first.usage
        assert saved["hits"] == 1
        assert saved["prompt_tokens"] == usage.prompt_tokens
        assert saved["completion_tokens"] == usage.completion_tokens
        assert saved["cost_usd"] == pytest.approx(
            list_price("gpt-4o-mini", usage.prompt_tokens, usage.completion_tokens))
    finally:
        litellm.disable_cache()
        await cache.aclose()


@pytest.mark.skipif(importlib.util.find_spec("prometheus_client") is None,
                    reason="prometheus-client is not installed")
async def test_prometheus_exports_what_hits_saved(cache):
    import prometheus_client

    from asynccache.metrics import PrometheusExporter

    ask = cached(FakeLLM().chat, cache=cache)
    await ask(model="gpt-4o-mini", messages=messages())
    await ask(model="gpt-4o-mini", messages=messages())
    registry = prometheus_client.CollectorRegistry()
    PrometheusExporter({"llm": cache}, registry=registry)
    labels = {"cache": "llm", "backend": "memory", "namespace": "shop", "model": "gpt-4o-mini"}
    assert registry.get_sample_value("asynccache_saved_hits_total", labels) == 1
    assert registry.get_sample_value("asynccache_saved_tokens_total",
                                     {**labels, "kind": "completion"}) == 29
    assert registry.get_sample_value("asynccache_saved_cost_usd_total", labels) == \
        pytest.approx(list_price("gpt-4o-mini", 11, 29))
    assert registry.get_sample_value("asynccache_saved_upstream_seconds_total", labels) >= 0


@pytest.mark.skipif(importlib.util.find_spec("opentelemetry") is None,
                    reason="opentelemetry-api is not installed")
async def test_opentelemetry_exports_what_hits_saved():
    from asynccache.metrics import enable_opentelemetry
    from tests.test_stats import _FakeMeter

    meter = _FakeMeter()
    cache, other = MemoryCache(), Cache()
    try:
        enable_opentelemetry({"llm": cache}, meter=meter)
        ask = cached(FakeLLM().chat, cache=other)  # another cache: nothing counted here
        await ask(model="gpt-4o-mini", messages=messages())
        await ask(model="gpt-4o-mini", messages=messages())
        assert meter.read("asynccache.saved.hits") == []
        from asynccache.savings import count_saved

        count_saved(cache, {"model": "acme-7b", "usage": {"prompt_tokens": 3,
                                                          "completion_tokens": 4}},
                    namespace=None)
        base = {"cache": "llm", "backend": "memory", "namespace": "", "model": "acme-7b"}
        assert meter.read("asynccache.saved.hits") == [(1.0, base)]
        assert meter.read("asynccache.saved.unpriced_hits") == [(1.0, base)]
        assert meter.read("asynccache.saved.cost") == []  # no price, no guessed figure
        assert (3.0, {**base, "kind": "prompt"}) in meter.read("asynccache.saved.tokens")
    finally:
        await cache.aclose()
        await other.aclose()


def test_persisted_savings_add_up_across_caches_and_show_in_asynccache_stats(tmp_path):
    import io
    import json

    from asynccache import cached_sync
    from asynccache.cli import main

    folder = str(tmp_path / "disk")
    for _ in range(2):  # two application processes sharing one store
        cache = Cache(type="disk", disk_cache_dir=folder, namespace="shop",
                      persist_savings=True)
        ask = cached_sync(FakeLLM().chat, cache=cache)
        ask(model="gpt-4o-mini", messages=messages())
        ask(model="gpt-4o-mini", messages=messages())
        ask(model="acme-internal-7b", messages=messages())
        ask(model="acme-internal-7b", messages=messages())
        cache.close()  # writes this process's totals
    out, err = io.StringIO(), io.StringIO()
    code = main(["stats", "--json", "--type", "disk", "--set", f"disk_cache_dir={folder}",
                 "--namespace", "shop"], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    saved = json.loads(out.getvalue())["saved"]
    # First pass: 1 hit per model; second pass: 2 per model (the entries already exist).
    assert saved["models"]["gpt-4o-mini"]["hits"] == 3
    assert saved["models"]["gpt-4o-mini"]["total_tokens"] == 3 * 40
    assert saved["models"]["gpt-4o-mini"]["cost_usd"] == pytest.approx(
        3 * list_price("gpt-4o-mini", 11, 29))
    assert saved["models"]["acme-internal-7b"]["price"] == "unknown"
    assert saved["hits"] == 6 and saved["price"] == "partly known"


async def test_without_persist_savings_nothing_extra_is_written(cache):
    ask = cached(FakeLLM().chat, cache=cache)
    await ask(model="gpt-4o-mini", messages=messages())
    await ask(model="gpt-4o-mini", messages=messages())
    await cache.async_flush()
    assert cache.stats()["sets"] == 1  # the answer only


async def test_the_first_hit_starts_writing_the_stored_totals_without_a_close():
    import asyncio

    from asynccache import savings

    cache = Cache(namespace="live", persist_savings=True)
    ask = cached(FakeLLM().chat, cache=cache)
    await ask(model="gpt-4o-mini", messages=messages())
    await ask(model="gpt-4o-mini", messages=messages())
    await asyncio.gather(*savings._persisting)  # the write the hit started
    stored = await savings.stored_savings(cache, "live")
    assert stored["hits"] == 1 and stored["models"]["gpt-4o-mini"]["completion_tokens"] == 29
    await cache.aclose()
