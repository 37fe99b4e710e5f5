"""The pgvector semantic store on a real PostgreSQL 18 (the session's server).

The Redis and Qdrant stores are run side by side on the same pairs of prompts: the
three must report the same similarities (float32 vectors everywhere, so equal to 1e-5).
"""

from __future__ import annotations

import pytest

from asynccache import Cache, ConfigurationError, parse_controls
from asynccache.semantic import HashEmbedder
from tests.helpers import FakeClock, chat_completion, unique
from tests.test_semantic import Fixed, chat

pytest.importorskip("pgvector")


@pytest.fixture
async def make(request, postgres_server):
    """``make(store, **settings)``: a semantic cache on ``postgres``, ``redis`` or ``qdrant``."""
    caches: list[Cache] = []

    def build(store="postgres", **settings):
        if store == "postgres":
            settings = {"url": postgres_server.url, "table": unique("sem").replace("-", "_"),
                        **settings}
            cache = Cache(type="postgres-semantic", **settings)
        elif store == "redis":
            server = request.getfixturevalue("valkey_server")
            cache = Cache(type="redis-semantic", host="127.0.0.1", port=server.port,
                          redis_semantic_cache_index_name=unique("idx"), **settings)
        else:
            pytest.importorskip("qdrant_client")
            cache = Cache(type="qdrant-semantic", qdrant_location=":memory:",
                          qdrant_collection_name=unique("col"), **settings)
        caches.append(cache)
        return cache

    yield build
    for cache in caches:
        await cache.aclose()


async def test_similar_prompt_hits_and_filters_keep_scopes_apart(make):
    cache = make(embedding=HashEmbedder(32), similarity_threshold=0.6)
    answer = chat_completion("Paris")
    assert await cache.async_store(chat("what is the capital of france"), answer) is True
    hit = await cache.async_lookup(chat("what is the capital of france please"))
    assert hit is not None and hit.value == answer
    assert 0.6 <= hit.similarity < 1
    assert hit.matched_prompt == "what is the capital of france"
    # Other model, other parameters, other namespace: never a semantic hit.
    assert await cache.async_lookup(chat("what is the capital of france please",
                                         model="gpt-4o-mini")) is None
    assert await cache.async_lookup(chat("what is the capital of france please",
                                         temperature=1.5)) is None
    other = parse_controls({"namespace": "tenant-b"})
    assert await cache.async_lookup(chat("what is the capital of france please"),
                                    controls=other) is None
    assert await cache.async_lookup(chat("how do i bake bread")) is None


async def test_threshold_is_cosine_similarity(make):
    vectors = {"stored": [1.0, 0.0], "near": [0.8, 0.6], "far": [0.0, 1.0]}
    cache = make(embedding=Fixed(vectors), similarity_threshold=0.79)
    await cache.async_store(chat("stored"), "answer")
    hit = await cache.async_lookup(chat("near"))
    assert hit is not None and hit.similarity == pytest.approx(0.8, abs=1e-6)
    assert await cache.async_lookup(chat("far")) is None
    strict = parse_controls({"similarity_threshold": 0.81})
    assert await cache.async_lookup(chat("near"), controls=strict) is None


async def test_expired_entries_never_answer(make):
    clock = FakeClock()
    cache = make(embedding=HashEmbedder(16), clock=clock)
    await cache.async_store(chat("tell me a joke"), "joke", controls=parse_controls({"ttl": 10}))
    assert await cache.async_lookup(chat("tell me a joke now")) is not None
    clock.advance(11)
    assert await cache.async_lookup(chat("tell me a joke now")) is None
    assert await cache.backend.purge() == 1


async def test_a_plain_write_drops_the_old_vector(make):
    cache = make(embedding=HashEmbedder(16))
    await cache.async_store(chat("first prompt words"), "first")
    key = cache.get_cache_key(**chat("first prompt words"))
    await cache.async_set_cache(key, "replaced")
    assert await cache.async_get_cache(key) == "replaced"
    assert await cache.async_lookup(chat("first prompt words again")) is None


async def test_an_embedder_of_another_size_is_refused(make):
    table = unique("sem").replace("-", "_")
    first = make(embedding=HashEmbedder(16), table=table)
    await first.async_store(chat("some words"), "v")
    second = make(embedding=HashEmbedder(8), table=table)
    with pytest.raises(ConfigurationError, match="16-dimensional"):
        await second.async_test_connection()


def test_a_non_postgres_url_is_refused():
    with pytest.raises(ConfigurationError, match="postgresql"):
        Cache(type="postgres-semantic", url="mysql+asyncmy://root@127.0.0.1/x",
              embedding=HashEmbedder(8))


PAIRS = [
    ("what is machine learning", "explain machine learning"),
    ("the quick brown fox", "the quick brown fox jumps"),
    ("capital of france", "capital of france and germany today"),
    ("alpha beta gamma", "gamma beta alpha delta epsilon"),
]


async def test_the_same_pairs_give_the_same_similarity_on_all_three_stores(make):
    embedder = HashEmbedder(24)
    # The guard is off: this compares the stores' similarities, not what is served.
    caches = {store: make(store, embedding=embedder, similarity_threshold=0.0,
                          semantic_guard=False)
              for store in ("postgres", "redis", "qdrant")}
    seen: dict[str, list[float]] = {}
    for store, cache in caches.items():
        sims = []
        for stored, asked in PAIRS:
            namespace = parse_controls({"namespace": unique("pair")})
            await cache.async_store(chat(stored), stored, controls=namespace)
            hit = await cache.async_lookup(chat(asked), controls=namespace)
            assert hit is not None and hit.value == stored
            sims.append(hit.similarity)
        seen[store] = sims
    assert len(set(round(s, 2) for s in seen["postgres"])) > 1  # the pairs really differ
    assert seen["postgres"] == pytest.approx(seen["redis"], abs=1e-5)
    assert seen["postgres"] == pytest.approx(seen["qdrant"], abs=1e-5)
