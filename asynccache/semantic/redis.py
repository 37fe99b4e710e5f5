"""Semantic cache on Redis vector search (RediSearch / Redis Stack / Redis 8 / valkey-search).

Every entry is a hash under ``{index_name}:{stored key}`` holding the encoded entry
(``v``) and, when it was indexed for similarity, the unit vector (``vec``, FLOAT32), the
embedded prompt, the filter hash (``fh``) and the namespace tag (``ns``). The entry's TTL
is the hash's ``PEXPIRE``, so Redis drops expired entries from the index by itself.

The index (HNSW, COSINE, FLOAT32, TAG fields ``fh`` and ``ns``) is created on first use
if missing; an existing index whose vector dimension differs from the embedder's raises
:class:`~asynccache.exceptions.ConfigurationError` naming both.

>>> cache = RedisSemanticCache(host="127.0.0.1", port=6379)  # doctest: +SKIP
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from ..backends.redis_settings import REDIS_SETTINGS, RedisSettings
from ..base import BaseCache
from ..bridge import LoopLocal
from ..config import split_settings
from ..contract import WriteItem
from ..exceptions import ConfigurationError
from .base import (
    DEFAULT_SEMANTIC_CANDIDATES,
    DEFAULT_SIMILARITY_THRESHOLD,
    EmbedWhat,
    SemanticBackend,
    SemanticSettings,
    scope_tag,
    similarity_from_cosine_distance,
)
from .embeddings import Vector

__all__ = [
    "DEFAULT_INDEX_NAME", "RedisSemanticBackend", "RedisSemanticCache",
]

DEFAULT_INDEX_NAME = "asynccache-semantic"
_GLOB_SPECIAL = set("*?[]\\")


def _escape_glob(text: str) -> str:
    return "".join("\\" + c if c in _GLOB_SPECIAL else c for c in text)


def _pack(vector: Vector) -> bytes:
    # RediSearch reads FLOAT32 vectors little-endian, whatever the host's byte order.
    return struct.pack(f"<{len(vector)}f", *vector)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _as_map(value: Any) -> dict[Any, Any]:
    """A RESP3 map as it is, or a RESP2 flat list [k1, v1, k2, v2, ...] as a dict."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list):
        return {value[i]: value[i + 1] for i in range(0, len(value) - 1, 2)}
    return {}


def _get(mapping: Mapping[Any, Any], name: str) -> Any:
    found = mapping.get(name)
    return mapping.get(name.encode()) if found is None else found


class RedisSemanticBackend(SemanticBackend):
    """Exact entries and a vector index in one Redis (see the module docstring).

    Connection: ``url`` (``redis://:password@host:port/0``) or ``host`` / ``port`` /
    ``username`` / ``password`` / ``ssl``; ``client_options`` go to ``redis.asyncio.Redis``.
    Index: ``redis_semantic_cache_index_name`` (also the key prefix), ``hnsw_m``,
    ``hnsw_ef_construction``; ``hybrid_policy`` (``"BATCHES"`` / ``"ADHOC_BF"``, default:
    RediSearch chooses) forces how a filtered search runs: ``BATCHES`` is faster when most
    entries share one model and parameters, ``ADHOC_BF`` when the filter is selective.
    Semantic settings: see :class:`~asynccache.semantic.base.SemanticSettings`
    (``redis_semantic_cache_embedding_model`` is an alias of ``embedding``).
    """

    name = "redis-semantic"
    remote = True
    max_batch = 500

    def __init__(
        self, *, redis_semantic_cache_index_name: str = DEFAULT_INDEX_NAME,
        similarity_threshold: float = DEFAULT_SIMILARITY_THRESHOLD,
        embedding: Any = "local", redis_semantic_cache_embedding_model: str | None = None,
        embed_what: EmbedWhat | str = EmbedWhat.last_user_message,
        embedding_dimension: int | None = None, openai_client: Any = None,
        embedding_kwargs: dict[str, Any] | None = None, embedding_cache_size: int = 1024,
        hnsw_m: int = 16, hnsw_ef_construction: int = 200, hybrid_policy: str | None = None,
        client_options: dict[str, Any] | None = None, settings: RedisSettings | None = None,
        semantic_guard: Any = True, semantic_judge: Any = None,
        semantic_judge_timeout: float | None = 10.0,
        semantic_candidates: int = DEFAULT_SEMANTIC_CANDIDATES,
        **connection: Any,
    ) -> None:
        if redis_semantic_cache_embedding_model is not None:
            embedding = redis_semantic_cache_embedding_model
        index = redis_semantic_cache_index_name
        # The index covers every hash under "{index}:"; a ":" inside the name would let
        # index "a" cover (and clear) the entries of index "a:b".
        if not isinstance(index, str) or not index or any(c.isspace() or c in ":*?[]\\"
                                                           for c in index):
            raise ConfigurationError(
                "redis_semantic_cache_index_name must be a non-empty name without spaces, ':' "
                f"or glob characters, got {index!r}"
            )
        self._init_verifier(semantic_guard, semantic_judge, semantic_judge_timeout,
                            semantic_candidates)
        self.semantic = SemanticSettings(
            similarity_threshold=similarity_threshold, embedding=embedding,
            embed_what=embed_what, embedding_dimension=embedding_dimension,
            openai_client=openai_client, embedding_kwargs=embedding_kwargs,
            embedding_cache_size=embedding_cache_size,
        )
        self.index_name = index
        self.key_prefix = index + ":"
        policies = {"BATCHES", "ADHOC_BF"}
        if hybrid_policy is not None and (
            not isinstance(hybrid_policy, str) or hybrid_policy.upper() not in policies
        ):
            raise ConfigurationError(
                f"hybrid_policy must be 'BATCHES', 'ADHOC_BF' or None, got {hybrid_policy!r}"
            )
        self.hybrid_policy = None if hybrid_policy is None else hybrid_policy.upper()
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        # The same connection settings (and REDIS_URL / REDIS_HOST...) as type="redis".
        if settings is None:
            settings = RedisSettings.from_options(connection)
        if settings.startup_nodes:
            raise ConfigurationError("redis-semantic runs on one Redis server, not a cluster")
        self.settings = settings
        self._where = f"{settings.host}:{settings.port}"
        # RESP3 for FT.SEARCH replies; the connection kwargs already fail fast (no client
        # retries: repeated failures are handled by the circuit breaker).
        self._connect: dict[str, Any] = {
            **settings.connection_kwargs(), "ssl": settings.ssl,
            "max_connections": settings.max_connections, "protocol": 3,
            **(client_options or {}),
        }
        self._clients: LoopLocal[aioredis.Redis] = LoopLocal(self._make_client, _close_client)
        self._index_dimension: int | None = None

    async def _make_client(self) -> aioredis.Redis:
        # redis.asyncio's own pool raises MaxConnectionsError once every connection is
        # busy; a blocking pool makes the extra lookups wait their turn instead (the
        # cache's timeout still bounds each call), as the exact-match Redis store does.
        # The client built first only works out the connection settings (TLS included).
        template = aioredis.Redis(**self._connect).connection_pool
        pool = aioredis.BlockingConnectionPool(
            connection_class=template.connection_class, max_connections=template.max_connections,
            timeout=None, **template.connection_kwargs)
        return aioredis.Redis.from_pool(pool)

    # -- the index ----------------------------------------------------------------------

    async def _index_info_dimension(self, client: aioredis.Redis) -> int | None:
        """The existing index's vector dimension, or ``None`` if there is no index."""
        try:
            info = _as_map(await client.execute_command("FT.INFO", self.index_name))
        except ResponseError as exc:
            message = str(exc).lower()
            if "unknown index" in message or "no such index" in message:
                return None
            if "unknown command" in message:
                raise ConfigurationError(
                    "this Redis server has no vector search (FT.* commands); use Redis Stack, "
                    "Redis 8+, or load the RediSearch module"
                ) from exc
            raise
        for attribute in _get(info, "attributes") or []:
            fields = _as_map(attribute)
            if _text(_get(fields, "type")).upper() == "VECTOR":
                dim = _get(fields, "dim")
                return int(dim) if dim is not None else None
        raise ConfigurationError(
            f"Redis index {self.index_name!r} exists but has no vector field; "
            "choose another redis_semantic_cache_index_name"
        )

    def _check_dimension(self, existing: int, wanted: int) -> None:
        if existing != wanted:
            raise ConfigurationError(
                f"Redis index {self.index_name!r} holds {existing}-dimensional vectors but the "
                f"embedder makes {wanted}-dimensional ones; use another "
                "redis_semantic_cache_index_name or drop the index (FT.DROPINDEX)"
            )

    async def _ensure_index(self, client: aioredis.Redis, dimension: int) -> None:
        if self._index_dimension is not None:
            self._check_dimension(self._index_dimension, dimension)
            return
        existing = await self._index_info_dimension(client)
        if existing is None:
            try:
                await client.execute_command(
                    "FT.CREATE", self.index_name, "ON", "HASH",
                    "PREFIX", "1", self.key_prefix,
                    "SCHEMA", "fh", "TAG", "ns", "TAG",
                    "vec", "VECTOR", "HNSW", "10", "TYPE", "FLOAT32", "DIM", str(dimension),
                    "DISTANCE_METRIC", "COSINE", "M", str(self.hnsw_m),
                    "EF_CONSTRUCTION", str(self.hnsw_ef_construction),
                )
                existing = dimension
            except ResponseError as exc:
                if "already exists" not in str(exc).lower():
                    raise
                # Another process (or loop) created it first: check what it made.
                existing = await self._index_info_dimension(client)
                if existing is None:
                    raise
        self._check_dimension(existing, dimension)
        self._index_dimension = existing

    async def ensure_index(self) -> None:
        """Create the index now (embedding one probe text if the dimension is unknown)."""
        dimension = self.semantic.embedder.dimension
        if dimension is None:
            dimension = len(await self.semantic.embedder.embed_one("asynccache index probe"))
        await self._ensure_index(await self._clients.get(), dimension)

    # -- exact-key contract -------------------------------------------------------------

    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        client = await self._clients.get()
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(self.key_prefix + key, "v")
            found = await pipe.execute(raise_on_error=False)
        # A key of another type (WRONGTYPE) is a miss, not a failed batch.
        return [item if isinstance(item, bytes) else None for item in found]

    def _queue_write(self, pipe: Any, key: str, fields: dict[str, Any], ttl: float | None) -> None:
        name = self.key_prefix + key
        # Delete first: HSET merges fields, and an exact overwrite of an indexed entry must
        # not keep the old vector (it would match prompts the new value does not answer).
        pipe.delete(name)
        pipe.hset(name, mapping=fields)
        if ttl is not None:
            pipe.pexpire(name, max(1, int(ttl * 1000 + 0.999)))

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        client = await self._clients.get()
        async with client.pipeline(transaction=True) as pipe:
            for key, data, ttl in items:
                self._queue_write(pipe, key, {"v": data}, ttl)
            await pipe.execute()
        return None

    async def remove_many(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        client = await self._clients.get()
        return int(await client.delete(*[self.key_prefix + key for key in keys]))

    async def remove_prefix(self, prefix: str) -> int:
        client = await self._clients.get()
        pattern = _escape_glob(self.key_prefix + prefix) + "*"
        deleted = 0
        batch: list[bytes] = []
        async for name in client.scan_iter(match=pattern, count=1000):
            batch.append(name)
            if len(batch) >= 1000:
                deleted += int(await client.unlink(*batch))
                batch = []
        if batch:
            deleted += int(await client.unlink(*batch))
        return deleted

    async def check_health(self) -> None:
        client = await self._clients.get()
        await client.ping()
        existing = await self._index_info_dimension(client)
        wanted = self.semantic.embedder.dimension
        if existing is not None and wanted is not None:
            self._check_dimension(existing, wanted)

    async def aclose(self) -> None:
        await self._clients.aclose_all()

    def describe(self) -> dict[str, Any]:
        return {"server": self._where, "index": self.index_name, **self.semantic.describe()}

    # -- similarity ---------------------------------------------------------------------

    async def _search_nearest(
        self, wanted: float, fh: str, vector: Any, scope: str, limit: int
    ) -> list[tuple[bytes, float, str]]:
        """The nearest entries with the same filter hash, similarity >= threshold, best first."""
        client = await self._clients.get()
        await self._ensure_index(client, len(vector))
        # The filter hash already covers the namespace, so the query filters on it alone:
        # a second TAG condition doubles the cost of RediSearch's filtered search (the
        # ``ns`` tag stays in each entry for per-namespace queries and tooling).
        policy = f" HYBRID_POLICY {self.hybrid_policy}" if self.hybrid_policy else ""
        query = f"(@fh:{{{fh}}})=>[KNN {limit} @vec $B{policy} AS dist]"
        result = await client.execute_command(
            "FT.SEARCH", self.index_name, query, "PARAMS", "2", "B", _pack(vector),
            "RETURN", "3", "dist", "v", "prompt", "SORTBY", "dist", "LIMIT", "0", str(limit),
            "DIALECT", "2",
        )
        found: list[tuple[bytes, float, str]] = []
        for fields in _results(result):
            data = _get(fields, "v")
            distance = _get(fields, "dist")
            if not isinstance(data, bytes) or distance is None:
                continue
            similarity = similarity_from_cosine_distance(float(_text(distance)))
            if similarity >= wanted:
                found.append((data, similarity, _text(_get(fields, "prompt"))))
        return found

    async def _store_indexed(
        self, items: Sequence[WriteItem], prepared: Sequence[tuple[str, str] | None],
        vectors: Sequence[Any], prefix: str,
    ) -> None:
        """Write the entries and their vectors (one pipeline)."""
        client = await self._clients.get()
        if vectors:
            await self._ensure_index(client, len(vectors[0]))
        remaining = iter(vectors)
        ns = scope_tag(prefix)
        now = self.clock()
        async with client.pipeline(transaction=True) as pipe:
            for (key, data, ttl), prep in zip(items, prepared, strict=True):
                fields: dict[str, Any] = {"v": data}
                if prep is not None:
                    fields.update(vec=_pack(next(remaining)), prompt=prep[0], fh=prep[1], ns=ns,
                                  created_at=repr(now))
                self._queue_write(pipe, key, fields, ttl)
            await pipe.execute()


def _results(result: Any) -> list[dict[Any, Any]]:
    """The documents of an FT.SEARCH reply (RESP3 map or RESP2 list) as field maps."""
    if isinstance(result, Mapping):
        return [_as_map(_get(_as_map(row), "extra_attributes"))
                for row in _get(result, "results") or []]
    if isinstance(result, list):
        # [total, id, fields, id, fields, ...]
        return [_as_map(fields) for fields in result[2::2]]
    return []


async def _close_client(client: aioredis.Redis) -> None:
    await client.aclose()


class RedisSemanticCache(BaseCache):
    """A cache on Redis vector search (also ``Cache(type="redis-semantic")``).

    Like every cache it has ``async_lookup`` / ``async_store`` for LLM requests (exact
    key first, then similarity: its backend has the similarity capability), the
    key-value API, stats and the sync twins. Connection settings are those of
    ``type="redis"`` (``url=``, ``host=``... or ``REDIS_URL``).

    >>> cache = RedisSemanticCache(host="127.0.0.1", port=6379,          # doctest: +SKIP
    ...                            similarity_threshold=0.8, embedding="local")
    >>> hit = await cache.async_lookup({"model": "gpt-4o", "messages": [...]})  # doctest: +SKIP
    >>> hit.similarity, hit.matched_prompt                               # doctest: +SKIP
    """

    def __init__(self, **settings: Any) -> None:
        backend, cache = split_settings("RedisSemanticCache", settings, RedisSemanticBackend,
                                        REDIS_SETTINGS)
        super().__init__(RedisSemanticBackend(**backend), **cache)
