"""Single-flight: concurrent identical cache misses make one upstream call.

The first caller of a key becomes the leader and runs the work (lookup, upstream call,
store); callers that arrive while it runs wait for its outcome. An error reaches every
waiter of that flight and nothing is cached. If the leader is cancelled, its waiters are
not: one of them takes over as the new leader.

Flights are kept per event loop, since futures belong to the loop that made them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from ..config import NotGiven
from ..exceptions import ConfigurationError

if TYPE_CHECKING:
    from ..base import BaseCache

__all__ = ["CacheLease", "LeaseOptions", "SingleFlight"]

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Deduplicates concurrent calls by key within one process.

    >>> flights = SingleFlight()                                     # doctest: +SKIP
    >>> result, leader = await flights.run("key", fetch)             # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._flights: dict[asyncio.AbstractEventLoop, dict[Hashable, asyncio.Future[T]]] = {}

    def in_flight(self, key: Hashable) -> bool:
        """Whether a call for ``key`` is running on the current loop."""
        loop = asyncio.get_running_loop()
        return key in self._flights.get(loop, {})

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Run ``work`` once for concurrent callers of ``key``.

        Returns ``(result, led)``: ``led`` is True for the caller that ran ``work``.
        """
        loop = asyncio.get_running_loop()
        flights = self._flights.setdefault(loop, {})
        while True:
            pending = flights.get(key)
            if pending is None:
                break
            try:
                return await asyncio.shield(pending), False
            except asyncio.CancelledError:
                task = asyncio.current_task()
                cancelling = getattr(task, "cancelling", None)
                own = cancelling() > 0 if cancelling is not None else not pending.cancelled()
                if own or not pending.cancelled():
                    raise
                # The leader was cancelled, not us: try again (maybe as the new leader).
        future: asyncio.Future[T] = loop.create_future()
        flights[key] = future
        try:
            result = await work()
        except BaseException as exc:
            if isinstance(exc, Exception):
                future.set_exception(exc)
                future.exception()  # retrieved: waiters raise it themselves
            else:
                future.cancel()
            raise
        finally:
            if flights.get(key) is future:
                del flights[key]
            if not flights:
                self._flights.pop(loop, None)
        future.set_result(result)
        return result, True

    def __len__(self) -> int:
        return sum(len(flights) for flights in self._flights.values())


# -- distributed lease -------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseOptions:
    """Cross-process single-flight, for ``cached(..., lease=LeaseOptions())``.

    Needs a cache whose backend has the lease capability
    (:class:`~asynccache.contract.LeaseSupport`: Redis). The process that wins
    ``SET lease-key token NX PX ttl`` calls upstream; the others
    poll the cache with a doubling delay (``poll_initial`` up to ``poll_max`` seconds)
    until the answer appears, the lease disappears (then one of them takes over) or they
    have waited ``max_wait`` seconds (then they call upstream themselves). ``ttl`` bounds
    how long a crashed holder can block the others.
    """

    ttl: float = 30.0
    max_wait: float = 30.0
    poll_initial: float = 0.02
    poll_max: float = 0.5

    def __post_init__(self) -> None:
        for name in ("ttl", "max_wait", "poll_initial", "poll_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(f"LeaseOptions.{name} must be > 0 seconds, got {value!r}")


class CacheLease:
    """One lease on a cache whose backend has the lease capability (Redis).

    Every call goes through the cache (and so through its guard: timeouts, circuit
    breaker, error counters); a store failure raises a
    :class:`~asynccache.exceptions.BackendError`.
    """

    def __init__(self, cache: BaseCache, key: str, namespace: str | NotGiven | None,
                 options: LeaseOptions) -> None:
        self._cache = cache
        self.key = key
        self.namespace = namespace
        self.options = options

    async def acquire(self) -> str | None:
        """A token if the lease is now ours, ``None`` if another process holds it."""
        return await self._cache.async_acquire_lease(self.key, self.options.ttl,
                                                     namespace=self.namespace)

    async def release(self, token: str) -> None:
        """Give the lease up, only if it is still ours (it may have expired meanwhile)."""
        await self._cache.async_release_lease(self.key, token, namespace=self.namespace)
