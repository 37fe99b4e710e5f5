"""The smallest backend the contract allows, run through the whole contract suite.

It implements the four required primitives on a dict and nothing else: no TTL handling,
no counters, no health check. The suite passing over it shows that expiry, counters,
TTL questions, keys, stats and the LLM API all come from the template, so a new backend
cannot get them wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from asynccache import BaseCache
from asynccache.contract import Backend, WriteItem
from tests.helpers import CacheTracker

CONTRACT_BACKENDS = {"minimal": "minimal_cache_factory"}


class DictBackend(Backend):
    """Four primitives over a dict; the TTL of each write is ignored on purpose."""

    name = "minimal"
    remote = False

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self.data.get(key) for key in keys]

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        for key, data, _ in items:
            self.data[key] = data
        return None

    async def remove_many(self, keys: Sequence[str]) -> int:
        return sum(self.data.pop(key, None) is not None for key in keys)

    async def remove_prefix(self, prefix: str) -> int:
        doomed = [key for key in self.data if key.startswith(prefix)]
        for key in doomed:
            del self.data[key]
        return len(doomed)


@pytest.fixture
async def minimal_cache_factory():
    tracker = CacheTracker(lambda **settings: BaseCache(DictBackend(), **settings))
    yield tracker
    await tracker.aclose()
