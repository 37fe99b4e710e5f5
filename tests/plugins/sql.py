"""SQL stores for the contract suite: SQLite files, and (below) real PostgreSQL and MariaDB."""

from __future__ import annotations

import pytest

from asynccache.backends.sqlite import SQLiteCache
from tests.helpers import CacheTracker

CONTRACT_BACKENDS = {"sqlite": "sqlite_cache_factory"}


@pytest.fixture
async def sqlite_cache_factory(tmp_path):
    """``make(**settings)``: a ``SQLiteCache`` on a file of this test's own."""
    tracker = CacheTracker(SQLiteCache, {"path": str(tmp_path / "cache.db")})
    yield tracker
    await tracker.aclose()
