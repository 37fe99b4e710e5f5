"""Disk backend for the contract suite: every cache gets its own folder under tmp_path."""

from __future__ import annotations

import pytest

from asynccache.backends.disk import DiskCache
from tests.helpers import CacheTracker

CONTRACT_BACKENDS = {"disk": "disk_cache_factory"}


@pytest.fixture
async def disk_cache_factory(tmp_path):
    tracker = CacheTracker(DiskCache, {"disk_cache_dir": str(tmp_path / "disk-cache")})
    yield tracker
    await tracker.aclose()
