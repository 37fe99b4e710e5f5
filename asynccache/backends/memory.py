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
        size = len(data)
        if size > self.max_bytes:
            return False
        entries = self._data
        previous = entries.get(key)
        entries[key] = (data, None if ttl is None else now + ttl)
        if previous is None:
            self._bytes += size
            if len(entries) > self.max_entries or self._bytes > self.max_bytes:
                self._evict()
        else:
            # Replaced in place: cheaper than a pop and a fresh insert in an OrderedDict.
            entries.move_to_end(key)
            self._bytes += size - len(previous[0])
            if self._bytes > self.max_bytes:
                self._evict()
        return True

    def _evict(self) -> None:
        entries = self._data
        while len(entries) > self.max_entries or self._bytes > self.max_bytes:
            _, (old, _) = entries.popitem(last=False)
            self._bytes -= len(old)
            self.evictions += 1

    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return self.read_many_now(keys)

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        return self.write_many_now(items)

    def read_one_now(self, key: str) -> bytes | None:
        """One key's bytes or ``None``, synchronously (the lean single get calls this)."""
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] is not None and self.clock() >= item[1]:
            self._remove(key)
            return None
        self._data.move_to_end(key)
        return item[0]

    def read_many_now(self, keys: Sequence[str]) -> list[bytes | None]:
        """:meth:`read_many` without the coroutine (the cache's lean path calls this)."""
        # The lookup inlined: this loop is the whole of a batch get's backend work.
        now = self.clock()
        entries = self._data
        get, touch = entries.get, entries.move_to_end
        found: list[bytes | None] = []
        append = found.append
        for key in keys:
            item = get(key)
            if item is None:
                append(None)
            elif item[1] is not None and now >= item[1]:
                self._remove(key)
                append(None)
            else:
                touch(key)
                append(item[0])
        return found

    def write_one_now(self, item: WriteItem) -> bool:
        """Store one item synchronously (the lean single set calls this)."""
        return self._store(item[0], item[1], item[2], self.clock())

    def write_many_now(self, items: Sequence[WriteItem]) -> list[bool] | None:
        """:meth:`write_many` without the coroutine (the cache's lean path calls this)."""
        now = self.clock()
        store = self._store
        failed: list[int] = [i for i, (key, data, ttl) in enumerate(items)
                             if not store(key, data, ttl, now)]
        if not failed:
            return None
        results = [True] * len(items)
        for index in failed:
            results[index] = False
        return results

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


