"""``Cache(type=...)``: the LiteLLM-shaped entry point. Thin: no storage logic here."""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .base import BaseCache, CacheHit, SimilaritySearch, WriteItem
from .bridge import sync_twin
from .config import NOT_GIVEN, NotGiven
from .controls import DEFAULT_CONTROLS, CacheControls, CacheMode, parse_controls
from .exceptions import ConfigurationError
from .keys import EXCLUDED_PARAMS, group_model, namespace_prefix, request_key
from .recording import (
    MissExplanation,
    RequestLog,
    RequestStore,
    check_replay_miss,
    explain,
    remember_requests,
)
from .registry import canonical_type, create_backend
from .sampling import PoolServer, SamplingPolicy, parse_sampling
from .savings import enable_persistence
from .savings import persist as persist_savings
from .semantic.base import EmbedWhat, split_request
from .semantic.guard import Judge, SemanticGuard, SemanticVerifier, parse_guard, parse_judge

logger = logging.getLogger("asynccache")

#: Call types LiteLLM caches by default; ``supported_call_types`` narrows them.
DEFAULT_CALL_TYPES: tuple[str, ...] = (
    "completion", "acompletion", "embedding", "aembedding", "transcription", "atranscription",
    "text_completion", "atext_completion", "rerank", "arerank", "responses", "aresponses",
)

_COMMON_SETTINGS = frozenset(
    name for name in inspect.signature(BaseCache.__init__).parameters
    if name not in {"self", "backend"}
)
# Names LiteLLM users already write, mapped to ours.
_SETTING_ALIASES = {
    "default_in_memory_ttl": "ttl",
    "default_in_redis_ttl": "ttl",
    "default_ttl": "ttl",
    "redis_flush_size": "flush_size",
    "redis_flush_interval": "flush_interval",
    "max_size_in_memory": "max_entries",
}


class Cache(BaseCache):
    """The cache users create: pick a backend by ``type`` and pass its settings.

    ``Cache()`` is the embedded in-memory default. Other types: ``"disk"``, ``"sqlite"``,
    ``"sql"`` (PostgreSQL, MariaDB/MySQL, SQLite), ``"redis"`` (``redis_startup_nodes=``
    for a cluster), ``"memcached"`` (``servers=[...]``), ``"s3"``, ``"gcs"``,
    ``"azure_blob"``, ``"redis-semantic"``, ``"qdrant-semantic"``, ``"postgres-semantic"``,
    ``"local-semantic"``. Settings shared by all backends (``namespace``, ``ttl``,
    ``flush_size``...) are those of :class:`BaseCache`; the rest go to the backend, and a
    setting no one knows raises naming it.

    LLM-call settings:

    * ``mode``: ``"default_on"`` (cache unless ``cache={"no-cache": True}``) or
      ``"default_off"`` (cache only calls with ``cache={"use-cache": True}``);
    * ``supported_call_types``: which call types the wrappers cache;
    * ``caching_groups``: models that share entries, e.g. ``[("gpt-4o", "gpt-4o-2024-08-06")]``;
    * ``key_function``: replace :meth:`get_cache_key` (called with the call's kwargs);
    * ``sampling``: what to do with requests meant to vary (temperature > 0, top_p < 1,
      n > 1, no seed): ``"cache"`` (default), ``"skip"`` or ``"pool"``, or a dict /
      :class:`~asynccache.sampling.SamplingPolicy` (``pool_size``, ``serve``);
    * ``persist_savings``: also add what hits saved (see :mod:`asynccache.savings`) to
      totals stored in the cache itself, every 10 s and on flush/close, so the hits of
      every process add up and ``asynccache stats`` shows them;
    * ``record_requests``: also store each request (scrubbed of secrets) so
      :meth:`explain_miss` can say why a request missed (``True`` keeps the 256 most
      recent per namespace, an int another number; cassettes always keep them).

    Semantic types verify every candidate the vector search finds before serving it
    (see :mod:`asynccache.semantic.guard`):

    * ``semantic_guard``: ``True`` (default: every check), ``False``, a list of check
      names, or a :class:`~asynccache.semantic.guard.SemanticGuard`;
    * ``semantic_judge``: an optional second opinion, ``judge(query, candidate,
      similarity) -> bool`` (async or not), asked after the guard accepts;
      ``semantic_judge_timeout`` (seconds, default 10) bounds it.

    >>> cache = Cache()
    >>> key = cache.get_cache_key(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    >>> cache.set_cache(key, {"choices": [{"message": {"content": "hello"}}]}, ttl=60)
    True
    >>> cache.get_cache(key)["choices"][0]["message"]["content"]
    'hello'
    """

    def __init__(
        self,
        type: str = "local",
        *,
        mode: CacheMode | str = CacheMode.default_on,
        supported_call_types: Iterable[str] | None = None,
        caching_groups: Sequence[Iterable[str]] | None = None,
        key_function: Callable[..., str] | None = None,
        excluded_params: Iterable[str] | None = None,
        record_requests: bool | int = False,
        persist_savings: bool = False,
        sampling: SamplingPolicy | Mapping[str, Any] | str | None = None,
        semantic_guard: bool | Iterable[str] | SemanticGuard = True,
        semantic_judge: Judge | None = None,
        semantic_judge_timeout: float | None = 10.0,
        **settings: Any,
    ) -> None:
        self.type = canonical_type(type)
        try:
            self.mode = CacheMode(mode)
        except ValueError:
            raise ConfigurationError(
                f"mode must be 'default_on' or 'default_off', got {mode!r}"
            ) from None
        self.supported_call_types = tuple(
            DEFAULT_CALL_TYPES if supported_call_types is None else supported_call_types
        )
        self.caching_groups = [tuple(group) for group in caching_groups or ()]
        self.key_function = key_function
        self.excluded_params = (
            EXCLUDED_PARAMS if excluded_params is None else frozenset(excluded_params)
        )
        self.sampling = parse_sampling(sampling)
        self.pool_server = PoolServer(self.sampling.serve)
        #: The verification stage after the vector search (guard, optional judge, counters).
        self.semantic_verifier = SemanticVerifier(
            parse_guard(semantic_guard), parse_judge(semantic_judge), semantic_judge_timeout
        )
        common, backend_settings = _split_settings(settings)
        self._settings = dict(settings)
        super().__init__(create_backend(self.type, backend_settings), **common)
        self.request_store = _request_store(self, record_requests)
        self.persist_savings = bool(persist_savings)
        if self.persist_savings:
            enable_persistence(self)

    def get_cache_key(self, *args: Any, **call_kwargs: Any) -> str:
        """SHA-256 key of an LLM request (see :mod:`asynccache.keys`).

        Argument and dict order never change it; credentials and transport settings are
        left out. A ``cache_key=`` argument is returned as it is (a preset key), and a
        ``key_function`` given to the constructor replaces the default.
        """
        preset = call_kwargs.get("cache_key")
        if isinstance(preset, str) and preset:
            return preset
        if self.key_function is not None:
            return self.key_function(*args, **call_kwargs)
        if args:
            raise ConfigurationError("get_cache_key takes the call's keyword arguments only")
        return request_key(call_kwargs, caching_groups=self.caching_groups,
                           excluded=self.excluded_params)

    async def async_lookup(
        self, call_kwargs: Mapping[str, Any], *, controls: CacheControls | None = None,
        key: str | None = None,
    ) -> CacheHit | None:
        """Look an LLM request up: exact key first, then similarity on semantic backends.

        Honours the ``no-cache``, ``s-maxage``, ``namespace`` and ``use-cache`` controls
        and the cache ``mode``. Never raises for backend failures (a failure is a miss).
        """
        controls = controls or DEFAULT_CONTROLS
        if not controls.reads(self.mode):
            return None
        key = key or self.get_cache_key(**call_kwargs)
        namespace = controls.namespace
        hit = await self.async_get_entry(key, namespace=namespace, max_age=controls.s_maxage)
        if hit is None and self.request_store is not None:
            await check_replay_miss(self, call_kwargs, key, namespace)
        if hit is not None or not isinstance(self.backend, SimilaritySearch):
            return hit
        ns = self._namespace(namespace)
        backend = self.backend
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
        # Every semantic store answers through here, so every one is verified the same way.
        query = _query_text(backend, request)
        if query is None or await self.semantic_verifier.verify(
            query, matched_prompt, similarity
        ) is not None:
            return None
        semantic_hit = self._to_hit(self._stored_key(key, ns), data, ns, controls.s_maxage,
                                    self.clock())
        if semantic_hit is None:
            return None
        return dataclasses.replace(semantic_hit, similarity=similarity,
                                   matched_prompt=matched_prompt)

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
        """Store the answer to an LLM request (and index it on semantic backends).

        Honours ``no-store``, ``ttl``, ``namespace`` and the cache ``mode``; returns
        whether it was stored. Unserializable values raise; backend failures return False.
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
        if not isinstance(self.backend, SimilaritySearch):
            return (await self._write([item], ns))[0]
        backend = self.backend
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

        Needs stored requests: a cassette, or ``Cache(..., record_requests=True)``.
        """
        return await explain(self, call_kwargs, namespace=namespace)

    explain_miss = sync_twin(async_explain_miss)

    def stats(self) -> dict[str, Any]:
        """Counters as :meth:`BaseCache.stats`; semantic types add ``semantic``: candidates
        the vector search found, how many were served, and rejections by reason."""
        stats = super().stats()
        if isinstance(self.backend, SimilaritySearch):
            stats["semantic"] = self.semantic_verifier.snapshot()
        return stats

    def reset_stats(self) -> None:
        """Set every counter (semantic verification included) back to zero."""
        super().reset_stats()
        self.semantic_verifier.reset()

    async def async_flush(self) -> None:
        """Send queued writes (and, with ``persist_savings``, the savings totals)."""
        if self.persist_savings and not self.closed:
            await self._persist_savings()
        await super().async_flush()

    async def aclose(self) -> None:
        """Write the savings totals (with ``persist_savings``), then close as usual."""
        if self.persist_savings and not self.closed:
            await self._persist_savings()
        await super().aclose()

    async def _persist_savings(self) -> None:
        try:
            await persist_savings(self)
        except Exception:  # statistics never break a flush or a close
            logger.warning("asynccache: storing the savings totals failed", exc_info=True)

    def controls(self, controls: Mapping[str, Any] | CacheControls | None) -> CacheControls:
        """Parse per-call ``cache={...}`` controls (raises naming a bad control)."""
        return parse_controls(controls)

    def caches_call_type(self, call_type: str) -> bool:
        """Whether calls of ``call_type`` are cached."""
        return call_type in self.supported_call_types

    def settings(self) -> dict[str, Any]:
        """The settings this cache was created with (secrets masked)."""
        from .redact import mask, redact

        secret_words = ("password", "secret", "key", "token", "connection_string", "credential",
                        "sas")
        shown: dict[str, Any] = {}
        for name, value in self._settings.items():
            if any(word in name.lower() for word in secret_words):
                shown[name] = mask(value)
            elif isinstance(value, str):
                shown[name] = redact(value)  # url="redis://user:pw@host" -> user:***@host
            else:
                shown[name] = value
        return shown


def _query_text(backend: Any, request: Mapping[str, Any]) -> str | None:
    """The text of ``request`` the store embedded (``backend.query_text`` when it has one)."""
    text_of = getattr(backend, "query_text", None)
    if callable(text_of):
        text: str | None = text_of(request)
        return text
    return split_request(request, EmbedWhat.last_user_message)[0]


async def _index(backend: SimilaritySearch, call_kwargs: Mapping[str, Any], item: WriteItem,
                 prefix: str) -> bool:
    await backend.index_similar(call_kwargs, item, prefix=prefix)
    return True


def _request_store(cache: Cache, record_requests: bool | int) -> RequestStore | None:
    if isinstance(cache.backend, RequestStore):
        return cache.backend
    if record_requests is False:
        return None
    return RequestLog(cache, 256 if record_requests is True else record_requests)


def _split_settings(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    common: dict[str, Any] = {}
    backend: dict[str, Any] = {}
    for name, value in settings.items():
        target = _SETTING_ALIASES.get(name, name)
        if target in _COMMON_SETTINGS:
            common[target] = value
        else:
            backend[target] = value
    return common, backend


_default_cache: Cache | None = None


def enable_cache(type: str = "local", **settings: Any) -> Cache:
    """Create the process-wide default cache (used by ``cached`` when no cache is given)."""
    global _default_cache
    _default_cache = Cache(type, **settings)
    return _default_cache


def update_cache(type: str = "local", **settings: Any) -> Cache:
    """Replace the default cache with one built from new settings."""
    return enable_cache(type, **settings)


def disable_cache() -> None:
    """Turn the default cache off (wrapped calls go straight upstream)."""
    global _default_cache
    _default_cache = None


def set_default_cache(cache: Cache | None) -> Cache | None:
    """Make ``cache`` the default cache (``None``: none); return the previous one."""
    global _default_cache
    if cache is not None and not isinstance(cache, Cache):
        raise ConfigurationError(f"the default cache must be a Cache, got {cache!r:.80}")
    previous, _default_cache = _default_cache, cache
    return previous


def get_default_cache() -> Cache | None:
    """The cache set by :func:`enable_cache`, or ``None``."""
    return _default_cache
