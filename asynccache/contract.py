"""The backend contract: what a storage backend implements, and its optional capabilities.

A backend stores encoded bytes under stored keys. Keys arrive already namespaced and
checked (:mod:`asynccache.keys` owns their format), values arrive already encoded
(:mod:`asynccache.envelope` owns theirs), and :class:`~asynccache.base.BaseCache` decides
hits, expiry, stats and the error policy. A new backend therefore implements four
coroutines (:meth:`Backend.read_many`, :meth:`Backend.write_many`,
:meth:`Backend.remove_many`, :meth:`Backend.remove_prefix`) and may override the rest.

The primitives are named so they are never confused with the cache's public methods
(``cache.clear()`` is a sync twin taking a namespace; ``backend.remove_prefix(prefix)``
is a coroutine taking a stored-key prefix).

Optional capabilities are protocols checked with ``isinstance``:

* :class:`SimilaritySearch`: semantic stores (Redis vector search, Qdrant) that find
  an entry by the meaning of a request;
* :class:`LeaseSupport`: stores that can hold a short cross-process lease (Redis), used by
  the single-flight of :func:`~asynccache.integrations.wrappers.cached`.
"""

from __future__ import annotations

import abc
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from . import envelope
from .config import NOT_GIVEN, NotGiven

__all__ = ["Backend", "LeaseSupport", "SimilaritySearch", "WriteItem"]

#: Primitive names before the contract had its own module, and their names now.
_RENAMED = {
    "get_many": "read_many", "set_many": "write_many", "delete_many": "remove_many",
    "clear": "remove_prefix", "increment": "increment_counter", "get_ttl": "stored_ttl",
    "ping": "check_health",
}

#: One write as backends receive it: (stored key, encoded bytes, TTL seconds or None).
#: The TTL is the envelope's expiry as a duration, for stores with a native expiry
#: (Redis ``EX``); stores without one purge using :func:`envelope.peek_expires_at`.
WriteItem = tuple[str, bytes, float | None]


class Backend(abc.ABC):
    """The contract a storage backend implements: batch primitives on bytes.

    Errors may be raised freely: :class:`~asynccache.guard.GuardedBackend` turns them
    into misses and failed writes. Single-key calls are batches of one. A backend never
    decides whether an entry is a hit; it may purge an entry whose envelope says it has
    expired (:func:`asynccache.envelope.peek_expires_at`).
    """

    #: Short name used in stats and logs.
    name: ClassVar[str] = "backend"
    #: Whether calls do network I/O (enables timeouts and read coalescing by default).
    remote: ClassVar[bool] = True
    #: Largest batch a single primitive call receives.
    max_batch: ClassVar[int] = 1000
    #: Whether no primitive ever waits on the event loop (pure in-process work). The
    #: sync twins of such caches then run in the caller's thread, without the bridge.
    loop_free: ClassVar[bool] = False
    #: Whether the sync twins may run on the calling thread's own loop (clients kept per
    #: loop, nothing to keep running between calls); otherwise they use the bridge.
    sync_on_caller_thread: ClassVar[bool] = False

    #: The cache's clock (seconds since the epoch); set by :class:`BaseCache`.
    clock: Callable[[], float] = staticmethod(time.time)
    #: Largest encoded entry the store itself accepts (``None``: no limit of its own).
    #: A cache's ``max_item_size`` never exceeds it.
    max_item_size: int | None = None

    def item_limit_message(self) -> str:
        """Where :attr:`max_item_size` comes from, for ``ItemTooLargeError`` messages."""
        return ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A backend written against the old primitive names keeps working (with a
        # warning) until it is renamed.
        super().__init_subclass__(**kwargs)
        old_names = [old for old, new in _RENAMED.items()
                     if old in cls.__dict__ and new not in cls.__dict__]
        for old in old_names:
            setattr(cls, _RENAMED[old], cls.__dict__[old])
        if old_names:
            renames = ", ".join(f"{old} -> {_RENAMED[old]}" for old in old_names)
            warnings.warn(f"{cls.__name__} uses old backend primitive names; rename them: "
                          f"{renames}", DeprecationWarning, stacklevel=2)

    @abc.abstractmethod
    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The stored bytes for each key, ``None`` where missing; order kept."""

    @abc.abstractmethod
    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        """Store every item with its TTL (``None``: no expiry).

        Return ``None`` when all were stored, or one flag per item.
        """

    @abc.abstractmethod
    async def remove_many(self, keys: Sequence[str]) -> int:
        """Delete the keys; return how many existed."""

    @abc.abstractmethod
    async def remove_prefix(self, prefix: str) -> int:
        """Delete every key that starts with ``prefix`` (``""``: everything); return the count."""

    async def increment_counter(self, key: str, amount: int | float,
                                ttl: float | None) -> int | float:
        """Add ``amount`` to the counter at ``key``, creating it with ``ttl``; the new value.

        The default reads, adds and writes back an envelope that keeps the counter's
        first expiry (:func:`asynccache.envelope.encode_counter`). It is atomic within one
        event loop only when ``read_many``/``write_many`` never suspend (the memory
        backend); stores with a native atomic increment override it.
        """
        now = self.clock()
        current = (await self.read_many([key]))[0]
        value, expires_at = envelope.read_counter(current, now)
        if current is None or expires_at is NOT_GIVEN:
            expires_at = None if ttl is None else now + ttl
        value = envelope.counter_number(value + amount)
        remaining = None if expires_at is None else max(expires_at - now, 1e-3)
        await self.write_many([(key, envelope.encode_counter(value, now, expires_at), remaining)])
        return value

    async def stored_ttl(self, key: str) -> float | NotGiven | None:
        """Remaining TTL from the store, or ``NOT_GIVEN`` to read it from the envelope."""
        return NOT_GIVEN

    async def check_health(self) -> None:
        """Raise if the backend cannot serve requests."""
        await self.read_many(["asynccache:ping"])

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients and connections (every loop's)."""

    def describe(self) -> dict[str, Any]:
        """Non-secret settings for ``repr`` and ``stats()``."""
        return {}

    def counters(self) -> Mapping[str, int]:
        """Events only the backend sees (evictions, expired deletes, object errors...).

        Merged into :meth:`BaseCache.stats` under ``"backend_counters"``.
        """
        return {}


@runtime_checkable
class SimilaritySearch(Protocol):
    """Capability of semantic backends (Redis vector search, Qdrant).

    ``request`` is the LLM call's keyword arguments (model, messages, ...). The backend
    decides what is embedded and what becomes an exact-match filter, and verifies a
    candidate before it is served (the semantic guard and judge of
    :class:`~asynccache.semantic.base.SemanticBackend`).
    """

    async def search_similar(
        self, request: Mapping[str, Any], *, prefix: str, threshold: float | None
    ) -> tuple[bytes, float, str] | None:
        """Best match as (stored bytes, cosine similarity 0-1, matched prompt), or None."""

    async def index_similar(
        self, request: Mapping[str, Any], item: WriteItem, *, prefix: str
    ) -> None:
        """Store ``item`` under its exact key and index it for similarity search."""

    async def verify_similar(self, request: Mapping[str, Any], matched_prompt: str,
                             similarity: float) -> bool:
        """Whether the candidate found for ``request`` may be served."""

    def similarity_stats(self) -> dict[str, Any]:
        """Counters of the similarity side (candidates, served, rejections by reason)."""

    def reset_similarity_stats(self) -> None:
        """Set those counters back to zero."""


@runtime_checkable
class LeaseSupport(Protocol):
    """Capability of stores that can hold a cross-process lease (Redis ``SET NX PX``).

    Keys are stored keys (:func:`asynccache.keys.lease_key`); a token identifies the
    holder so only the holder releases it.
    """

    async def acquire_lease(self, key: str, token: str, ttl: float) -> bool:
        """Take the lease for ``ttl`` seconds if nobody holds it; whether it is now ours."""

    async def lease_held(self, key: str) -> bool:
        """Whether someone holds the lease."""

    async def release_lease(self, key: str, token: str) -> bool:
        """Give the lease up if ``token`` still holds it; whether it was released."""
