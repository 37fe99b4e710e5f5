"""Semantic caches on a real valkey-server with RediSearch, embedded Qdrant and local-semantic.

Exact-key behaviour is in the contract suite (tests/plugins/semantic.py); this file checks
the similarity side: real local model hits and misses, scope filters, one threshold
meaning for both stores, embedding off the loop, TTL, dimension checks and errors.
"""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

from asynccache import Cache, CacheConnectionError, ConfigurationError, parse_controls
from asynccache.semantic import HashEmbedder, LocalEmbedder
from tests.helpers import FakeClock, chat_completion, unique
from tests.servers.processes import free_port

pytest.importorskip("qdrant_client")

STORES = ["redis", "qdrant", "local"]


def chat(text, model="gpt-4o", **params):
    return {"model": model, "messages": [{"role": "user", "content": text}], **params}


@pytest.fixture
async def make(request, tmp_path):
    """``make(store, **settings)``: a semantic Cache on that store, closed at teardown."""
    caches: list[Cache] = []

    def build(store, **settings):
        if store == "redis":
            server = request.getfixturevalue("valkey_server")
            settings = {"host": "127.0.0.1", "port": server.port,
                        "redis_semantic_cache_index_name": unique("idx"), **settings}
            cache = Cache(type="redis-semantic", **settings)
        elif store == "local":
            settings = {"disk_cache_dir": str(tmp_path / unique("local")), **settings}
            cache = Cache(type="local-semantic", **settings)
        else:
            settings = {"qdrant_location": ":memory:",
                        "qdrant_collection_name": unique("col"), **settings}
            cache = Cache(type="qdrant-semantic", **settings)
        caches.append(cache)
        return cache

    yield build
    for cache in caches:
        await cache.aclose()


class Fixed:
    """Maps known texts to fixed 2-d vectors: exact control over cosine similarity."""

    dimension = 2

    def __init__(self, vectors):
        self.vectors = vectors

    async def __call__(self, texts):
        return [self.vectors[t] for t in texts]


# -- the real local model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def local():
    pytest.importorskip("onnxruntime")
    return LocalEmbedder()


@pytest.mark.parametrize("store", STORES)
async def test_local_model_hits_paraphrases_and_misses_everything_else(make, local, store):
    cache = make(store, embedding=local, similarity_threshold=0.8)
    answer = chat_completion("Machine learning is ...")
    assert await cache.async_store(chat("What is machine learning?"), answer) is True

    hit = await cache.async_lookup(chat("Explain machine learning"))
    assert hit is not None and hit.value == answer
    assert 0.8 <= hit.similarity < 1
    assert hit.matched_prompt == "What is machine learning?"

    assert await cache.async_lookup(chat("How do I bake bread?")) is None
    assert await cache.async_lookup(chat("Explain machine learning", model="gpt-4o-mini")) is None
    assert await cache.async_lookup(chat("Explain machine learning", temperature=1.5)) is None
    tenant_b = parse_controls({"namespace": "tenant-b"})
    assert await cache.async_lookup(chat("Explain machine learning"), controls=tenant_b) is None

    # The same store, seen by tenant b, gets its own answers only.
    other = chat_completion("tenant b's answer")
    await cache.async_store(chat("What is machine learning?"), other, controls=tenant_b)
    hit_b = await cache.async_lookup(chat("Explain machine learning"), controls=tenant_b)
    assert hit_b is not None and hit_b.value == other
    hit_a = await cache.async_lookup(chat("Explain machine learning"))
    assert hit_a is not None and hit_a.value == answer


@pytest.mark.parametrize("store", STORES)
async def test_embedding_runs_off_the_loop_and_the_lookup_vector_is_reused(make, store):
    threads: list[int] = []

    class Recording(LocalEmbedder):
        def embed_sync(self, texts):
            threads.append(threading.get_ident())
            return super().embed_sync(texts)

    pytest.importorskip("onnxruntime")
    cache = make(store, embedding=Recording())
    request = chat(f"What is the capital of France? ({unique()})")
    assert await cache.async_lookup(request) is None  # miss: embeds once
    await cache.async_store(request, {"answer": "Paris"})  # reuses that vector
    assert cache.backend.semantic.embedder.texts_embedded == 1
    assert len(threads) == 1 and threads[0] != threading.get_ident()
    assert (await cache.async_lookup(request)).value == {"answer": "Paris"}  # exact hit


@pytest.mark.parametrize("store", STORES)
async def test_per_call_threshold_override(make, local, store):
    cache = make(store, embedding=local, similarity_threshold=0.8)
    await cache.async_store(chat("What is machine learning?"), "ML")
    strict = parse_controls({"similarity-threshold": 0.95})
    assert await cache.async_lookup(chat("Explain machine learning"), controls=strict) is None
    loose = parse_controls({"similarity-threshold": 0.5})
    hit = await cache.async_lookup(chat("Explain machine learning"), controls=loose)
    assert hit is not None and hit.value == "ML"


# -- one threshold meaning for both stores ----------------------------------------------


def _vectors(cos):
    return {"stored": [1.0, 0.0], "query": [cos, math.sqrt(1 - cos * cos)],
            "opposite": [-1.0, 0.0]}


@pytest.mark.parametrize("cos", [0.9, 0.6, 0.3])
async def test_threshold_means_the_same_cosine_similarity_on_both_stores(make, cos):
    seen = {}
    for store in STORES:
        cache = make(store, embedding=Fixed(_vectors(cos)), similarity_threshold=0.0)
        await cache.async_store(chat("stored"), "v")
        backend = cache.backend
        found = await backend.search_similar(chat("query"), prefix="", threshold=0.0)
        assert found is not None
        seen[store] = found[1]
        above = parse_controls({"similarity-threshold": cos - 0.01})
        below = parse_controls({"similarity-threshold": min(1.0, cos + 0.01)})
        assert (await cache.async_lookup(chat("query"), controls=above)).similarity == \
            pytest.approx(cos, abs=1e-5)
        assert await cache.async_lookup(chat("query"), controls=below) is None
        # An opposite vector has cosine -1: similarity 0, a miss even at threshold 0.01.
        low = parse_controls({"similarity-threshold": 0.01})
        assert await cache.async_lookup(chat("opposite"), controls=low) is None
    assert seen["redis"] == pytest.approx(cos, abs=1e-5)
    assert seen["qdrant"] == pytest.approx(cos, abs=1e-5)
    assert seen["local"] == pytest.approx(cos, abs=1e-5)


# -- TTL --------------------------------------------------------------------------------


async def test_redis_entries_expire_in_redis_and_in_the_envelope(make):
    clock = FakeClock()
    cache = make("redis", embedding=HashEmbedder(16), clock=clock)
    await cache.async_store(chat("how long do entries live"), "v", controls=parse_controls(
        {"ttl": 30}))
    backend = cache.backend
    client = await backend._clients.get()
    names = [name async for name in client.scan_iter(match=backend.key_prefix + "*")]
    assert len(names) == 1
    assert 0 < await client.pttl(names[0]) <= 30_000  # Redis drops it (and its vector)
    assert (await cache.async_lookup(chat("how long do entries live ?"))).value == "v"
    clock.advance(31)
    assert await cache.async_lookup(chat("how long do entries live ?")) is None


async def test_qdrant_filters_expired_points_and_purges_them_in_the_background(make):
    clock = FakeClock()
    cache = make("qdrant", embedding=HashEmbedder(16), clock=clock, purge_interval=60)
    backend = cache.backend
    short = parse_controls({"ttl": 30})
    await cache.async_store(chat("short lived entry"), "short", controls=short)
    await cache.async_store(chat("long lived entry"), "long", controls=parse_controls(
        {"ttl": 3600}))
    assert (await backend.search_similar(chat("short lived entry ?"), prefix="",
                                         threshold=0.8))[0] is not None
    clock.advance(31)
    # The query itself filters on expires_at: the backend returns nothing, not a stale hit.
    assert await backend.search_similar(chat("short lived entry ?"), prefix="",
                                        threshold=0.8) is None
    assert await backend.search_similar(chat("long lived entry ?"), prefix="",
                                        threshold=0.8) is not None
    clock.advance(60)
    await cache.async_store(chat("a later write"), "w")  # schedules the purge
    assert len(backend._tasks) == 1
    await asyncio.gather(*backend._tasks)
    assert backend.purged == 1
    client = await backend._client()
    assert (await client.count(backend.collection)).count == 2


# -- index / collection management and errors -------------------------------------------


async def test_redis_index_schema_and_dimension_mismatch(make, valkey_server):
    index = unique("idx")
    first = make("redis", embedding=HashEmbedder(16), redis_semantic_cache_index_name=index)
    await first.async_store(chat("hello there"), "v")
    client = await first.backend._clients.get()
    info = await client.execute_command("FT.INFO", index)
    vector = next(a for a in info[b"attributes"] if a[b"type"] == b"VECTOR")
    assert (vector[b"algorithm"], vector[b"distance_metric"], vector[b"data_type"],
            vector[b"dim"]) == (b"HNSW", b"COSINE", b"FLOAT32", 16)
    assert {a[b"identifier"] for a in info[b"attributes"] if a[b"type"] == b"TAG"} == {
        b"fh", b"ns"}

    second = make("redis", embedding=HashEmbedder(8), redis_semantic_cache_index_name=index)
    with pytest.raises(ConfigurationError, match=r"16-dimensional.*8-dimensional"):
        await second.async_test_connection()
    with pytest.raises(ConfigurationError, match="16-dimensional"):
        await second.backend.search_similar(chat("hello"), prefix="", threshold=None)
    # Through the cache the failure is a counted miss, never an exception.
    assert await second.async_lookup(chat("hello there again")) is None
    assert second.stats()["errors"] >= 1


async def test_qdrant_collection_dimension_mismatch_on_a_path(make, tmp_path):
    path = str(tmp_path / "qdrant")
    first = make("qdrant", qdrant_location=None, qdrant_path=path,
                 qdrant_collection_name="shared", embedding=HashEmbedder(16))
    await first.async_store(chat("hello there"), "v")
    await first.aclose()
    reopened = make("qdrant", qdrant_location=None, qdrant_path=path,
                    qdrant_collection_name="shared", embedding=HashEmbedder(16))
    assert (await reopened.async_lookup(chat("hello there"))).value == "v"  # persisted
    await reopened.aclose()
    other = make("qdrant", qdrant_location=None, qdrant_path=path,
                 qdrant_collection_name="shared", embedding=HashEmbedder(8))
    with pytest.raises(ConfigurationError, match=r"16-dimensional.*8-dimensional"):
        await other.async_test_connection()


@pytest.mark.parametrize("store", STORES)
async def test_embedder_changing_dimension_is_a_clear_error(make, store):
    sizes = iter([4, 4, 3])

    async def drifting(texts):
        size = next(sizes)
        return [[1.0] * size for _ in texts]

    cache = make(store, embedding=drifting)
    await cache.async_store(chat("first"), "v")
    await cache.async_lookup(chat("second"))
    with pytest.raises(ConfigurationError, match="dimension 3, expected 4"):
        await cache.backend.search_similar(chat("third"), prefix="", threshold=None)


@pytest.mark.parametrize("kind", ["binary", "scalar", "product", None])
async def test_qdrant_quantization_choices(make, kind):
    from qdrant_client import models

    cache = make("qdrant", embedding=HashEmbedder(16), qdrant_quantization_config=kind)
    client = await cache.backend._client()
    created = []
    original = client.create_collection

    async def recording(*args, **kwargs):
        created.append(kwargs)
        return await original(*args, **kwargs)

    # Embedded Qdrant accepts but does not report quantization, so record what is asked.
    client.create_collection = recording
    await cache.async_store(chat("quantized entry"), "v")
    assert (await cache.async_lookup(chat("quantized entry !"))).value == "v"
    assert len(created) == 1
    config = created[0]["quantization_config"]
    expected = {None: type(None), "binary": models.BinaryQuantization,
                "scalar": models.ScalarQuantization, "product": models.ProductQuantization}
    assert type(config) is expected[kind]
    vectors = created[0]["vectors_config"]["prompt"]
    assert (vectors.size, vectors.distance) == (16, models.Distance.COSINE)


def test_bad_settings_raise_naming_them():
    with pytest.raises(ConfigurationError, match="similarity_threshold"):
        Cache(type="qdrant-semantic", qdrant_location=":memory:", similarity_threshold=1.2,
              embedding=HashEmbedder())
    with pytest.raises(ConfigurationError, match="qdrant_quantization_config"):
        Cache(type="qdrant-semantic", qdrant_location=":memory:",
              qdrant_quantization_config="fancy", embedding=HashEmbedder())
    with pytest.raises(ConfigurationError, match="exactly one of"):
        Cache(type="qdrant-semantic", embedding=HashEmbedder())
    with pytest.raises(ConfigurationError, match="similarity-threshold"):
        parse_controls({"similarity-threshold": -0.5})
    with pytest.raises(ConfigurationError, match="redis_semantic_cache_index_name"):
        Cache(type="redis-semantic", embedding=HashEmbedder(),
              redis_semantic_cache_index_name="llm:cache")
    with pytest.raises(ConfigurationError, match="hybrid_policy"):
        Cache(type="redis-semantic", embedding=HashEmbedder(), hybrid_policy="fastest")
    with pytest.raises(ConfigurationError, match="unknown setting 'colour'"):
        Cache(type="redis-semantic", embedding=HashEmbedder(), colour="blue")


def test_redis_semantic_reads_the_same_redis_settings_as_redis(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://:s3cret@127.0.0.1:6399/0")
    semantic = Cache(type="redis-semantic", embedding=HashEmbedder())
    plain = Cache(type="redis")
    assert semantic.backend.settings == plain.backend.settings
    assert semantic.backend.settings.port == 6399


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
async def test_unreachable_stores_fail_test_connection_clearly():
    port = free_port()  # nothing listens here
    redis_cache = Cache(type="redis-semantic", host="127.0.0.1", port=port,
                        password="s3cret-pw", embedding=HashEmbedder())
    qdrant_cache = Cache(type="qdrant-semantic", qdrant_api_base=f"http://127.0.0.1:{port}",
                         qdrant_api_key="s3cret-key", embedding=HashEmbedder())
    try:
        for cache in (redis_cache, qdrant_cache):
            with pytest.raises(CacheConnectionError, match="not usable") as info:
                await cache.async_test_connection()
            assert "s3cret" not in str(info.value)
            assert "s3cret" not in repr(cache)
            assert await cache.async_ping() is False
            assert await cache.async_lookup(chat("anything")) is None  # fail-open
    finally:
        await redis_cache.aclose()
        await qdrant_cache.aclose()


# -- other behaviour --------------------------------------------------------------------


@pytest.mark.parametrize(("store", "settings"), [
    ("redis", {}), ("redis", {"hybrid_policy": "batches"}),
    ("redis", {"hybrid_policy": "ADHOC_BF"}), ("qdrant", {}),
])
async def test_batch_index_and_exact_only_requests(make, store, settings):
    cache = make(store, embedding=HashEmbedder(32), **settings)
    backend = cache.backend
    requests = [chat(f"question number {i} about topic {i * 7}") for i in range(50)]
    items = [cache._encode(cache.get_cache_key(**r), {"n": i}, None, None, cache.clock())
             for i, r in enumerate(requests)]
    await backend.index_similar_many(requests, items, prefix="")
    assert backend.semantic.embedder.calls == 1  # one embedding call for the batch
    hit = await cache.async_lookup(chat("question number 17 about topic 119 ?"))
    assert hit is not None and hit.value == {"n": 17}
    # A request with nothing to embed is stored and found by its exact key only.
    no_text = {"model": "gpt-4o", "messages": [{"role": "assistant", "content": "x"}]}
    assert await cache.async_store(no_text, "exact") is True
    assert (await cache.async_lookup(no_text)).value == "exact"


@pytest.mark.parametrize("store", STORES)
async def test_embed_all_messages(make, store):
    cache = make(store, embedding=HashEmbedder(32), embed_what="all_messages",
                 similarity_threshold=0.9)
    convo = [{"role": "system", "content": "You answer cooking questions."},
             {"role": "user", "content": "How long do I boil an egg?"}]
    await cache.async_store({"model": "m", "messages": convo}, "ten minutes")
    reworded = [convo[0], {"role": "user", "content": "how long do I boil an egg"}]
    assert (await cache.async_lookup({"model": "m", "messages": reworded})).value == \
        "ten minutes"
    other_topic = [{"role": "system", "content": "You answer tax questions."},
                   {"role": "user", "content": "When is the deadline?"}]
    assert await cache.async_lookup({"model": "m", "messages": other_topic}) is None


async def test_semantic_cache_classes_are_caches_whose_backend_searches(valkey_server):
    from asynccache import BaseCache, QdrantSemanticCache, RedisSemanticCache
    from asynccache.contract import SimilaritySearch

    redis_cache = RedisSemanticCache(host="127.0.0.1", port=valkey_server.port,
                                     url=None, embedding=HashEmbedder(),
                                     redis_semantic_cache_index_name=unique("idx"))
    qdrant_cache = QdrantSemanticCache(qdrant_location=":memory:", embedding=HashEmbedder())
    try:
        for cache, type_name in ((redis_cache, "redis-semantic"),
                                 (qdrant_cache, "qdrant-semantic")):
            assert isinstance(cache, BaseCache) and not isinstance(cache, Cache)
            assert isinstance(cache.backend, SimilaritySearch)
            assert cache.backend.name == type_name
            assert await cache.async_store(chat("ping pong"), 1) is True
            assert (await cache.async_lookup(chat("ping pong!"))).value == 1
    finally:
        await redis_cache.aclose()
        await qdrant_cache.aclose()


async def test_sync_twins_work_from_a_thread(make):
    cache = make("qdrant", embedding=HashEmbedder(16))
    await cache.async_store(chat("sync world"), "v")

    def from_script():
        return cache.get_cache(cache.get_cache_key(**chat("sync world")))

    assert await asyncio.to_thread(from_script) == "v"


@pytest.mark.parametrize("store", STORES)
async def test_encrypted_answers_stay_searchable(make, store):
    """The answer is sealed at rest; the vector and filter fields stay searchable."""
    from asynccache.protection import generate_key

    vectors = {"What is 2+2?": [1.0, 0.0], "what's 2 + 2": [0.99, 0.14]}
    cache = make(store, embedding=Fixed(vectors), similarity_threshold=0.9,
                 encryption_keys=[generate_key()])
    answer = chat_completion("The sum is four, in confidence")
    assert await cache.async_store(chat("What is 2+2?"), answer) is True
    hit = await cache.async_lookup(chat("what's 2 + 2"))
    assert hit is not None and hit.value == answer
    key = cache.get_cache_key(**chat("What is 2+2?"))
    stored = cache._stored_key(key, cache.namespace)
    raw = (await cache.backend.read_many([stored]))[0]
    assert raw is not None and b"confidence" not in raw


# -- local-semantic: the embedded index over the disk store ------------------------------


def _append(path, data: bytes) -> None:
    with open(path, "ab") as file:
        file.write(data)


async def test_local_index_persists_in_the_folder_and_survives_a_torn_tail(make, tmp_path):
    from asynccache.semantic.embedded import INDEX_FILE

    folder = str(tmp_path / "persisted")
    first = make("local", disk_cache_dir=folder, embedding=HashEmbedder(16))
    await first.async_store(chat("what is the boiling point of water"), "100 C")
    await first.async_store(chat("what is the freezing point of water"), "0 C")
    await first.aclose()
    # A crash in the middle of an append leaves half a record at the end of the log.
    _append(tmp_path / "persisted" / INDEX_FILE, b"ASI1\x00\x01half a record")
    reopened = make("local", disk_cache_dir=folder, embedding=HashEmbedder(16))
    hit = await reopened.async_lookup(chat("what is the boiling point of water ?"))
    assert hit is not None and hit.value == "100 C"
    assert hit.matched_prompt == "what is the boiling point of water"
    assert reopened.backend.indexed == 2


async def test_local_deleted_or_expired_entries_never_answer(make):
    clock = FakeClock()
    cache = make("local", embedding=HashEmbedder(16), clock=clock)
    await cache.async_store(chat("first entry about rivers"), "rivers")
    await cache.async_store(chat("second entry about mountains"), "mountains",
                            controls=parse_controls({"ttl": 30}))
    assert (await cache.async_lookup(chat("first entry about rivers ?"))).value == "rivers"
    await cache.async_delete_cache(cache.get_cache_key(**chat("first entry about rivers")))
    assert await cache.async_lookup(chat("first entry about rivers ?")) is None
    assert (await cache.async_lookup(chat("second entry about mountains ?"))).value == \
        "mountains"
    clock.advance(31)
    assert await cache.async_lookup(chat("second entry about mountains ?")) is None
    await cache.async_clear()
    assert cache.backend.indexed == 0


async def test_local_entry_removed_behind_the_index_is_dropped_at_lookup(make, tmp_path):
    folder = str(tmp_path / "shared-folder")
    # The guard is off: the added word would make it refuse the next best entry, and
    # this is about the index.
    cache = make("local", disk_cache_dir=folder, embedding=HashEmbedder(16),
                 similarity_threshold=0.5, semantic_guard=False)
    await cache.async_store(chat("apples and pears"), "fruit")
    await cache.async_store(chat("apples and pears and plums"), "more fruit")
    # Another cache on the same folder (the plain disk store) deletes the better match.
    from asynccache import DiskCache

    other = DiskCache(disk_cache_dir=folder)
    await other.async_delete_cache(cache.get_cache_key(**chat("apples and pears and plums")))
    await other.aclose()
    hit = await cache.async_lookup(chat("apples and pears and plums !"))
    assert hit is not None and hit.value == "fruit"  # the next best live entry
    assert cache.backend.indexed == 1
    assert await cache.backend.compact() == 1  # the log keeps live rows only


async def test_local_partitions_by_filter_at_ten_thousand_entries(make):
    cache = make("local", embedding=HashEmbedder(64), similarity_threshold=0.99)
    backend = cache.backend
    models = [f"model-{i % 4}" for i in range(10_000)]
    requests = [chat(f"question {i} about subject {i * 31 % 997}", model=models[i])
                for i in range(10_000)]
    for start in range(0, 10_000, 500):
        chunk = requests[start : start + 500]
        items = [cache._encode(cache.get_cache_key(**r), {"n": start + i}, None, None,
                               cache.clock()) for i, r in enumerate(chunk)]
        await backend.index_similar_many(chunk, items, prefix="")
    assert backend.indexed == 10_000
    assert sorted(p.rows for p in backend._partitions.values()) == [2500] * 4
    hit = await cache.async_lookup(chat("question 4242 about subject 4242 ?".replace(
        "subject 4242", f"subject {4242 * 31 % 997}"), model="model-2"))
    assert hit is not None and hit.value == {"n": 4242}
    # The same words under another model's filter never answer.
    assert await cache.async_lookup(chat(f"question 4242 about subject {4242 * 31 % 997} ?",
                                         model="model-1")) is None


async def test_redis_lookups_beyond_max_connections_wait_their_turn(make):
    # 40 concurrent lookups on 2 connections: the extra ones queue, none fails.
    cache = make("redis", embedding=HashEmbedder(16), max_connections=2, timeout=None)
    await cache.async_store(chat("how many connections does this use"), "two")
    hits = await asyncio.gather(*(cache.async_lookup(chat("how many connections does this use ?"))
                                  for _ in range(40)))
    assert [hit.value for hit in hits] == ["two"] * 40
    assert cache.stats()["errors"] == 0
