"""DualCache: a fast L1 (usually memory) in front of a shared L2 (Redis, S3...)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from . import envelope
from .base import BaseCache
from .config import NOT_GIVEN, NotGiven
from .exceptions import BackendError, MissingArgumentError

__all__ = ["DualBackend", "DualCache", "create_dual_backend"]
from .contract import Backend, WriteItem


class DualBackend(Backend):
    """Reads L1 then L2 (filling L1); writes both at once. Each tier keeps its own
    error policy and circuit breaker, so L1 keeps answering while L2 is down."""

    name: ClassVar[str] = "dual"
    remote: ClassVar[bool] = False  # the tiers apply their own timeouts and coalescing

    def __init__(self, l1: BaseCache, l2: BaseCache) -> None:
        self.l1 = l1
        self.l2 = l2

    def _l1_ttl(self, data: bytes, now: float) -> float | None:
        expires_at = envelope.peek_expires_at(data)
        remaining = None if expires_at is None else expires_at - now
        cap = self.l1.default_ttl
        if remaining is None:
            return cap
        return remaining if cap is None else min(cap, remaining)

    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        found = await self.l1.read_stored(keys)
        missing = [i for i, data in enumerate(found) if data is None]
        if not missing:
            return found
        from_l2 = await self.l2.read_stored([keys[i] for i in missing])
        now = self.clock()
        fill: list[WriteItem] = []
        for index, data in zip(missing, from_l2, strict=True):
            if data is not None:
                found[index] = data
                ttl = self._l1_ttl(data, now)
                if ttl is None or ttl > 0:
                    fill.append((keys[index], data, ttl))
        if fill:
            await self.l1.write_stored(fill)
        return found

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        l1_items = [(key, data, self._l1_ttl(data, self.clock())) for key, data, _ in items]
        _, durable = await asyncio.gather(
            self.l1.write_stored(l1_items), self.l2.write_stored(items)
        )
        return durable

    async def remove_many(self, keys: Sequence[str]) -> int:
        in_l1, in_l2 = await asyncio.gather(
            self.l1.delete_stored(keys), self.l2.delete_stored(keys)
        )
        return max(in_l1, in_l2)

    async def remove_prefix(self, prefix: str) -> int:
        in_l1, in_l2 = await asyncio.gather(
            self.l1.clear_stored_prefix(prefix), self.l2.clear_stored_prefix(prefix)
        )
        return max(in_l1, in_l2)

    async def increment_counter(self, key: str, amount: int | float,
                                ttl: float | None) -> int | float:
        value = await self.l2.increment_stored(key, amount, ttl)
        if value is None:
            raise BackendError("the L2 increment failed")
        await self.l1.delete_stored([key])
        return value

    async def stored_ttl(self, key: str) -> float | NotGiven | None:
        return NOT_GIVEN

    async def check_health(self) -> None:
        await self.l1.async_test_connection()
        await self.l2.async_test_connection()

    async def aclose(self) -> None:
        await asyncio.gather(self.l1.aclose(), self.l2.aclose())

    def describe(self) -> dict[str, Any]:
        return {"l1": self.l1.backend.name, "l2": self.l2.backend.name}


def _tier(value: BaseCache | Mapping[str, Any] | None, which: str) -> BaseCache:
    if isinstance(value, BaseCache):
        return value
    if isinstance(value, Mapping):
        from .facade import Cache

        settings = dict(value)
        return Cache(settings.pop("type", "local"), **settings)
    raise MissingArgumentError(
        f"DualCache needs {which}: a cache or a dict of Cache settings, e.g. "
        f"DualCache(MemoryCache(), RedisCache()) or "
        f"Cache(type='dual', l2={{'type': 'redis', 'url': ...}}); got {value!r:.80}"
    )


def create_dual_backend(l1: BaseCache | Mapping[str, Any] | None = None,
                        l2: BaseCache | Mapping[str, Any] | None = None) -> DualBackend:
    """The backend of ``Cache(type="dual", l1=..., l2=...)``.

    Each tier is a cache or a dict of :class:`~asynccache.Cache` settings with its
    ``type``; ``l1`` defaults to an in-memory cache.
    """
    if l1 is None:
        from .backends.memory import MemoryCache

        l1 = MemoryCache()
    return DualBackend(_tier(l1, "an L1"), _tier(l2, "an L2"))


class DualCache(BaseCache):
    """L1 + L2: reads L1 then L2 and fills L1; writes both concurrently.

    A batch get asks L2 only for the keys L1 missed. L1 entries live at most
    ``l1.default_ttl`` seconds (and never past the entry's own expiry), which bounds how
    stale one process can be after another process rewrites L2. Also available as
    ``Cache(type="dual", l1=..., l2=...)``.

    >>> dual = DualCache(MemoryCache(ttl=30), RedisCache(host="127.0.0.1"))  # doctest: +SKIP
    """

    backend: DualBackend

    def __init__(self, l1: BaseCache | Mapping[str, Any] | None = None,
                 l2: BaseCache | Mapping[str, Any] | None = None, **settings: Any) -> None:
        backend = create_dual_backend(l1, l2)
        self.l1, self.l2 = backend.l1, backend.l2
        super().__init__(backend, **settings)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "l1": self.l1.stats(), "l2": self.l2.stats()}
