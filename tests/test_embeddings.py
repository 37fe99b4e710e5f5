"""Embedders and the pure semantic logic: what is embedded, what is filtered, scoring."""

from __future__ import annotations

import asyncio
import math
import threading
from types import SimpleNamespace

import pytest

from asynccache import ConfigurationError
from asynccache.keys import stored_key_prefix
from asynccache.semantic import (
    EmbedWhat,
    HashEmbedder,
    LiteLLMEmbedder,
    LocalEmbedder,
    OpenAIEmbedder,
    SemanticEmbedder,
    SemanticSettings,
    ThreadedEmbedder,
    resolve_embedding,
)
from asynccache.semantic.base import (
    filter_hash,
    parse_embed_what,
    similarity_from_cosine_distance,
    similarity_from_cosine_score,
    split_request,
)


def chat(text, model="gpt-4o", system=None, **params):
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    return {"model": model, "messages": messages, **params}


def fh(request, prefix="", embed_what=EmbedWhat.last_user_message):
    text, rest = split_request(request, embed_what)
    return text, filter_hash(rest, prefix)


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


# -- what is embedded and what is filtered ----------------------------------------------


def test_last_user_message_is_embedded_and_the_rest_is_the_filter():
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "What is machine learning?"}]},
    ]
    text, rest = split_request({"model": "gpt-4o", "messages": history},
                               EmbedWhat.last_user_message)
    assert text == "What is machine learning?"
    assert rest["messages"][:3] == history[:3]  # earlier turns stay exact
    assert rest["messages"][3]["content"] != history[3]["content"]


def test_paraphrases_share_a_filter_and_everything_else_splits_it():
    text_a, base = fh(chat("What is machine learning?", temperature=0.2))
    text_b, same = fh(chat("Explain machine learning", temperature=0.2, api_key="sk-x"))
    assert (text_a, text_b) == ("What is machine learning?", "Explain machine learning")
    assert base == same  # credentials never split the filter
    others = [
        fh(chat("Explain machine learning", model="gpt-4o-mini", temperature=0.2))[1],
        fh(chat("Explain machine learning", temperature=0.9))[1],
        fh(chat("Explain machine learning", temperature=0.2, tools=[{"type": "function"}]))[1],
        fh(chat("Explain machine learning", temperature=0.2, system="Answer in French"))[1],
        fh(chat("Explain machine learning", temperature=0.2), prefix="tenant-b:")[1],
    ]
    assert len({base, *others}) == 6


@pytest.mark.parametrize(("embed_what", "request_", "expected"), [
    (EmbedWhat.all_messages, chat("Explain ML", system="Be brief."),
     "system: Be brief.\nuser: Explain ML"),
    (EmbedWhat.prompt, {"model": "m", "prompt": "Once upon a time"}, "Once upon a time"),
    (EmbedWhat.input, {"model": "m", "input": ["first", "second"]}, "first\nsecond"),
    (EmbedWhat.last_user_message, {"model": "m", "prompt": "fallback"}, "fallback"),
])
def test_embed_what_choices(embed_what, request_, expected):
    assert split_request(request_, embed_what)[0] == expected


def test_all_messages_filter_ignores_the_conversation_text():
    a = fh(chat("Explain ML", system="Be brief."), embed_what=EmbedWhat.all_messages)[1]
    b = fh(chat("What is ML?", system="Be short."), embed_what=EmbedWhat.all_messages)[1]
    assert a == b


def test_request_without_text_is_not_embedded():
    assert split_request({"model": "m", "messages": [{"role": "assistant", "content": "x"}]},
                         EmbedWhat.last_user_message)[0] is None
    assert split_request({"model": "m", "messages": [{"role": "user", "content": "  "}]},
                         EmbedWhat.last_user_message)[0] is None


def test_embed_what_and_threshold_validation():
    assert parse_embed_what("messages") is EmbedWhat.all_messages
    with pytest.raises(ConfigurationError, match="embed_what"):
        parse_embed_what("everything")
    for bad in (1.5, -0.1, True, "0.8", float("nan")):
        with pytest.raises(ConfigurationError, match="similarity_threshold"):
            SemanticSettings(similarity_threshold=bad, embedding=HashEmbedder())
    settings = SemanticSettings(similarity_threshold=0.7, embedding=HashEmbedder())
    assert settings.threshold(None) == 0.7
    assert settings.threshold(0.95) == 0.95
    with pytest.raises(ConfigurationError):
        settings.threshold(2)


def test_distance_and_score_convert_to_the_same_similarity():
    for cos in (1.0, 0.8, 0.25, 0.0):
        assert similarity_from_cosine_distance(1 - cos) == pytest.approx(cos)
        assert similarity_from_cosine_score(cos) == pytest.approx(cos)
    assert similarity_from_cosine_distance(1.6) == 0.0  # opposite vectors: never a hit
    assert similarity_from_cosine_distance(-1e-7) == 1.0  # float32 rounding


def test_namespace_head_identifies_namespace_prefixes():
    assert stored_key_prefix("ns:abc") == "ns:"
    assert stored_key_prefix("ns:a:b") == "ns:"
    assert stored_key_prefix("plain") == ""
    assert stored_key_prefix(":a:b") == ""  # a namespace-less key that holds a colon


# -- the SemanticEmbedder wrapper -------------------------------------------------------


class CountingEmbedder:
    def __init__(self, dimension=4):
        self.dimension = dimension
        self.seen: list[list[str]] = []

    async def __call__(self, texts):
        self.seen.append(list(texts))
        return [[float(len(t)), 1.0] + [0.0] * (self.dimension - 2) for t in texts]


async def test_vectors_are_normalised_and_reused_from_the_lru():
    inner = CountingEmbedder()
    embedder = SemanticEmbedder(inner, lru_size=2)
    first = await embedder.embed(["abc", "abc", "de"])
    assert inner.seen == [["abc", "de"]]  # duplicates embedded once
    assert all(math.isclose(cosine(v, v), 1.0) for v in first)
    assert await embedder.embed_one("abc") == first[0]
    assert inner.seen == [["abc", "de"]]  # served from the LRU
    await embedder.embed(["x", "y"])  # evicts both earlier texts (size 2)
    await embedder.embed_one("abc")
    assert inner.seen[-1] == ["abc"]


async def test_wrong_dimension_or_count_raises_naming_both():
    embedder = SemanticEmbedder(CountingEmbedder(4), dimension=8)
    with pytest.raises(ConfigurationError, match="dimension 4, expected 8"):
        await embedder.embed_one("text")

    async def too_few(texts):
        return [[1.0, 0.0]]

    with pytest.raises(ConfigurationError, match="1 vectors for 2 texts"):
        await SemanticEmbedder(too_few).embed(["a", "b"])

    async def zero(texts):
        return [[0.0, 0.0] for _ in texts]

    with pytest.raises(ConfigurationError, match="zero"):
        await SemanticEmbedder(zero).embed(["a"])


async def test_learned_dimension_is_enforced_afterwards():
    calls = iter([[[1.0, 0.0, 0.0]], [[1.0, 0.0]]])

    async def drifting(texts):
        return next(calls)

    embedder = SemanticEmbedder(drifting)
    await embedder.embed_one("first")
    assert embedder.dimension == 3
    with pytest.raises(ConfigurationError, match="dimension 2, expected 3"):
        await embedder.embed_one("second")


# -- adapters ---------------------------------------------------------------------------


async def test_sync_callable_runs_in_a_worker_thread():
    threads: list[int] = []

    def embed(texts):
        threads.append(threading.get_ident())
        return [[1.0, 2.0] for _ in texts]

    adapter = resolve_embedding(embed)
    assert isinstance(adapter, ThreadedEmbedder)
    assert await adapter(["a"]) == [[1.0, 2.0]]
    assert threads and threads[0] != threading.get_ident()


async def test_async_callable_is_used_as_is():
    async def embed(texts):
        return [[1.0] for _ in texts]

    assert resolve_embedding(embed) is embed


class FakeAsyncEmbeddings:
    def __init__(self):
        self.calls = []

    async def create(self, **kwargs):
        self.calls.append(kwargs)
        # Out of order on purpose: the adapter must sort by index.
        data = [SimpleNamespace(index=i, embedding=[float(i), 1.0])
                for i in range(len(kwargs["input"]))][::-1]
        return SimpleNamespace(data=data)


async def test_openai_client_adapter_passes_model_and_keeps_order():
    client = SimpleNamespace(embeddings=FakeAsyncEmbeddings())
    adapter = resolve_embedding("text-embedding-3-small", openai_client=client,
                                embedding_kwargs={"dimensions": 2})
    assert isinstance(adapter, OpenAIEmbedder)
    assert await adapter(["a", "b", "c"]) == [[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]]
    assert client.embeddings.calls == [
        {"model": "text-embedding-3-small", "input": ["a", "b", "c"], "dimensions": 2}
    ]


async def test_sync_openai_client_runs_in_a_thread():
    threads: list[int] = []

    class SyncEmbeddings:
        def create(self, **kwargs):
            threads.append(threading.get_ident())
            return {"data": [{"index": 0, "embedding": [3.0, 4.0]}]}

    adapter = OpenAIEmbedder(SimpleNamespace(embeddings=SyncEmbeddings()), "m")
    assert await adapter(["a"]) == [[3.0, 4.0]]
    assert threads[0] != threading.get_ident()


async def test_litellm_adapter_calls_aembedding(monkeypatch):
    # Keep litellm offline: no fetch of its remote model cost map at import.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm = pytest.importorskip("litellm")
    seen = {}

    async def fake_aembedding(**kwargs):
        seen.update(kwargs)
        return {"data": [{"index": 0, "embedding": [0.5, 0.5]}]}

    monkeypatch.setattr(litellm, "aembedding", fake_aembedding)
    adapter = resolve_embedding("text-embedding-3-small", embedding_kwargs={"api_key": "sk-1"})
    assert isinstance(adapter, LiteLLMEmbedder)
    assert "sk-1" not in repr(adapter)
    assert await adapter(["hello"]) == [[0.5, 0.5]]
    assert seen == {"model": "text-embedding-3-small", "input": ["hello"], "api_key": "sk-1"}


def test_bad_embedding_settings_raise():
    with pytest.raises(ConfigurationError, match="embedding must be"):
        resolve_embedding(42)
    with pytest.raises(ConfigurationError, match="openai_client"):
        resolve_embedding(lambda texts: texts, openai_client=object())
    with pytest.raises(ConfigurationError, match=r"embeddings\.create"):
        OpenAIEmbedder(object(), "m")


async def test_hash_embedder_is_deterministic_and_word_based():
    a, b = HashEmbedder(32), HashEmbedder(32)
    va, vb = (await a(["Bake bread today"]))[0], (await b(["bake BREAD today"]))[0]
    assert va == vb
    other = (await a(["quantum chromodynamics lecture"]))[0]
    assert other != va


# -- the local offline model ------------------------------------------------------------


@pytest.fixture(scope="module")
def local_embedder():
    pytest.importorskip("onnxruntime")
    return LocalEmbedder()


async def test_local_model_ranks_a_paraphrase_above_an_unrelated_prompt(local_embedder):
    embedder = SemanticEmbedder(local_embedder)
    ml, paraphrase, bread = await embedder.embed(
        ["What is machine learning?", "Explain machine learning", "How do I bake bread?"])
    assert embedder.dimension == 384
    assert cosine(ml, paraphrase) > 0.8 > 0.3 > cosine(ml, bread)


async def test_local_model_runs_off_the_loop_and_is_batch_independent(local_embedder):
    threads: list[int] = []

    class Recording(LocalEmbedder):
        def embed_sync(self, texts):
            threads.append(threading.get_ident())
            return super().embed_sync(texts)

    recording = Recording()
    alone = (await recording(["What is machine learning?"]))[0]
    batched = (await recording(["a much longer sentence about cooking pasta tonight",
                                "What is machine learning?"]))[1]
    assert threads and threading.get_ident() not in threads
    assert alone == pytest.approx(batched, abs=1e-6)


async def test_local_model_loads_once_under_concurrency(local_embedder):
    from asynccache.semantic import embeddings

    results = await asyncio.gather(*(LocalEmbedder()(["same text"]) for _ in range(4)))
    assert all(r == results[0] for r in results)
    assert len(embeddings._local_models) == 1
