"""Cassettes: record, replay (no upstream call), explanations, file format, integrations."""

from __future__ import annotations

import json
import os

import pytest
from openai.types.chat import ChatCompletion

from asynccache import Cache, ConfigurationError, cached
from asynccache.backends.cassette import Cassette
from asynccache.integrations import cache_info
from asynccache.recording import (
    ReplayMissError,
    recordable_request,
    request_differences,
    scrub,
    scrub_text,
)
from tests.fake_llm import FakeLLM, messages
from tests.servers.openai_stub import OpenAIStub

SECRET = "sk-proj-Abcdefghijklmnopqrstuvwxyz0123456789"


def cassette_cache(path, mode):
    return Cache(type="cassette", path=str(path), record_mode=mode)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "cassettes" / "chat.json"


@pytest.fixture
async def stub():
    server = await OpenAIStub().start()
    yield server
    await server.stop()


# -- pure parts ------------------------------------------------------------------------


def test_differences_name_the_model_one_message_and_a_parameter():
    recorded = recordable_request({"model": "gpt-4o", "messages": messages(), "temperature": 0})
    requested = recordable_request({"model": "gpt-4o-mini", "temperature": 0.2,
                                    "messages": messages("What is the capital of Spain?")})
    found = {d.path: (d.recorded, d.requested) for d in request_differences(recorded, requested)}
    assert found == {
        "model": ("gpt-4o", "gpt-4o-mini"),
        "messages[1].content": ("What is the capital of France?", "What is the capital of Spain?"),
        "temperature": (0, 0.2),
    }


def test_a_parameter_only_one_side_has_is_shown_as_absent():
    differences = request_differences({"model": "m"}, {"model": "m", "seed": 7})
    assert [(d.path, repr(d.recorded), d.requested) for d in differences] == [
        ("seed", "(absent)", 7)]


def test_scrub_masks_secret_fields_and_secret_looking_text_but_not_token_counts():
    value = {
        "Authorization": "Bearer abcdefghijklmnop",
        "api_key": SECRET,
        "usage": {"prompt_tokens": 3, "total_tokens": 5},
        "logprobs": [{"token": "Hello", "logprob": -0.1}],
        "note": f"called https://user:pw@example.com/v1?key=AIzaSyA1234567890abcdefghijklmnopqrstu "
                f"with {SECRET} and Bearer abcdefghijklmnop",
    }
    cleaned = scrub(value)
    assert cleaned["Authorization"] == cleaned["api_key"] == "***"
    assert cleaned["usage"] == {"prompt_tokens": 3, "total_tokens": 5}
    assert cleaned["logprobs"] == [{"token": "Hello", "logprob": -0.1}]
    assert SECRET not in cleaned["note"] and "pw@" not in cleaned["note"]
    assert "AIza" not in cleaned["note"] and "abcdefghijklmnop" not in cleaned["note"]
    assert scrub_text("plain text stays") == "plain text stays"


def test_recorded_requests_leave_credentials_and_transport_out():
    request = recordable_request({
        "model": "gpt-4o", "messages": messages(), "api_key": SECRET,
        "extra_headers": {"Authorization": "Bearer " + SECRET}, "base_url": "https://x/v1",
    })
    assert request == {"model": "gpt-4o", "messages": messages()}


def test_an_unknown_record_mode_is_refused_by_name(path):
    with pytest.raises(ConfigurationError, match="record mode must be one of"):
        cassette_cache(path, "rewind")
    with pytest.raises(ConfigurationError, match="needs path="):
        Cache(type="cassette")


# -- cached() ---------------------------------------------------------------------------


async def test_record_then_replay_makes_no_upstream_call(path):
    llm = FakeLLM()
    cache = cassette_cache(path, "record")
    recorded = await cached(llm.chat, cache=cache)(model="gpt-4o", messages=messages(),
                                                   api_key=SECRET)
    await cache.aclose()
    assert llm.chat_calls == 1

    replayer = FakeLLM()
    cache = cassette_cache(path, "replay")
    replayed = await cached(replayer.chat, cache=cache)(model="gpt-4o", messages=messages())
    assert replayer.chat_calls == 0
    assert type(replayed) is ChatCompletion
    assert replayed.model_dump() == recorded.model_dump()
    assert cache_info(replayed).cache_hit is True
    assert cache_info(replayed).backend == "cassette"
    await cache.aclose()


async def test_a_replay_miss_fails_before_upstream_and_explains_the_difference(path):
    cache = cassette_cache(path, "record")
    llm = FakeLLM()
    await cached(llm.chat, cache=cache)(model="gpt-4o", messages=messages(), temperature=0)
    await cached(llm.chat, cache=cache)(model="gpt-4o", messages=messages("Unrelated?"))
    await cache.aclose()

    replayer = FakeLLM()
    cache = cassette_cache(path, "replay")
    with pytest.raises(ReplayMissError) as caught:
        await cached(replayer.chat, cache=cache)(
            model="gpt-4o-mini", messages=messages("What is the capital of Spain?"),
            temperature=0.2)
    assert replayer.chat_calls == 0
    text = str(caught.value)
    assert f"cassette {path} (mode replay)" in text
    assert "2 recorded requests" in text
    assert "differs in 3 fields" in text
    assert "model: recorded 'gpt-4o', requested 'gpt-4o-mini'" in text
    assert ("messages[1].content: recorded 'What is the capital of France?', requested "
            "'What is the capital of Spain?'") in text
    assert "temperature: recorded 0, requested 0.2" in text
    assert "--llm-cache-mode=new_episodes" in text
    explanation = caught.value.explanation
    assert explanation.nearest is not None and explanation.found is False
    await cache.aclose()


async def test_replay_of_a_missing_cassette_says_it_does_not_exist(path):
    cache = cassette_cache(path, "replay")
    with pytest.raises(ReplayMissError, match="does not exist yet"):
        await cached(FakeLLM().chat, cache=cache)(model="gpt-4o", messages=messages())
    await cache.aclose()
    assert not path.exists()  # replay never writes


async def test_new_episodes_keeps_recordings_and_adds_what_is_missing(path):
    cache = cassette_cache(path, "record")
    await cached(FakeLLM().chat, cache=cache)(model="gpt-4o", messages=messages())
    await cache.aclose()
    llm = FakeLLM()
    cache = cassette_cache(path, "new_episodes")
    wrapped = cached(llm.chat, cache=cache)
    await wrapped(model="gpt-4o", messages=messages())
    await wrapped(model="gpt-4o", messages=messages("new question"))
    await cache.aclose()
    assert llm.chat_calls == 1
    entries = json.loads(path.read_text())["entries"]
    assert len(entries) == 2


async def test_record_starts_empty_so_unused_recordings_disappear(path):
    cache = cassette_cache(path, "record")
    await cached(FakeLLM().chat, cache=cache)(model="gpt-4o", messages=messages("old"))
    await cache.aclose()
    cache = cassette_cache(path, "record")
    llm = FakeLLM()
    wrapped = cached(llm.chat, cache=cache)
    await wrapped(model="gpt-4o", messages=messages("new"))
    await wrapped(model="gpt-4o", messages=messages("new"))  # answered from this run
    await cache.aclose()
    assert llm.chat_calls == 1
    entries = json.loads(path.read_text())["entries"]
    assert [e["request"]["messages"][1]["content"] for e in entries] == ["new"]


async def test_recording_nothing_leaves_an_empty_cassette_not_a_stale_one(path):
    cache = cassette_cache(path, "record")
    await cached(FakeLLM().chat, cache=cache)(model="gpt-4o", messages=messages("old"))
    await cache.aclose()
    cache = cassette_cache(path, "record")
    await cache.aclose()  # this run made no call
    assert json.loads(path.read_text())["entries"] == []


async def test_off_mode_goes_upstream_and_writes_nothing(path):
    llm = FakeLLM()
    cache = cassette_cache(path, "off")
    wrapped = cached(llm.chat, cache=cache)
    await wrapped(model="gpt-4o", messages=messages())
    await wrapped(model="gpt-4o", messages=messages())
    await cache.aclose()
    assert llm.chat_calls == 2
    assert not path.exists()


async def test_the_file_is_stable_whatever_the_argument_and_dict_order(tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    for target, order in ((first, 1), (second, -1)):
        cache = cassette_cache(target, "record")
        llm = FakeLLM(as_dict=True)

        async def answer(llm=llm, **call):
            data = await llm.chat(**call)
            return {**data, "id": "chatcmpl-" + call["messages"][-1]["content"]}

        wrapped = cached(answer, cache=cache)
        calls = [
            {"model": "gpt-4o", "messages": messages("one"), "temperature": 0, "seed": 1},
            {"model": "gpt-4o", "messages": messages("two"), "top_p": 0.5},
        ][::order]
        for call in calls:
            call = dict(reversed(list(call.items()))) if order < 0 else call
            await wrapped(**call)
        await cache.aclose()
    assert first.read_bytes() == second.read_bytes()
    text = first.read_text(encoding="utf-8")
    assert text.endswith("}\n") and "\n  \"entries\": [\n" in text
    assert "«one»" in text  # UTF-8, not escapes
    keys = [entry["key"] for entry in json.loads(text)["entries"]]
    assert keys == sorted(keys)


async def test_no_secret_reaches_the_file(path):
    llm = FakeLLM(as_dict=True)
    cache = cassette_cache(path, "record")
    wrapped = cached(llm.chat, cache=cache)
    await wrapped(model="gpt-4o", api_key=SECRET,
                  extra_headers={"Authorization": "Bearer " + SECRET},
                  base_url="https://proxy.example/v1?token=hunter2hunter2",
                  messages=messages(f"my key is {SECRET}, keep it"))
    await cache.aclose()
    text = path.read_text()
    assert SECRET not in text and "hunter2" not in text and "Bearer" not in text
    assert "my key is ***, keep it" in text


async def test_bytes_and_floats_round_trip_exactly(path):
    cache = cassette_cache(path, "record")
    value = {"vector": [0.1, 1 / 3, 1e-300, -2.5e17], "raw": "é"}
    await cache.async_set_cache("floats", value)
    await cache.async_set_cache("blob", b"\x00\xffbinary")
    await cache.aclose()
    cache = cassette_cache(path, "replay")
    assert await cache.async_get_cache("floats") == value
    assert await cache.async_get_cache("blob") == b"\x00\xffbinary"
    await cache.aclose()


async def test_streams_replay_their_recorded_chunks(path):
    llm = FakeLLM()
    cache = cassette_cache(path, "record")
    stream = await cached(llm.chat, cache=cache)(model="gpt-4o", messages=messages(),
                                                 stream=True)
    live = [chunk.model_dump() async for chunk in stream]
    await cache.aclose()
    replayer = FakeLLM()
    cache = cassette_cache(path, "replay")
    wrapped = cached(replayer.chat, cache=cache)
    stream = await wrapped(model="gpt-4o", messages=messages(), stream=True)
    replayed = [chunk.model_dump() async for chunk in stream]
    assert replayer.chat_calls == 0
    assert len(live) > 20 and replayed == live  # the same chunk boundaries, not re-cut
    plain = await wrapped(model="gpt-4o", messages=messages())  # a stream answers a plain call
    assert plain.choices[0].message.content == live[1]["choices"][0]["delta"]["content"] + \
        "".join(c["choices"][0]["delta"].get("content") or "" for c in live[2:] if c["choices"])
    await cache.aclose()


async def test_embeddings_replay_per_input_with_their_vectors(path):
    llm = FakeLLM()
    cache = cassette_cache(path, "record")
    first = await cached(llm.embed, cache=cache, call_type="embedding")(
        model="text-embedding-3-small", input=["alpha", "beta", "gamma"])
    await cache.aclose()
    replayer = FakeLLM()
    cache = cassette_cache(path, "replay")
    embed = cached(replayer.embed, cache=cache, call_type="embedding")
    again = await embed(model="text-embedding-3-small", input=["gamma", "alpha"])
    assert replayer.embed_calls == 0
    assert [d.embedding for d in again.data] == [first.data[2].embedding, first.data[0].embedding]
    with pytest.raises(ReplayMissError) as caught:
        await embed(model="text-embedding-3-small", input=["alpha", "delta"])
    assert replayer.embed_calls == 0
    assert "input: recorded 'alpha', requested 'delta'" in str(caught.value) or \
        "requested 'delta'" in str(caught.value)
    await cache.aclose()


# -- the OpenAI SDK against a local HTTP server ----------------------------------------


async def test_openai_sdk_recipe_records_and_replays_without_touching_the_server(stub, path):
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=stub.base_url, api_key=SECRET, max_retries=0)
    cache = cassette_cache(path, "record")
    create = cached(client.chat.completions.create, cache=cache)
    recorded = await create(model="gpt-4o-mini", messages=messages(), temperature=0)
    stream = await create(model="gpt-4o-mini", messages=messages("stream me"), stream=True)
    streamed = [chunk async for chunk in stream]
    await cache.aclose()
    assert stub.calls == 2
    assert stub.headers[0]["Authorization"] == f"Bearer {SECRET}"  # the SDK did send it
    text = path.read_text()
    assert SECRET not in text and "Authorization" not in text and "127.0.0.1" not in text

    cache = cassette_cache(path, "replay")
    create = cached(client.chat.completions.create, cache=cache)
    replayed = await create(model="gpt-4o-mini", messages=messages(), temperature=0)
    stream = await create(model="gpt-4o-mini", messages=messages("stream me"), stream=True)
    restreamed = [chunk async for chunk in stream]
    assert stub.calls == 2  # the server saw nothing more
    assert replayed.model_dump() == recorded.model_dump()
    assert [c.model_dump() for c in restreamed] == [c.model_dump() for c in streamed]
    with pytest.raises(ReplayMissError, match="temperature: recorded 0, requested 1"):
        await create(model="gpt-4o-mini", messages=messages(), temperature=1)
    assert stub.calls == 2
    await cache.aclose()
    await client.close()


# -- LiteLLM and LangChain ---------------------------------------------------------------


@pytest.fixture
def litellm_module(monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    yield litellm
    litellm.disable_cache()


async def test_litellm_replays_from_a_cassette_and_a_miss_is_not_swallowed(
        stub, path, litellm_module):
    litellm = litellm_module
    from asynccache.integrations.litellm import as_litellm_cache

    call = {"model": "openai/gpt-4o-mini", "api_base": stub.base_url, "api_key": SECRET}
    cache = cassette_cache(path, "record")
    litellm.cache = as_litellm_cache(cache)
    first = await litellm.acompletion(messages=messages(), **call)
    await _until(lambda: len(cache.backend) == 1)
    await cache.aclose()
    assert stub.calls == 1
    text = path.read_text()
    assert SECRET not in text and '"openai/gpt-4o-mini"' in text

    cache = cassette_cache(path, "replay")
    litellm.cache = as_litellm_cache(cache)
    again = await litellm.acompletion(messages=messages(), **call)
    assert stub.calls == 1
    assert again._hidden_params.get("cache_hit") is True
    assert again.choices[0].message.content == first.choices[0].message.content
    with pytest.raises(ReplayMissError) as caught:
        await litellm.acompletion(messages=messages("Capital of Peru?"), **call)
    assert stub.calls == 1
    assert "messages[1].content: recorded 'What is the capital of France?'" in str(caught.value)
    await cache.aclose()


async def _until(condition, attempts: int = 2000) -> None:
    # LiteLLM writes its cache entry in a background task: let the loop run until it has.
    import asyncio

    for _ in range(attempts):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("LiteLLM never wrote its cache entry")


async def test_langchain_adapter_replays_and_explains(path):
    from langchain_core.globals import set_llm_cache
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from asynccache.integrations.langchain import AsyncCacheLangChain

    cache = cassette_cache(path, "record")
    set_llm_cache(AsyncCacheLangChain(cache))
    try:
        model = FakeListChatModel(responses=["Paris"])
        assert (await model.ainvoke("Capital of France?")).content == "Paris"
        await cache.aclose()
        cache = cassette_cache(path, "replay")
        set_llm_cache(AsyncCacheLangChain(cache))
        silent = FakeListChatModel(responses=["Paris"])  # a new instance: i counts its calls
        assert (await silent.ainvoke("Capital of France?")).content == "Paris"
        assert silent.i == 0  # the model was never called
        with pytest.raises(ReplayMissError) as caught:
            await silent.ainvoke("Capital of Spain?")
        assert ("prompt[0].kwargs.content: recorded 'Capital of France?', requested "
                "'Capital of Spain?'") in str(caught.value)
        assert silent.i == 0
    finally:
        set_llm_cache(None)
        await cache.aclose()


# -- explain_miss on other backends ------------------------------------------------------


async def test_explain_miss_needs_stored_requests():
    cache = Cache()
    with pytest.raises(Exception, match="record_requests=True"):
        await cache.async_explain_miss({"model": "gpt-4o", "messages": messages()})
    await cache.aclose()


async def test_explain_miss_on_a_memory_cache_with_recorded_requests():
    cache = Cache(record_requests=True)
    wrapped = cached(FakeLLM().chat, cache=cache)
    await wrapped(model="gpt-4o", messages=messages(), temperature=0)
    await wrapped(model="gpt-4o", messages=messages("Something else entirely"), max_tokens=5)
    explanation = await cache.async_explain_miss(
        {"model": "gpt-4o", "messages": messages(), "temperature": 0.7})
    assert not explanation.found and explanation.recorded == 2
    assert [(d.path, d.recorded, d.requested) for d in explanation.differences] == [
        ("temperature", 0, 0.7)]
    hit = cache.explain_miss({"model": "gpt-4o", "messages": messages(), "temperature": 0})
    assert hit.found and "has a stored answer" in str(hit)
    await cache.aclose()


def test_record_requests_rejects_a_bad_limit():
    with pytest.raises(ConfigurationError, match="record_requests"):
        Cache(record_requests=0)


def test_cassette_refuses_a_file_that_is_not_a_cassette(tmp_path):
    target = tmp_path / "x.json"
    target.write_text('{"hello": 1}')
    with pytest.raises(ConfigurationError, match="not an asynccache cassette"):
        Cassette(target, "replay")
    target.write_text('{"format": "asynccache-cassette-1", "entries": [{"value": 1}]}')
    with pytest.raises(ConfigurationError, match="entry 0 needs a 'key' and a 'value'"):
        Cassette(target, "replay")
    target.write_text("{not json")
    with pytest.raises(ConfigurationError, match="not readable"):
        Cassette(target, "new_episodes")
    assert os.path.getsize(target) == len("{not json")


# -- asynccache explain ------------------------------------------------------------------


def test_cli_explain_names_the_differences_in_a_cassette(path, tmp_path):
    import io

    from asynccache import cached_sync
    from asynccache.cli import main

    cache = cassette_cache(path, "record")
    cached_sync(FakeLLM().chat, cache=cache)(model="gpt-4o", messages=messages(), seed=3)
    cache.close()
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"model": "gpt-4o", "messages": messages(), "seed": 4}))
    out, err = io.StringIO(), io.StringIO()
    code = main(["explain", str(request), "--type", "cassette", "--set", f"path={path}"],
                stdout=out, stderr=err)
    assert code == 1, err.getvalue()
    assert "seed: recorded 3, requested 4" in out.getvalue()

    out = io.StringIO()
    code = main(["explain", "-", "--json", "--type", "cassette", "--set", f"path={path}"],
                stdin=io.StringIO(json.dumps({"model": "gpt-4o", "messages": messages(),
                                              "seed": 3})), stdout=out, stderr=err)
    assert code == 0 and json.loads(out.getvalue())["found"] is True

    code = main(["explain", "-", "--type", "local"], stdin=io.StringIO("[1]"),
                stdout=out, stderr=err)
    assert code == 2 and "must be a JSON object" in err.getvalue()


async def test_no_cache_calls_are_replayed_too(path):
    cache = cassette_cache(path, "record")
    await cached(FakeLLM().chat, cache=cache)(model="gpt-4o", messages=messages())
    await cache.aclose()
    replayer = FakeLLM()
    cache = cassette_cache(path, "replay")
    ask = cached(replayer.chat, cache=cache)
    answer = await ask(model="gpt-4o", messages=messages(), cache={"no-cache": True})
    assert replayer.chat_calls == 0 and cache_info(answer).cache_hit is True
    with pytest.raises(ReplayMissError):
        await ask(model="gpt-4o", messages=messages("new"), cache={"no-cache": True})
    assert replayer.chat_calls == 0
    await cache.aclose()
