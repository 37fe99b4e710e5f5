"""``cached`` and ``cached_sync``: put a cache in front of any LLM call.

>>> from asynccache import Cache, cached
>>> cache = Cache()
>>> acompletion = cached(client.chat.completions.create, cache=cache)  # doctest: +SKIP
>>> resp = await acompletion(model="gpt-4o", messages=msgs, cache={"ttl": 600})  # doctest: +SKIP

What a wrapped call does:

* takes ``cache={...}`` (per-call controls) and ``caching=False`` (bypass) out of the
  keyword arguments before calling upstream;
* looks the request up (exact key, then similarity on semantic backends); a hit comes
  back as the same type the upstream call returns (pydantic models are rebuilt with
  ``model_validate``, dicts stay dicts) with :class:`~.responses.CacheInfo` attached;
* on a miss, makes one upstream call for all concurrent identical requests
  (single-flight) and stores the answer, unless it is empty or the call raised;
* ``stream=True`` calls are passed through chunk by chunk and stored once complete, and
  hits replay as a stream (see :mod:`.streaming`);
* embedding calls are cached per input (see :mod:`.embeddings`).

A cache failure never breaks the call: lookups that fail are misses and stores that fail
are logged. Only user errors (bad controls) raise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from ..base import BaseCache, CacheHit
from ..bridge import run_sync
from ..config import NotGiven
from ..controls import CacheControls
from ..exceptions import ConfigurationError
from ..facade import get_default_cache
from ..recording import ReplayMissError, check_replay_miss, remember_requests, request_store
from ..redact import redact
from ..sampling import (
    DEFAULT_SAMPLING,
    POOL_SUFFIX,
    SamplingPolicy,
    add_answers,
    is_full,
    merge_choices,
    new_pool,
    pool_request,
    samples_wanted,
    split_choices,
)
from ..savings import count_saved, upstream_clock
from .embeddings import cached_embedding, split_inputs
from .responses import (
    UPSTREAM_SECONDS,
    CacheInfo,
    attach_info,
    cache_info,
    from_payload,
    is_empty,
    is_pydantic,
    rebuild,
    resolve_type,
    to_data,
    to_payload,
    type_path,
)
from .singleflight import CacheLease, LeaseOptions, SingleFlight
from .streaming import (
    KNOWN_RESPONSE_TYPES,
    KNOWN_STREAM_TYPES,
    CachedStream,
    ReplayStream,
    replay_chunks,
)

__all__ = [
    "EMBEDDING_CALL_TYPES", "CachedFunction", "OnHit", "SyncStream", "cached", "cached_sync",
]

logger = logging.getLogger("asynccache.integrations")

EMBEDDING_CALL_TYPES = frozenset({"embedding", "aembedding"})

OnHit = Callable[[CacheInfo], Any]


@dataclasses.dataclass
class _Outcome:
    """What a flight produced: the stored payload (to rebuild copies) and the result."""

    payload: dict[str, Any] | None
    result: Any
    info: CacheInfo


# One flight table for every wrapper: two wrappers of the same function on the same
# cache share flights (each rebuilds its own result type from the stored payload).
_FLIGHTS: SingleFlight[_Outcome] = SingleFlight()


class CachedFunction:
    """The state behind a ``cached`` wrapper (its remembered response types, flights)."""

    def __init__(self, fn: Callable[..., Any], cache: BaseCache | None, call_type: str,
                 key: Callable[..., str] | None, on_hit: OnHit | None,
                 single_flight: bool, lease: LeaseOptions | bool | None = None) -> None:
        if not callable(fn):
            raise ConfigurationError(f"cached() needs a callable, got {type(fn).__name__}")
        if cache is not None and not isinstance(cache, BaseCache):
            raise ConfigurationError(
                f"cache must be an asynccache cache (Cache, MemoryCache, RedisCache...), "
                f"got {type(cache).__name__}")
        if key is not None and not callable(key):
            raise ConfigurationError("key must be a callable taking the call's kwargs")
        self.fn = fn
        self.cache = cache
        self.call_type = call_type
        self.key = key
        self.on_hit = on_hit
        self.single_flight = single_flight
        self.response_type: type | None = None
        self.chunk_type: type | None = None
        self.flights = _FLIGHTS
        if lease is True:
            lease = LeaseOptions()
        elif lease is False:
            lease = None
        if lease is not None and not isinstance(lease, LeaseOptions):
            raise ConfigurationError(f"lease must be True or LeaseOptions(...), got {lease!r}")
        if lease is not None and cache is not None and not cache.supports_lease:
            raise ConfigurationError(
                f"lease=... needs a Redis backend; this cache uses {cache.backend.name!r}")
        self.lease = lease

    # -- helpers ------------------------------------------------------------------------

    def _resolve_cache(self) -> BaseCache | None:
        return self.cache if self.cache is not None else get_default_cache()

    def _enabled_for(self, cache: BaseCache) -> bool:
        name = self.call_type
        return cache.caches_call_type(name) or cache.caches_call_type("a" + name) or (
            name.startswith("a") and cache.caches_call_type(name[1:]))

    async def _upstream(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result = self.fn(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    def _key(self, cache: BaseCache, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if self.key is not None:
            key = self.key(*args, **kwargs)
            if not isinstance(key, str) or not key:
                raise ConfigurationError(f"key function returned {key!r}, not a non-empty str")
            return key
        key_kwargs = dict(kwargs)
        if args:
            key_kwargs["__args__"] = list(args)
        return cache.get_cache_key(**key_kwargs)

    @staticmethod
    def _fail_open(what: str, exc: BaseException) -> None:
        # Fail-open: the call goes on as if there were no cache.
        logger.warning("asynccache: %s failed (the call goes on without the cache): %s: %s",
                       what, type(exc).__name__, redact(str(exc))[:300])

    async def _notify(self, info: CacheInfo) -> None:
        if self.on_hit is None:
            return
        try:
            outcome = self.on_hit(info)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            logger.exception("asynccache: the on_hit callback raised (ignored)")

    def _class_for(self, stored_type: Any) -> type | None:
        return self.response_type or resolve_type(stored_type)

    def _learn(self, result: Any) -> None:
        if is_pydantic(result):
            self.response_type = type(result)

    @staticmethod
    def _hit_info(hit: CacheHit, key: str) -> CacheInfo:
        return CacheInfo(cache_hit=True, cache_key=key, age=hit.age, backend=hit.backend,
                         similarity=hit.similarity)

    @staticmethod
    def _payload_of(hit: CacheHit) -> dict[str, Any] | None:
        payload = from_payload(hit.value)
        if payload is None and isinstance(hit.value, dict) and "choices" in hit.value:
            # An entry written directly with set_cache(get_cache_key(...), response).
            payload = {"type": None, "data": hit.value}
        return payload

    # -- the call -----------------------------------------------------------------------

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raw_controls = kwargs.pop("cache", None)
        caching = kwargs.pop("caching", True)
        cache = self._resolve_cache()
        if cache is None or caching is False or not self._enabled_for(cache):
            return await self._upstream(args, kwargs)
        controls = cache.controls(raw_controls)  # a bad control is the user's error: raise
        if controls.no_cache and (store := request_store(cache)) is not None and store.replay_only:
            # A replaying cassette has no fresh answer to fetch: "no-cache" reads it too.
            controls = dataclasses.replace(controls, no_cache=False)
        if not controls.enabled(cache.mode):
            return await self._upstream(args, kwargs)
        streaming = kwargs.get("stream") is True
        policy = getattr(cache, "sampling", DEFAULT_SAMPLING)
        if policy.handles(kwargs) and self.call_type not in EMBEDDING_CALL_TYPES:
            return await self._sampled(cache, args, kwargs, controls, policy, streaming)

        if self.call_type in EMBEDDING_CALL_TYPES and not streaming and not args:
            split = split_inputs(kwargs.get("input"))
            if split is not None:
                return await self._embedding(cache, kwargs, controls, *split)

        try:
            key = self._key(cache, args, kwargs)
        except ConfigurationError as exc:
            if self.key is not None:
                raise
            self._fail_open("building the cache key", exc)
            return await self._upstream(args, kwargs)

        if streaming:
            return await self._stream(cache, args, kwargs, controls, key)
        if self.single_flight and controls.reads(cache.mode):
            flight = (id(cache), repr(controls.namespace), key, controls.s_maxage)
            outcome, led = await self.flights.run(
                flight, lambda: self._lookup_or_call(cache, args, kwargs, controls, key))
            if led:
                result = outcome.result
            else:
                outcome = dataclasses.replace(
                    outcome, info=dataclasses.replace(outcome.info, coalesced=True))
                result = (rebuild(outcome.payload["data"], self._class_for(outcome.payload["type"]))
                          if outcome.payload is not None else outcome.result)
        else:
            outcome = await self._lookup_or_call(cache, args, kwargs, controls, key)
            result = outcome.result
        if outcome.info.cache_hit and outcome.payload is not None:
            self._count_saved(cache, controls, kwargs, outcome.payload)
        if outcome.info.cache_hit or outcome.info.coalesced:
            await self._notify(outcome.info)
        return attach_info(result, outcome.info)

    @staticmethod
    def _count_saved(cache: BaseCache, controls: CacheControls, kwargs: dict[str, Any],
                     payload: dict[str, Any]) -> None:
        given = controls.namespace
        namespace = cache.namespace if isinstance(given, NotGiven) else given
        count_saved(cache, payload.get("data"), namespace=namespace, model=kwargs.get("model"),
                    seconds=payload.get(UPSTREAM_SECONDS))

    async def _lookup(self, cache: BaseCache, kwargs: dict[str, Any], controls: CacheControls,
                      key: str) -> CacheHit | None:
        if not controls.reads(cache.mode):
            return None
        try:
            return await cache.async_lookup(kwargs, controls=controls, key=key)
        except ReplayMissError:
            raise  # a cassette in replay mode: the call must not go upstream
        except Exception as exc:
            self._fail_open("cache lookup", exc)
            return None

    async def _store(self, cache: BaseCache, kwargs: dict[str, Any], payload: dict[str, Any],
                     controls: CacheControls, key: str) -> None:
        try:
            await cache.async_store(kwargs, payload, controls=controls, key=key)
        except Exception as exc:
            logger.warning("asynccache: storing a response failed (the call still succeeds): "
                           "%s: %s", type(exc).__name__, redact(str(exc))[:300])

    async def _lookup_or_call(self, cache: BaseCache, args: tuple[Any, ...], kwargs: dict[str, Any],
                              controls: CacheControls, key: str) -> _Outcome:
        hit = await self._lookup(cache, kwargs, controls, key)
        payload = None if hit is None else self._payload_of(hit)
        if hit is not None and payload is not None:
            result = rebuild(payload["data"], self._class_for(payload.get("type")))
            return _Outcome(payload, result, self._hit_info(hit, key))
        if self.lease is not None and cache.supports_lease:
            return await self._leased_call(cache, args, kwargs, controls, key, self.lease)
        return await self._call_and_store(cache, args, kwargs, controls, key)

    async def _call_and_store(self, cache: BaseCache, args: tuple[Any, ...], kwargs: dict[str, Any],
                              controls: CacheControls, key: str) -> _Outcome:
        started = upstream_clock()
        result = await self._upstream(args, kwargs)  # errors propagate, nothing is stored
        elapsed = upstream_clock() - started
        self._learn(result)
        info = CacheInfo(cache_hit=False, cache_key=key, backend=cache.backend.name)
        if is_empty(result):
            return _Outcome(None, result, info)
        try:
            payload = to_payload(result)
        except Exception as exc:
            self._fail_open("serialising the response", exc)
            return _Outcome(None, result, info)
        payload[UPSTREAM_SECONDS] = round(elapsed, 3)
        await self._store(cache, kwargs, payload, controls, key)
        return _Outcome(payload, result, info)

    async def _leased_call(self, cache: BaseCache, args: tuple[Any, ...], kwargs: dict[str, Any],
                           controls: CacheControls, key: str, options: LeaseOptions) -> _Outcome:
        """Cross-process single-flight: one holder of the Redis lease calls upstream."""
        lease = CacheLease(cache, key, controls.namespace, options)
        delay, waited = options.poll_initial, 0.0
        token: str | None = None
        while True:
            try:
                token = await lease.acquire()
            except Exception as exc:
                self._fail_open("acquiring the distributed lease", exc)
                break
            if token is not None or waited >= options.max_wait:
                break
            # Another process is calling upstream: wait for its answer to appear.
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, options.poll_max)
            hit = await self._lookup(cache, kwargs, controls, key)
            payload = None if hit is None else self._payload_of(hit)
            if hit is not None and payload is not None:
                result = rebuild(payload["data"], self._class_for(payload.get("type")))
                info = dataclasses.replace(self._hit_info(hit, key), coalesced=True)
                return _Outcome(payload, result, info)
        try:
            return await self._call_and_store(cache, args, kwargs, controls, key)
        finally:
            if token is not None:
                try:
                    await lease.release(token)
                except Exception as exc:  # it expires on its own after options.ttl
                    self._fail_open("releasing the distributed lease", exc)

    # -- requests meant to vary (see asynccache.sampling) --------------------------------

    async def _sampled(self, cache: BaseCache, args: tuple[Any, ...], kwargs: dict[str, Any],
                       controls: CacheControls, policy: SamplingPolicy,
                       streaming: bool) -> Any:
        request = pool_request(kwargs)
        pool_key = self._key(cache, args, request) + POOL_SUFFIX
        store = request_store(cache)
        if policy.mode == "skip":
            await check_replay_miss(cache, request, pool_key, controls.namespace)
            return await self._upstream(args, kwargs)
        wanted = samples_wanted(kwargs)
        hit = None
        if controls.reads(cache.mode):
            try:
                hit = await cache.async_get_entry(pool_key, namespace=controls.namespace,
                                                  max_age=controls.s_maxage)
            except Exception as exc:
                self._fail_open("sample pool lookup", exc)
        pool = new_pool(None if hit is None else hit.value)
        enough = len(pool["answers"]) >= wanted
        if hit is not None and enough and (
                is_full(pool, policy.pool_size) or (store is not None and store.replay_only)):
            data = merge_choices(cache.pool_server.pick(pool_key, pool["answers"], wanted))
            info = self._hit_info(hit, pool_key)
            self._count_saved(cache, controls, kwargs,
                              {"data": data, UPSTREAM_SECONDS: pool["upstream_seconds"]})
            await self._notify(info)
            if streaming:
                chunk_cls = self.chunk_type or resolve_type(
                    KNOWN_RESPONSE_TYPES.get(pool["type"] or "", ""))
                return ReplayStream([rebuild(c, chunk_cls) for c in replay_chunks(data)], info)
            return attach_info(rebuild(data, self._class_for(pool["type"])), info)
        await check_replay_miss(cache, request, pool_key, controls.namespace)

        info = CacheInfo(cache_hit=False, cache_key=pool_key, backend=cache.backend.name)
        started = upstream_clock()
        result = await self._upstream(args, kwargs)

        async def add(data: Any, stored_type: str | None) -> None:
            if not controls.writes(cache.mode) or is_empty(data):
                return
            try:
                current = await cache.async_get_cache(pool_key, namespace=controls.namespace)
                updated = add_answers(new_pool(current), split_choices(data), policy.pool_size,
                                      stored_type, round(upstream_clock() - started, 3))
                await cache.async_set_cache(pool_key, updated, ttl=controls.ttl,
                                            namespace=controls.namespace)
                await remember_requests(cache, [(pool_key, request)], controls.namespace)
            except Exception as exc:
                self._fail_open("adding to the sample pool", exc)

        if streaming:
            async def on_complete(assembled: dict[str, Any], chunk_type: type | None) -> None:
                if chunk_type is not None:
                    self.chunk_type = chunk_type
                await add(assembled, KNOWN_STREAM_TYPES.get(type_path(chunk_type))
                          if chunk_type else None)

            return CachedStream(result, on_complete, info)
        self._learn(result)
        await add(to_data(result), type_path(type(result)) if is_pydantic(result) else None)
        return attach_info(result, info)

    # -- streaming ----------------------------------------------------------------------

    async def _stream(self, cache: BaseCache, args: tuple[Any, ...], kwargs: dict[str, Any],
                      controls: CacheControls, key: str) -> Any:
        hit = await self._lookup(cache, kwargs, controls, key)
        payload = None if hit is None else self._payload_of(hit)
        if hit is not None and payload is not None and isinstance(payload["data"], dict):
            info = self._hit_info(hit, key)
            chunk_cls = self.chunk_type or resolve_type(
                KNOWN_RESPONSE_TYPES.get(payload.get("type") or "", ""))
            recorded = payload.get("chunks")
            chunks = [rebuild(chunk, chunk_cls) for chunk in (
                recorded if isinstance(recorded, list) else replay_chunks(payload["data"]))]
            self._count_saved(cache, controls, kwargs, payload)
            await self._notify(info)
            return ReplayStream(chunks, info)

        started = upstream_clock()
        upstream = await self._upstream(args, kwargs)
        info = CacheInfo(cache_hit=False, cache_key=key, backend=cache.backend.name)

        async def on_complete(assembled: dict[str, Any], chunk_type: type | None) -> None:
            if chunk_type is not None:
                self.chunk_type = chunk_type
            if is_empty(assembled):
                return
            stored_type = KNOWN_STREAM_TYPES.get(type_path(chunk_type)) if chunk_type else None
            if stored_type is None and self.response_type is not None:
                stored_type = type_path(self.response_type)
            payload = {**to_payload(assembled), "type": stored_type,
                       UPSTREAM_SECONDS: round(upstream_clock() - started, 3)}
            if stream.kept_chunks is not None:
                payload["chunks"] = stream.kept_chunks
            await self._store(cache, kwargs, payload, controls, key)

        stream = CachedStream(upstream, on_complete, info,
                              keep_chunks=getattr(cache.backend, "keeps_stream_chunks", False))
        return stream

    # -- embeddings ---------------------------------------------------------------------

    async def _embedding(self, cache: BaseCache, kwargs: dict[str, Any], controls: CacheControls,
                         inputs: list[Any], single: bool) -> Any:
        def key_for(item_kwargs: dict[str, Any]) -> str:
            return self._key(cache, (), item_kwargs)

        async def upstream(sent: dict[str, Any]) -> Any:
            return await self._upstream((), sent)

        result, seen = await cached_embedding(
            cache=cache, mode=cache.mode, kwargs=kwargs, inputs=inputs, single=single,
            controls=controls, key_for=key_for, upstream=upstream,
            remembered_type=self.response_type, fail_open=self._fail_open,
        )
        if seen is not None:
            self.response_type = seen
        info = cache_info(result)
        if info is not None and info.cache_hit:
            await self._notify(info)
        return result


def cached(
    fn: Callable[..., Any],
    cache: BaseCache | None = None,
    *,
    call_type: str = "completion",
    key: Callable[..., str] | None = None,
    on_hit: OnHit | None = None,
    single_flight: bool = True,
    lease: LeaseOptions | bool | None = None,
) -> Callable[..., Coroutine[Any, Any, Any]]:
    """Wrap an async LLM call (OpenAI, Anthropic, ``litellm.acompletion``, your own).

    * ``cache``: the :class:`~asynccache.Cache` to use (default: the one set with
      :func:`~asynccache.enable_cache`, looked up at call time; none set: no caching);
    * ``call_type``: ``"completion"``, ``"embedding"`` (cached per input),
      ``"transcription"``, ``"text_completion"``, ``"rerank"``, ``"responses"``...;
      a type missing from the cache's ``supported_call_types`` is not cached;
    * ``key``: replace the key function; called with the call's arguments;
    * ``on_hit``: called (sync or async) with a :class:`~.responses.CacheInfo` whenever
      a result did not come from this call's own upstream request;
    * ``single_flight``: concurrent identical misses make one upstream call (default on);
    * ``lease``: ``True`` or :class:`~.singleflight.LeaseOptions` to extend single-flight
      across processes with a lease key on Redis (Redis backends only; off by default).

    Per call: ``cache={"ttl": 600, "no-cache": True, "namespace": "eu", ...}`` and
    ``caching=False``. :func:`~.responses.cache_info` tells where a result came from.

    >>> acompletion = cached(client.chat.completions.create, cache=Cache())  # doctest: +SKIP
    >>> resp = await acompletion(model="gpt-4o", messages=msgs)              # doctest: +SKIP
    """
    state = CachedFunction(fn, cache, call_type, key, on_hit, single_flight, lease)

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await state(*args, **kwargs)

    wrapper.cached_function = state  # type: ignore[attr-defined]
    return wrapper


class SyncStream:
    """A cached stream for sync code: iterate it with ``for``; ``close()`` stops early."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.cache_info: CacheInfo | None = cache_info(stream)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        more, chunk = run_sync(_next_chunk(self._stream))
        if not more:
            raise StopIteration
        return chunk

    def close(self) -> None:
        """Stop early (nothing is stored)."""
        run_sync(self._stream.aclose())

    def __enter__(self) -> SyncStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


async def _next_chunk(stream: Any) -> tuple[bool, Any]:
    # StopAsyncIteration cannot cross the bridge as an exception; turn it into a flag.
    try:
        return True, await stream.__anext__()
    except StopAsyncIteration:
        return False, None


def _is_async_callable(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None))  # noqa: B004 - callable objects with async __call__


def cached_sync(
    fn: Callable[..., Any],
    cache: BaseCache | None = None,
    *,
    call_type: str = "completion",
    key: Callable[..., str] | None = None,
    on_hit: OnHit | None = None,
    single_flight: bool = True,
    lease: LeaseOptions | bool | None = None,
) -> Callable[..., Any]:
    """The blocking shim of :func:`cached`, for scripts: same options, same behaviour.

    ``fn`` may be async (``AsyncOpenAI().chat.completions.create``), run on asynccache's
    bridge loop, or sync (``OpenAI().chat.completions.create``), run in a worker thread of
    that loop. ``stream=True`` returns a :class:`SyncStream` to iterate with ``for``.

    >>> completion = cached_sync(OpenAI().chat.completions.create, cache=Cache())  # doctest: +SKIP
    >>> completion(model="gpt-4o", messages=msgs)                                 # doctest: +SKIP
    """
    if _is_async_callable(fn):
        target: Callable[..., Any] = fn
    else:
        async def target(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(fn, *args, **kwargs)

    async_wrapper = cached(target, cache, call_type=call_type, key=key, on_hit=on_hit,
                           single_flight=single_flight, lease=lease)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = run_sync(async_wrapper(*args, **kwargs))
        if isinstance(result, CachedStream | ReplayStream):
            return SyncStream(result)
        return result

    wrapper.cached_function = async_wrapper.cached_function  # type: ignore[attr-defined]
    return wrapper
