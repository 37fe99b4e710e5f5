"""Semantic caches (Redis vector search, embedded Qdrant, local-semantic) in the contract suite.

The contract checks exact-key behaviour, so these caches use the fast deterministic
:class:`~asynccache.semantic.HashEmbedder`; the real local model is used in
tests/test_semantic.py.
"""

from __future__ import annotations

import pytest

from asynccache.semantic import HashEmbedder
from tests.helpers import CacheTracker, unique

CONTRACT_BACKENDS = {
    "redis-semantic": "redis_semantic_cache_factory",
    "qdrant-semantic": "qdrant_semantic_cache_factory",
    "local-semantic": "local_semantic_cache_factory",
}


@pytest.fixture
async def redis_semantic_cache_factory(valkey_server):
    """Caches on the session's valkey-server, isolated by a unique index name (key prefix)."""
    from asynccache.semantic.redis import RedisSemanticCache

    tracker = CacheTracker(RedisSemanticCache, {
        "host": "127.0.0.1", "port": valkey_server.port, "embedding": HashEmbedder(16),
        "redis_semantic_cache_index_name": unique("idx"),
    })
    yield tracker
    await tracker.aclose()


@pytest.fixture
async def qdrant_semantic_cache_factory():
    """Caches on embedded in-memory Qdrant (a fresh store per cache)."""
    pytest.importorskip("qdrant_client")
    from asynccache.semantic.qdrant import QdrantSemanticCache

    tracker = CacheTracker(QdrantSemanticCache, {
        "qdrant_location": ":memory:", "embedding": HashEmbedder(16),
        "qdrant_collection_name": unique("col"),
    })
    yield tracker
    await tracker.aclose()


@pytest.fixture
async def local_semantic_cache_factory(tmp_path):
    """Caches with the embedded index over a disk store in this test's folder."""
    from asynccache.semantic.embedded import LocalSemanticCache

    tracker = CacheTracker(LocalSemanticCache, {
        "disk_cache_dir": str(tmp_path / "local-semantic"), "embedding": HashEmbedder(16),
    })
    yield tracker
    await tracker.aclose()
