"""In-memory backend: a bounded LRU of encoded entries.

Entries are stored as encoded bytes, so what callers pass in or get back can be mutated
freely without touching the cache, and the byte bound is exact.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar

from ..base import BaseCache
from ..config import NotGiven
from ..contract import Backend, WriteItem
from ..exceptions import ConfigurationError

__all__ = [
    "DEFAULT_MAX_BYTES", "DEFAULT_MAX_ENTRIES", "MemoryBackend", "MemoryCache",
]

DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


class MemoryBackend(Backend):
    """LRU dict bounded by entry count and total bytes; O(1) get and set."""

    name: ClassVar[str] = "memory"
    remote: ClassVar[bool] = False
    loop_free: ClassVar[bool] = True
    max_batch: ClassVar[int] = 100_000

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        for name, value in (("max_entries", max_entries), ("max_bytes", max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigurationError(f"{name} must be a positive int, got {value!r}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._data: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def _lookup(self, key: str, now: float) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        data, expires_at = item
        if expires_at is not None and now >= expires_at:
            self._remove(key)
            return None
        self._data.move_to_end(key)
        return data

    def _remove(self, key: str) -> bool:
        item = self._data.pop(key, None)
        if item is None:
            return False
        self._bytes -= len(item[0])
        return True

    def _store(self, key: str, data: bytes, ttl: float | None, now: float) -> bool:
        if len(data) > self.max_bytes:
            return False
        self._remove(key)
        self._data[key] = (data, None if ttl is None else now + ttl)
        self._bytes += len(data)
        while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
            _, (old, _) = self._data.popitem(last=False)
            self._bytes -= len(old)
            self.evictions += 1
        return True

    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = self.clock()
        return [self._lookup(key, now) for key in keys]

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        now = self.clock()
        results = [self._store(key, data, ttl, now) for key, data, ttl in items]
        return None if all(results) else results

    async def remove_many(self, keys: Sequence[str]) -> int:
        return sum(self._remove(key) for key in keys)

    async def remove_prefix(self, prefix: str) -> int:
        if not prefix:
            count = len(self._data)
            self._data.clear()
            self._bytes = 0
            return count
        doomed = [key for key in self._data if key.startswith(prefix)]
        for key in doomed:
            self._remove(key)
        return len(doomed)

    async def stored_ttl(self, key: str) -> float | NotGiven | None:
        now = self.clock()
        if self._lookup(key, now) is None:
            return None
        expires_at = self._data[key][1]
        return None if expires_at is None else max(0.0, expires_at - now)

    async def check_health(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"max_entries": self.max_entries, "max_bytes": self.max_bytes}

    def counters(self) -> dict[str, int]:
        return {"evictions": self.evictions}


class MemoryCache(BaseCache):
    """In-process cache: bounded LRU with TTL. The embedded default of :class:`Cache`.

    >>> cache = MemoryCache(max_entries=10_000, ttl=300)
    >>> cache.set_cache("greeting", {"text": "hello"})
    True
    >>> cache.get_cache("greeting")
    {'text': 'hello'}
    """

    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_bytes: int = DEFAULT_MAX_BYTES, **settings: Any) -> None:
        super().__init__(MemoryBackend(max_entries, max_bytes), **settings)


