"""``type="disk"`` for the contract suite, on each store: every cache gets its own folder."""

from __future__ import annotations

import pytest

from asynccache.backends.disk import DiskCache
from tests.helpers import CacheTracker

CONTRACT_BACKENDS = {"disk": "disk_cache_factory", "disk-files": "disk_files_cache_factory"}


@pytest.fixture
async def disk_cache_factory(tmp_path):
    """``make(**settings)``: ``DiskCache`` on a new folder (the SQLite store)."""
    tracker = CacheTracker(DiskCache, {"disk_cache_dir": str(tmp_path / "disk-cache")})
    yield tracker
    await tracker.aclose()


@pytest.fixture
async def disk_files_cache_factory(tmp_path):
    """``make(**settings)``: ``DiskCache`` on the file store (a file per entry)."""
    tracker = CacheTracker(DiskCache, {"disk_cache_dir": str(tmp_path / "disk-files"),
                                       "store": "files"})
    yield tracker
    await tracker.aclose()
