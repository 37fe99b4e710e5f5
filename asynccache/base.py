"""BaseCache: the template methods every cache shares.

A backend implements a handful of batch primitives on encoded bytes
(:class:`~asynccache.contract.Backend`); :class:`BaseCache` does everything else once:
key checks and namespacing, the envelope and serialization, TTL and max-age, write-behind, read
coalescing, stats, the fail-open error policy and the sync twins.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from . import envelope
from .bridge import register_exit_hook, sync_twin
from .config import NOT_GIVEN, CacheSettings, NotGiven, resolve_ttl, validate_ttl
from .contract import Backend, LeaseSupport, SimilaritySearch, WriteItem
from .controls import DEFAULT_CONTROLS, CacheControls, CacheMode, parse_controls
from .envelope import EXPIRED, Miss, decode_live
from .exceptions import (
    BackendError,
    CacheClosedError,
    CacheConnectionError,
    CacheError,
    ConfigurationError,
    ItemTooLargeError,
)
from .flush import FlushQueue
from .guard import CircuitBreaker, GuardedBackend, sync_primitive
from .keys import (
    EXCLUDED_PARAMS,
    group_model,
    lease_key,
    namespace_prefix,
    request_key,
    stored_key,
)
from .lifecycle import install_sigterm_drain
from .protection import ValueProtection
from .recording import (
    MissExplanation,
    RequestLog,
    RequestStore,
    check_replay_miss,
    explain,
    remember_requests,
)
from .redact import redact
from .sampling import PoolServer, parse_sampling
from .savings import enable_persistence, ledger_of, snapshot_of
from .savings import persist as persist_savings
from .stats import CacheStats

logger = logging.getLogger("asynccache")

__all__ = [
    "DEFAULT_CALL_TYPES", "SYNC_TWINS", "BaseCache", "CacheHit",
]

#: Call types LiteLLM caches by default; ``supported_call_types`` narrows them.
DEFAULT_CALL_TYPES: tuple[str, ...] = (
    "completion", "acompletion", "embedding", "aembedding", "transcription", "atranscription",
    "text_completion", "atext_completion", "rerank", "arerank", "responses", "aresponses",
)


class CacheHit(NamedTuple):
    """A value found in the cache, with where and when it came from (immutable).

    A named tuple rather than a frozen dataclass: a lookup builds one per hit, and a
    frozen dataclass costs about 0.9 us to build against 0.15 us.
    """

    value: Any
    key: str
    created_at: float | None
    expires_at: float | None
    age: float | None
    backend: str
    similarity: float | None = None
    matched_prompt: str | None = None


class _ReadCoalescer:
    """Merges the single-key reads of one loop tick into one batch read, per event loop.

    The first get of a tick becomes the batch's leader: it yields to the loop once, so
    every task already scheduled in this tick can add its key, then sends the whole
    batch itself (one ``MGET``) and hands each waiter its own result. A lone get pays
    one loop iteration, and no extra task is created.
    """

    def __init__(self, fetch: Callable[[Sequence[str]], Any], max_batch: int) -> None:
        self._fetch = fetch
        self._max_batch = max_batch
        self._batches: dict[asyncio.AbstractEventLoop, dict[str, list[asyncio.Future[Any]]]] = {}
        self._handovers: set[asyncio.Task[None]] = set()

    async def get(self, key: str) -> bytes | None:
        loop = asyncio.get_running_loop()
        batch = self._batches.get(loop)
        if batch is not None and len(batch) < self._max_batch:
            future: asyncio.Future[bytes | None] = loop.create_future()
            waiters = batch.get(key)
            if waiters is None:
                batch[key] = [future]
            else:
                waiters.append(future)
            return await future
        batch = self._batches[loop] = {key: []}
        try:
            await asyncio.sleep(0)
        finally:
            if self._batches.get(loop) is batch:
                del self._batches[loop]
        keys = list(batch)
        try:
            found = await self._fetch(keys)
        except BaseException as exc:
            followers = [f for k in keys for f in batch[k] if not f.done()]
            if isinstance(exc, asyncio.CancelledError) and followers:
                # The leader was cancelled: its followers still get their answers.
                handover = loop.create_task(self._finish(keys, batch))
                self._handovers.add(handover)
                handover.add_done_callback(self._handovers.discard)
            else:
                for follower in followers:
                    follower.set_exception(exc) if isinstance(exc, Exception) else follower.cancel()
            raise
        self._deliver(keys, found, batch)
        return found[0]

    async def _finish(self, keys: list[str], batch: dict[str, list[asyncio.Future[Any]]]) -> None:
        try:
            found = await self._fetch(keys)
        except Exception as exc:
            for key in keys:
                for future in batch[key]:
                    if not future.done():
                        future.set_exception(exc)
            return
        self._deliver(keys, found, batch)

    @staticmethod
    def _deliver(keys: list[str], found: Sequence[bytes | None],
                 batch: dict[str, list[asyncio.Future[Any]]]) -> None:
        for key, data in zip(keys, found, strict=True):
            for future in batch[key]:
                if not future.done():
                    future.set_result(data)


class BaseCache:
    """Template methods over a :class:`~asynccache.contract.Backend`.

    Every cache (memory, disk, Redis, object stores, DualCache, semantic stores and the
    :class:`~asynccache.Cache` facade) is one of these, so every cache has the key-value
    API, the LLM API (:meth:`get_cache_key`, :meth:`async_lookup`, :meth:`async_store`,
    usable by ``cached(fn, cache=...)``), stats and the sync twins. Its settings are a
    :class:`~asynccache.config.CacheSettings`, passed whole (``cache_settings=``), as
    keyword arguments, or both (keywords win).

    >>> cache = MemoryCache(ttl=60)                      # doctest: +SKIP
    >>> await cache.async_set_cache("k", {"answer": 42})  # doctest: +SKIP
    >>> await cache.async_get_cache("k")                  # doctest: +SKIP
    {'answer': 42}
    """

    def __init__(self, backend: Backend, cache_settings: CacheSettings | None = None,
                 **options: Any) -> None:
        settings = CacheSettings.build(options, type(self).__name__, cache_settings)
        self.cache_settings = settings
        if settings.namespace is not None:
            namespace_prefix(settings.namespace)  # validates
        max_item_size, timeout = settings.max_item_size, settings.timeout
        if isinstance(max_item_size, bool) or not isinstance(max_item_size, int) \
                or max_item_size <= 0:
            raise ConfigurationError(f"max_item_size must be a positive int, got {max_item_size!r}")
        if timeout is not None and (isinstance(timeout, bool) or timeout <= 0):
            raise ConfigurationError(f"timeout must be > 0 seconds or None, got {timeout!r}")
        self._init_llm_settings(settings)
        self._protection = ValueProtection(
            settings.encryption_keys, settings.compression, settings.compression_min_size)
        self._item_limit_note = ""
        if backend.max_item_size is not None and backend.max_item_size < max_item_size:
            max_item_size = backend.max_item_size
            self._item_limit_note = f" ({backend.item_limit_message()})"
        self.backend = backend
        self.namespace = settings.namespace
        self.default_ttl = validate_ttl(settings.ttl, "ttl")
        self.max_item_size = max_item_size
        self.clock = clock = settings.clock
        backend.clock = clock
        self._stats = CacheStats()
        self.breaker = CircuitBreaker(settings.breaker_threshold, settings.breaker_cooldown)
        self._guard = GuardedBackend(backend, self._stats, timeout=timeout, breaker=self.breaker)
        coalesce = backend.remote if settings.coalesce_reads is None else settings.coalesce_reads
        self._coalescer = (
            _ReadCoalescer(self._guard.get_many, backend.max_batch) if coalesce else None
        )
        write_behind = settings.write_behind
        if write_behind is None:
            write_behind = settings.flush_size is not None
        self._queue: FlushQueue | None = None
        if write_behind:
            self._queue = FlushQueue(
                self._guard.set_many, self._stats,
                flush_size=settings.flush_size or 500, flush_interval=settings.flush_interval,
                max_size=settings.max_queue_size, overflow=settings.queue_overflow,
                retries=settings.flush_retries,
            )
            register_exit_hook(self)
            install_sigterm_drain()
        self._closed = False
        self._sync_inline = backend.loop_free and self._queue is None and self._coalescer is None
        self._sync_on_caller_thread = backend.sync_on_caller_thread and self._queue is None
        # In-process backends with nothing in front of them take the lean path: their
        # primitives run to completion in the caller (no task, no timeout machinery).
        self._lean = self._sync_inline
        if self._lean:
            self._get_now = sync_primitive(backend, "read_many")
            self._set_now = sync_primitive(backend, "write_many")
            self._remove_now = sync_primitive(backend, "remove_many")

        self.request_store = _request_store(self, settings.record_requests)
        self.persist_savings = bool(settings.persist_savings)
        if self.persist_savings:
            enable_persistence(self)

    def _init_llm_settings(self, settings: CacheSettings) -> None:
        try:
            self.mode = CacheMode(settings.mode)
        except ValueError:
            raise ConfigurationError(
                f"mode must be 'default_on' or 'default_off', got {settings.mode!r}"
            ) from None
        call_types = settings.supported_call_types
        if isinstance(call_types, str):
            raise ConfigurationError(
                f"supported_call_types must be a list of call types, got {call_types!r}")
        self.supported_call_types = tuple(
            DEFAULT_CALL_TYPES if call_types is None else call_types)
        self.caching_groups = [tuple(group) for group in settings.caching_groups or ()]
        if settings.key_function is not None and not callable(settings.key_function):
            raise ConfigurationError("key_function must be a callable taking the call's kwargs")
        self.key_function = settings.key_function
        self._own_key_method = type(self).get_cache_key is BaseCache.get_cache_key
        excluded = settings.excluded_params
        self.excluded_params = EXCLUDED_PARAMS if excluded is None else frozenset(excluded)
        self.sampling = parse_sampling(settings.sampling)
        self.pool_server = PoolServer(self.sampling.serve)

    # -- naming -------------------------------------------------------------------------

    def _namespace(self, namespace: str | NotGiven | None) -> str | None:
        return self.namespace if namespace is NOT_GIVEN else namespace

    #: The stored key of a key in a namespace (the format lives in :mod:`asynccache.keys`).
    _stored_key = staticmethod(stored_key)

    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosedError(f"{type(self).__name__} was closed; create a new cache")

    # -- reads --------------------------------------------------------------------------

    async def _read_one(self, stored: str) -> bytes | None:
        # The single-key path of every get: queue first (read-your-writes), then the
        # coalescer (one MGET per loop tick) or a direct read.
        if self._queue is not None:
            queued = self._queue.lookup(stored)
            if queued is not None:
                return queued[1]
        if self._coalescer is not None:
            return await self._coalescer.get(stored)
        if self._lean:
            return self._guard.read_one_now(stored)
        return (await self._guard.get_many([stored]))[0]

    async def _read_many(self, stored: Sequence[str]) -> list[bytes | None]:
        queue = self._queue
        if queue is None:
            return await self._read_from_backend(stored)
        found: list[bytes | None] = [None] * len(stored)
        missing: list[int] = []
        for index, key in enumerate(stored):
            queued = queue.lookup(key)
            if queued is not None:
                found[index] = queued[1]
            else:
                missing.append(index)
        if not missing:
            return found
        results = await self._read_from_backend([stored[i] for i in missing])
        if len(missing) == len(stored):
            return results
        for index, data in zip(missing, results, strict=True):
            found[index] = data
        return found

    async def _read_from_backend(self, keys: Sequence[str]) -> list[bytes | None]:
        # Past the write-behind queue: the coalescer for a lone key, else batches.
        if len(keys) == 1 and self._coalescer is not None:
            return [await self._coalescer.get(keys[0])]
        step = self.backend.max_batch
        if len(keys) > step:
            results: list[bytes | None] = []
            for start in range(0, len(keys), step):
                results.extend(await self._read_from_backend(keys[start : start + step]))
            return results
        if self._lean:
            ok, got = self._guard.run_now("get", self._get_now, keys, None, len(keys))
            return got if ok and got is not None and len(got) == len(keys) else [None] * len(keys)
        return await self._guard.get_many(keys)

    def _decode_many(self, found: Sequence[bytes | None], namespace: str | None,
                     max_age: float | None, now: float) -> list[envelope.Entry | None]:
        """Decode a batch of stored bytes into live entries; misses are ``None``.

        Undecodable, expired and too-old entries are misses. Counters are added once per
        batch rather than per item (the stats lock is the hot spot of large batch gets).
        """
        entries: list[envelope.Entry | None] = []
        hits = corrupt = expired = size = 0
        decode = envelope.decode
        protection = self._protection
        for data in found:
            if data is None:
                entries.append(None)
                continue
            try:
                entry = decode(data, protection)
            except envelope.CorruptEntry:
                corrupt += 1
                entries.append(None)
                continue
            if entry.expires_at is not None and now >= entry.expires_at:
                expired += 1
                entries.append(None)
            elif (max_age is not None and entry.created_at is not None
                  and now - entry.created_at > max_age):
                entries.append(None)
            else:
                hits += 1
                size += len(data)
                entries.append(entry)
        self._count_reads(namespace, hits, len(entries) - hits, size, corrupt, expired)
        return entries

    def _count_reads(self, namespace: str | None, hits: int, misses: int, size: int,
                     corrupt: int, expired: int) -> None:
        tally = self._stats.tally(namespace)
        tally.hits += hits
        tally.misses += misses
        tally.bytes_read += size
        if corrupt:
            tally.corrupt_entries += corrupt
        if expired:
            tally.expired += expired

    def _decode_values(self, found: Sequence[bytes | None], namespace: str | None,
                       max_age: float | None) -> list[Any]:
        """Like :meth:`_decode_many` for callers that want values only (no Entry built)."""
        values: list[Any] = []
        append = values.append
        hits = corrupt = expired = size = 0
        now = self.clock()
        decode_live, protection = envelope.decode_live, self._protection
        expired_mark, too_old = envelope.EXPIRED, envelope.TOO_OLD
        for data in found:
            if data is None:
                append(None)
                continue
            try:
                value = decode_live(data, now, max_age, protection)
            except envelope.CorruptEntry:
                corrupt += 1
                append(None)
                continue
            if value is expired_mark:
                expired += 1
                append(None)
            elif value is too_old:
                append(None)
            else:
                hits += 1
                size += len(data)
                append(value)
        self._count_reads(namespace, hits, len(values) - hits, size, corrupt, expired)
        return values

    def _value_now(self, key: str, namespace: str | NotGiven | None,
                   max_age: float | None) -> Any:
        # The whole get of a lean (in-process) cache, without a single await.
        if self._closed:
            self._check_open()
        ns = self.namespace if namespace is NOT_GIVEN else namespace
        stored = stored_key(key, ns)
        data = self._guard.read_one_now(stored)
        tally = self._stats.tally(ns)
        if data is None:
            tally.misses += 1
            return None
        try:
            value = decode_live(data, self.clock(), max_age, self._protection)
        except envelope.CorruptEntry:
            tally.misses += 1
            tally.corrupt_entries += 1
            return None
        if type(value) is Miss:
            tally.misses += 1
            if value is EXPIRED:
                tally.expired += 1
                # An in-process store keeps no expiry of its own: drop the dead entry.
                self._guard.run_now("delete", self._remove_now, (stored,), 0)
            return None
        tally.hits += 1
        tally.bytes_read += len(data)
        return value

    def _get_cache_now(self, key: str, *, namespace: str | NotGiven | None = NOT_GIVEN,
                       max_age: float | None = None) -> Any:
        # get_cache of a lean cache: async_get_cache's whole body, with no coroutine.
        return self._value_now(key, namespace, max_age)

    def _to_hit(self, stored_key: str, data: bytes | None, namespace: str | None,
                max_age: float | None, now: float) -> CacheHit | None:
        entry = self._decode_many([data], namespace, max_age, now)[0]
        return None if entry is None else self._hit(stored_key, entry, now)

    def _hit(self, stored_key: str, entry: envelope.Entry, now: float) -> CacheHit:
        return CacheHit(entry.value, stored_key, entry.created_at, entry.expires_at,
                        entry.age(now), self.backend.name)

    async def async_get_entry(
        self, key: str, *, namespace: str | NotGiven | None = NOT_GIVEN,
        max_age: float | None = None,
    ) -> CacheHit | None:
        """Like :meth:`async_get_cache` but returns a :class:`CacheHit` with age and key.

        ``max_age`` (the ``s-maxage`` control) rejects entries older than that many seconds.
        """
        if self._lean:
            return self._entry_now(key, namespace, max_age)
        self._check_open()
        ns = self._namespace(namespace)
        stored = self._stored_key(key, ns)
        return self._to_hit(stored, await self._read_one(stored), ns, max_age, self.clock())

    def _entry_now(self, key: str, namespace: str | NotGiven | None,
                   max_age: float | None) -> CacheHit | None:
        # async_get_entry of a lean (in-process) cache, without an await.
        self._check_open()
        ns = self._namespace(namespace)
        stored = self._stored_key(key, ns)
        return self._to_hit(stored, self._guard.read_one_now(stored), ns, max_age, self.clock())

    async def async_get_cache(
        self, key: str, *, namespace: str | NotGiven | None = NOT_GIVEN,
        max_age: float | None = None,
    ) -> Any:
        """The cached value for ``key``, or ``None`` on a miss.

        A backend failure, an expired entry or an entry that cannot be decoded is a miss
        (and counted in :meth:`stats`), never an exception.
        """
        if self._lean:  # no await at all on the in-process hot path
            return self._value_now(key, namespace, max_age)
        self._check_open()
        ns = self.namespace if namespace is NOT_GIVEN else namespace
        data = await self._read_one(stored_key(key, ns))
        return self._decode_values((data,), ns, max_age)[0]

    async def async_batch_get_entries(
        self, keys: Sequence[str], *, namespace: str | NotGiven | None = NOT_GIVEN,
        max_age: float | None = None,
    ) -> list[CacheHit | None]:
        """One :class:`CacheHit` or ``None`` per key, order kept, in one batch read."""
        self._check_open()
        ns = self._namespace(namespace)
        stored = [self._stored_key(key, ns) for key in keys]
        found = await self._read_many(stored)
        now = self.clock()
        entries = self._decode_many(found, ns, max_age, now)
        return [None if e is None else self._hit(s, e, now)
                for s, e in zip(stored, entries, strict=True)]

    async def async_batch_get_cache(
        self, keys: Sequence[str], *, namespace: str | NotGiven | None = NOT_GIVEN,
        max_age: float | None = None,
    ) -> list[Any]:
        """One value (or ``None``) per key, order kept, in one batch read (one ``MGET``)."""
        self._check_open()
        ns = self._namespace(namespace)
        stored_key = self._stored_key
        found = await self._read_many([stored_key(key, ns) for key in keys])
        return self._decode_values(found, ns, max_age)

    # -- writes -------------------------------------------------------------------------

    def _encode(self, key: str, value: Any, ttl: float | NotGiven | None,
                namespace: str | None, now: float) -> WriteItem:
        stored = self._stored_key(key, namespace)
        seconds = resolve_ttl(ttl, self.default_ttl)
        data = envelope.encode(value, now, None if seconds is None else now + seconds, key,
                               self._protection)
        if len(data) > self.max_item_size:
            raise ItemTooLargeError(
                f"value for key {key[:200]!r} is {len(data)} bytes encoded, over "
                f"max_item_size={self.max_item_size}{self._item_limit_note}"
            )
        return stored, data, seconds

    async def _write(self, items: Sequence[WriteItem], namespace: str | None) -> list[bool]:
        if self._lean:
            return self._write_now(items, namespace)
        written = sum(len(item[1]) for item in items)
        if self._queue is not None:
            results = await self._queue.put_many(items)
        else:
            results = []
            step = self.backend.max_batch
            for start in range(0, len(items), step):
                results.extend(await self._guard.set_many(items[start : start + step]))
        self._count_writes(namespace, results, written)
        return results

    def _write_now(self, items: Sequence[WriteItem], namespace: str | None) -> list[bool]:
        # The lean path of in-process backends: the primitive runs in the caller.
        if len(items) == 1:
            return [self._write_one_now(items[0], namespace)]
        step = self.backend.max_batch
        results: list[bool] = []
        for start in range(0, len(items), step):
            chunk = items[start : start + step] if len(items) > step else items
            ok, outcome = self._guard.run_now("set", self._set_now, chunk, None,
                                              len(chunk))
            if not ok:
                results.extend([False] * len(chunk))
            elif outcome is None:
                results.extend([True] * len(chunk))
            else:
                results.extend(outcome)
        self._count_writes(namespace, results, sum(len(item[1]) for item in items))
        return results

    def _write_one_now(self, item: WriteItem, namespace: str | None) -> bool:
        stored = self._guard.write_one_now(item)
        tally = self._stats.tally(namespace)
        tally.bytes_written += len(item[1])
        if stored:
            tally.sets += 1
        else:
            tally.set_failures += 1
        return stored

    def _count_writes(self, namespace: str | None, results: list[bool], written: int) -> None:
        stored = sum(results)
        tally = self._stats.tally(namespace)
        tally.bytes_written += written
        tally.sets += stored
        if stored < len(results):
            tally.set_failures += len(results) - stored

    async def async_set_cache(
        self, key: str, value: Any, *, ttl: float | NotGiven | None = NOT_GIVEN,
        namespace: str | NotGiven | None = NOT_GIVEN,
    ) -> bool:
        """Store ``value`` under ``key``; return whether the backend accepted it.

        ``ttl`` is in seconds; ``ttl=None`` never expires; leaving it out uses the cache's
        default TTL. A value that cannot be encoded raises
        :class:`~asynccache.exceptions.SerializationError` naming the key; a backend
        failure returns ``False`` (counted and logged), never raises.
        """
        if self._closed:
            self._check_open()
        ns = self.namespace if namespace is NOT_GIVEN else namespace
        item = self._encode(key, value, ttl, ns, self.clock())
        if self._lean:
            return self._write_one_now(item, ns)
        return (await self._write([item], ns))[0]

    async def async_set_cache_pipeline(
        self,
        items: Mapping[str, Any] | Iterable[tuple[str, Any]] | Iterable[tuple[str, Any, Any]],
        *, ttl: float | NotGiven | None = NOT_GIVEN,
        namespace: str | NotGiven | None = NOT_GIVEN,
    ) -> list[bool]:
        """Store many entries in one batch (one pipeline on Redis); one flag per entry.

        ``items`` is a mapping or ``(key, value)`` / ``(key, value, ttl)`` tuples. Every
        entry is validated before anything is written, so a bad one raises and stores none.
        """
        self._check_open()
        ns = self._namespace(namespace)
        now = self.clock()
        pairs = items.items() if isinstance(items, Mapping) else items
        encoded: list[WriteItem] = []
        for entry in pairs:
            if len(entry) == 3:
                key, value, item_ttl = entry
            elif len(entry) == 2:
                (key, value), item_ttl = entry, ttl
            else:
                raise ConfigurationError(
                    f"pipeline items must be (key, value) or (key, value, ttl), got {entry!r:.100}"
                )
            encoded.append(self._encode(key, value, item_ttl, ns, now))
        return await self._write(encoded, ns)

    async def async_increment(
        self, key: str, amount: int | float = 1, *, ttl: float | NotGiven | None = NOT_GIVEN,
        namespace: str | NotGiven | None = NOT_GIVEN,
    ) -> int | float | None:
        """Add ``amount`` to a counter (created at 0 with ``ttl``); the new value or ``None``.

        The value is an ``int`` when whole, else a ``float``, on every backend. ``None``
        means the backend failed (the failure is counted and logged).
        """
        self._check_open()
        if not envelope.is_counter_value(amount):
            raise ConfigurationError(f"amount must be an int or a float, got {amount!r}")
        ns = self._namespace(namespace)
        return await self.increment_stored(self._stored_key(key, ns), amount,
                                           resolve_ttl(ttl, self.default_ttl))

    # -- stored-key access (for caches built on caches, such as DualCache) ------------

    async def read_stored(self, stored: Sequence[str]) -> list[bytes | None]:
        """The stored bytes of already-namespaced keys (queued writes first), in batches."""
        self._check_open()
        return await self._read_many(stored)

    async def write_stored(self, items: Sequence[WriteItem]) -> list[bool]:
        """Write already-encoded items (through the write-behind queue when on)."""
        self._check_open()
        return await self._write(items, None)

    async def delete_stored(self, stored: Sequence[str]) -> int:
        """Delete already-namespaced keys; return how many existed."""
        self._check_open()
        return await self._delete_stored(stored)

    async def clear_stored_prefix(self, prefix: str) -> int:
        """Delete every stored key starting with ``prefix``; return the count."""
        self._check_open()
        return await self._clear_prefix(prefix)

    async def increment_stored(self, stored: str, amount: int | float,
                               ttl: float | None) -> int | float | None:
        """Add to the counter at an already-namespaced key; ``None`` if the backend failed."""
        self._check_open()
        if self._queue is not None:
            await self._queue.forget([stored])
        result: int | float | None = await self._guard.call(
            "increment", lambda: self.backend.increment_counter(stored, amount, ttl), None
        )
        return None if result is None else envelope.counter_number(result)

    # -- LLM calls ----------------------------------------------------------------------

    def get_cache_key(self, *args: Any, **call_kwargs: Any) -> str:
        """SHA-256 key of an LLM request (see :mod:`asynccache.keys`).

        Argument and dict order never change it; credentials and transport settings are
        left out. A ``cache_key=`` argument is returned as it is (a preset key), and a
        ``key_function`` setting replaces the default.
        """
        return self._key_of(call_kwargs, args)

    def _key_of(self, call_kwargs: Mapping[str, Any], args: tuple[Any, ...] = ()) -> str:
        # get_cache_key without re-packing the arguments into a fresh dict.
        preset = call_kwargs.get("cache_key")
        if isinstance(preset, str) and preset:
            return preset
        if self.key_function is not None:
            return self.key_function(*args, **call_kwargs)
        if args:
            raise ConfigurationError("get_cache_key takes the call's keyword arguments only")
        return request_key(call_kwargs, caching_groups=self.caching_groups,
                           excluded=self.excluded_params)

    def controls(self, controls: Mapping[str, Any] | CacheControls | None) -> CacheControls:
        """Parse per-call ``cache={...}`` controls (raises naming a bad control)."""
        return parse_controls(controls)

    def caches_call_type(self, call_type: str) -> bool:
        """Whether calls of ``call_type`` are cached."""
        return call_type in self.supported_call_types

    async def async_lookup(
        self, call_kwargs: Mapping[str, Any], *, controls: CacheControls | None = None,
        key: str | None = None,
    ) -> CacheHit | None:
        """Look an LLM request up: exact key first, then similarity where the backend has it.

        Honours the ``no-cache``, ``s-maxage``, ``namespace`` and ``use-cache`` controls
        and the cache ``mode``. Never raises for backend failures (a failure is a miss).
        """
        controls = controls or DEFAULT_CONTROLS
        if not controls.reads(self.mode):
            return None
        if not key:
            # A subclass's own get_cache_key still decides the key.
            key = (self._key_of(call_kwargs) if self._own_key_method
                   else self.get_cache_key(**call_kwargs))
        namespace = controls.namespace
        if self._lean:
            hit = self._entry_now(key, namespace, controls.s_maxage)
        else:
            hit = await self.async_get_entry(key, namespace=namespace,
                                             max_age=controls.s_maxage)
        if hit is None and self.request_store is not None:
            await check_replay_miss(self, call_kwargs, key, namespace)
        backend = self.backend
        if hit is not None or not isinstance(backend, SimilaritySearch):
            return hit
        ns = self._namespace(namespace)
        request = self._similarity_request(call_kwargs)
        found = await self._guard.call(
            "search_similar",
            lambda: backend.search_similar(
                request, prefix=namespace_prefix(ns), threshold=controls.similarity_threshold
            ),
            None,
        )
        if found is None:
            return None
        data, similarity, matched_prompt = found
        if not await backend.verify_similar(request, matched_prompt, similarity):
            return None
        semantic_hit = self._to_hit(self._stored_key(key, ns), data, ns, controls.s_maxage,
                                    self.clock())
        if semantic_hit is None:
            return None
        return semantic_hit._replace(similarity=similarity, matched_prompt=matched_prompt)

    def _similarity_request(self, call_kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
        """The request as the similarity side sees it: grouped models under one name, so
        they share semantic entries as they share exact ones."""
        model = call_kwargs.get("model")
        grouped = group_model(model, self.caching_groups)
        return call_kwargs if grouped == model else {**call_kwargs, "model": grouped}

    async def async_store(
        self, call_kwargs: Mapping[str, Any], value: Any, *,
        controls: CacheControls | None = None, key: str | None = None,
    ) -> bool:
        """Store the answer to an LLM request (and index it where the backend searches).

        Honours ``no-store``, ``ttl``, ``namespace`` and the cache ``mode``; returns
        whether it was stored. ``value`` may be a pydantic model (a LiteLLM
        ``ModelResponse``): it is stored as its JSON form. Unserializable values raise;
        backend failures return False.
        """
        controls = controls or DEFAULT_CONTROLS
        if not controls.writes(self.mode):
            return False
        self._check_open()
        key = key or self.get_cache_key(**call_kwargs)
        ns = self._namespace(controls.namespace)
        item = self._encode(key, value, controls.ttl, ns, self.clock())
        if self.request_store is not None:
            await remember_requests(self, [(key, call_kwargs)], ns)
        backend = self.backend
        if not isinstance(backend, SimilaritySearch):
            return (await self._write([item], ns))[0]
        request = self._similarity_request(call_kwargs)
        ok = await self._guard.call(
            "index_similar",
            lambda: _index(backend, request, item, namespace_prefix(ns)),
            False,
        )
        self._stats.add("sets" if ok else "set_failures", namespace=ns)
        return ok

    async def async_explain_miss(
        self, call_kwargs: Mapping[str, Any], *, namespace: str | NotGiven | None = NOT_GIVEN,
    ) -> MissExplanation:
        """Why ``call_kwargs`` has (or has no) stored answer: the nearest stored request and
        the fields that differ. ``str()`` of the result is a readable report.

        Needs stored requests: a cassette, or a cache made with ``record_requests=True``.
        """
        return await explain(self, call_kwargs, namespace=namespace)

    # -- the lease capability (cross-process single-flight) ----------------------------

    @property
    def supports_lease(self) -> bool:
        """Whether the backend can hold a cross-process lease (:class:`LeaseSupport`)."""
        return isinstance(self.backend, LeaseSupport)

    def _lease_backend(self) -> LeaseSupport:
        backend = self.backend
        if not isinstance(backend, LeaseSupport):
            raise ConfigurationError(f"the {backend.name} backend cannot hold a lease")
        return backend

    async def async_acquire_lease(
        self, key: str, ttl: float, *, namespace: str | NotGiven | None = NOT_GIVEN
    ) -> str | None:
        """Take the lease on ``key`` for ``ttl`` seconds: a token if it is now ours, else None.

        Goes through the guard like every backend call; a store failure raises
        :class:`~asynccache.exceptions.BackendError` (the caller proceeds without a lease).
        """
        self._check_open()
        backend = self._lease_backend()
        stored = lease_key(key, self._namespace(namespace))
        token = uuid.uuid4().hex
        won = await self._guard.call(
            "lease", lambda: backend.acquire_lease(stored, token, validate_ttl(ttl) or 1.0),
            None)
        if won is None:
            raise BackendError(f"the {self.backend.name} backend could not take the lease")
        return token if won else None

    async def async_release_lease(
        self, key: str, token: str, *, namespace: str | NotGiven | None = NOT_GIVEN
    ) -> bool:
        """Give the lease on ``key`` up if ``token`` still holds it; whether it was released."""
        self._check_open()
        backend = self._lease_backend()
        stored = lease_key(key, self._namespace(namespace))
        released: bool = await self._guard.call(
            "lease", lambda: backend.release_lease(stored, token), False)
        return released

    # -- deletes, TTL, clear ------------------------------------------------------------

    async def async_delete_many(
        self, keys: Sequence[str], *, namespace: str | NotGiven | None = NOT_GIVEN
    ) -> int:
        """Delete the keys; return how many existed (queued writes of them are dropped)."""
        self._check_open()
        ns = self._namespace(namespace)
        return await self._delete_stored([self._stored_key(key, ns) for key in keys])

    async def _delete_stored(self, stored: Sequence[str]) -> int:
        if self._queue is not None:
            await self._queue.forget(stored)
        deleted = await self._guard.delete_many(stored)
        self._stats.add("deletes", deleted)
        return deleted

    async def async_delete_cache(
        self, key: str, *, namespace: str | NotGiven | None = NOT_GIVEN
    ) -> bool:
        """Delete one key; return whether it existed."""
        return await self.async_delete_many([key], namespace=namespace) > 0

    async def async_clear(self, namespace: str | NotGiven | None = NOT_GIVEN) -> int:
        """Delete every entry of ``namespace`` (default: this cache's namespace).

        With no namespace at all, deletes everything the backend holds for this cache.
        Returns the number of entries deleted.
        """
        self._check_open()
        ns = self._namespace(namespace)
        return await self._clear_prefix(namespace_prefix(ns))

    async def _clear_prefix(self, prefix: str) -> int:
        if self._queue is not None:
            await self._queue.forget(prefix=prefix)
        return await self._guard.clear(prefix)

    async def async_get_ttl(
        self, key: str, *, namespace: str | NotGiven | None = NOT_GIVEN
    ) -> float | None:
        """Seconds until ``key`` expires; ``None`` if it is missing or never expires."""
        self._check_open()
        ns = self._namespace(namespace)
        stored = self._stored_key(key, ns)
        queued = self._queue.lookup(stored) if self._queue is not None else None
        native = NOT_GIVEN if queued is not None else await self._guard.call(
            "get_ttl", lambda: self.backend.stored_ttl(stored), None
        )
        if native is not NOT_GIVEN:
            return native
        data = (await self._read_many([stored]))[0]
        if data is None:
            return None
        try:
            entry = envelope.decode(data, self._protection)
        except envelope.CorruptEntry:
            return None
        now = self.clock()
        if entry.is_expired(now):
            return None
        return entry.remaining_ttl(now)

    # -- health and lifecycle -----------------------------------------------------------

    async def async_ping(self) -> bool:
        """Whether the backend answers; never raises."""
        try:
            await self.async_test_connection()
        except CacheError:
            return False
        return True

    async def async_test_connection(self) -> dict[str, Any]:
        """Check the backend; raise :class:`CacheConnectionError` with a clear reason.

        Besides reaching the store, it writes, reads and deletes one short-lived probe
        entry in the cache's namespace, so credentials that may connect but not write
        (a Redis ACL, a bucket policy, a SQL grant) fail here with
        :class:`~asynccache.exceptions.AccessDeniedError` instead of turning every later
        write into a silent failure. Returns a small report
        (``{"status": "healthy", "backend": ..., "latency_ms": ...}``).
        """
        self._check_open()
        started = time.perf_counter()
        try:
            timeout = self._guard.timeout
            if timeout is None:
                await self._probe()
            else:
                await asyncio.wait_for(self._probe(), timeout)
        except CacheError:
            raise
        except Exception as exc:
            raise CacheConnectionError(
                f"{self.backend.name} backend is not usable: {type(exc).__name__}: "
                f"{redact(str(exc))[:500]}"
            ) from exc
        latency = (time.perf_counter() - started) * 1000
        return {"status": "healthy", "backend": self.backend.name, "latency_ms": round(latency, 3)}

    async def _probe(self) -> None:
        # Straight to the backend: a health check is neither counted in stats nor
        # allowed to trip the circuit breaker.
        await self.backend.check_health()
        probe = self._stored_key(f"asynccache-probe-{os.getpid()}-{id(self):x}", self.namespace)
        data = envelope.encode(True, self.clock(), self.clock() + 30)
        flags = await self.backend.write_many([(probe, data, 30.0)])
        if flags is not None and not all(flags):
            raise CacheConnectionError(f"{self.backend.name} backend refused a probe write")
        await self.backend.read_many([probe])
        await self.backend.remove_many([probe])

    async def async_flush(self) -> None:
        """Wait until every queued write-behind entry (and, with ``persist_savings``, the
        savings totals) has been sent."""
        if self.persist_savings and not self._closed:
            await self._persist_savings()
        if self._queue is not None:
            await self._queue.drain()

    async def aclose(self) -> None:
        """Drain queued writes, then close the backend's clients. Safe to call twice."""
        if self._closed:
            return
        if self.persist_savings:
            await self._persist_savings()
        self._closed = True
        if self._queue is not None:
            await self._queue.stop()
        await self.backend.aclose()

    async def _persist_savings(self) -> None:
        try:
            await persist_savings(self)
        except Exception:  # statistics never break a flush or a close
            logger.warning("asynccache: storing the savings totals failed", exc_info=True)

    async def disconnect(self) -> None:
        """Alias of :meth:`aclose` (LiteLLM's name)."""
        await self.aclose()

    async def drain_at_exit(self) -> None:
        """Called by the bridge at interpreter exit: send what is still queued."""
        if self._queue is not None and len(self._queue):
            await self._queue.drain()

    async def __aenter__(self) -> BaseCache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __enter__(self) -> BaseCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued_writes(self) -> int:
        """Entries waiting in the write-behind queue (0 when it is off)."""
        return 0 if self._queue is None else len(self._queue)

    def stats(self) -> dict[str, Any]:
        """Counters (hits, misses, sets, errors, bytes...), per namespace and backend state.

        Backends add their own events under ``backend_counters``; caches on a semantic
        store add ``semantic``: candidates the vector search found, how many were served,
        and rejections by reason. ``saved``: what LLM hits saved (tokens, USD, upstream
        seconds) per model and namespace (see :mod:`asynccache.savings`).
        """
        stats = {**self._stats.snapshot(), **self._guard.describe(),
                 "queued_writes": self.queued_writes, "saved": snapshot_of(self),
                 "backend_counters": dict(self.backend.counters())}
        if isinstance(self.backend, SimilaritySearch):
            stats["semantic"] = self.backend.similarity_stats()
        return stats

    def reset_stats(self) -> None:
        """Set every counter (semantic verification included) back to zero."""
        self._stats.reset()
        if isinstance(self.backend, SimilaritySearch):
            self.backend.reset_similarity_stats()
        ledger_of(self).reset()

    def __repr__(self) -> str:
        described = {**self.backend.describe(), **self._protection.describe()}
        settings = ", ".join(f"{k}={v!r}" for k, v in described.items())
        return (f"{type(self).__name__}(backend={self.backend.name!r}"
                f"{', ' + settings if settings else ''}, namespace={self.namespace!r}, "
                f"ttl={self.default_ttl!r})")

    # -- sync twins (generated, never hand-written) -------------------------------------

    lookup = sync_twin(async_lookup)
    store = sync_twin(async_store)
    get_cache = sync_twin(async_get_cache, lean="_get_cache_now")
    get_entry = sync_twin(async_get_entry)
    batch_get_cache = sync_twin(async_batch_get_cache)
    batch_get_entries = sync_twin(async_batch_get_entries)
    set_cache = sync_twin(async_set_cache)
    set_cache_pipeline = sync_twin(async_set_cache_pipeline)
    increment = sync_twin(async_increment)
    delete_cache = sync_twin(async_delete_cache)
    delete_many = sync_twin(async_delete_many)
    clear = sync_twin(async_clear)
    get_ttl = sync_twin(async_get_ttl)
    ping = sync_twin(async_ping)
    test_connection = sync_twin(async_test_connection)
    explain_miss = sync_twin(async_explain_miss)
    flush = sync_twin(async_flush)
    close = sync_twin(aclose)


def _request_store(cache: BaseCache, record_requests: bool | int) -> RequestStore | None:
    if isinstance(cache.backend, RequestStore):
        return cache.backend
    if record_requests is False:
        return None
    return RequestLog(cache, 256 if record_requests is True else record_requests)


async def _index(backend: SimilaritySearch, call_kwargs: Mapping[str, Any], item: WriteItem,
                 prefix: str) -> bool:
    await backend.index_similar(call_kwargs, item, prefix=prefix)
    return True


#: The async methods that have a generated sync twin, by twin name.
SYNC_TWINS: dict[str, str] = {
    name: value._async_name
    for name, value in vars(BaseCache).items()
    if isinstance(value, sync_twin)
}
