"""In-memory backend and DualCache (memory over memory) for the contract suite."""

from __future__ import annotations

import pytest

from asynccache import DualCache, MemoryCache
from tests.helpers import CacheTracker

CONTRACT_BACKENDS = {"memory": "memory_cache_factory", "dual": "dual_cache_factory"}


@pytest.fixture
async def memory_cache_factory():
    tracker = CacheTracker(MemoryCache)
    yield tracker
    await tracker.aclose()


@pytest.fixture
async def dual_cache_factory():
    def build(**settings):
        clock = settings.get("clock")
        extra = {"clock": clock} if clock is not None else {}
        return DualCache(MemoryCache(**extra), MemoryCache(**extra), **settings)

    tracker = CacheTracker(build)
    yield tracker
    await tracker.aclose()
