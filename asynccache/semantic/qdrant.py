"""Semantic cache on Qdrant: a server (``qdrant_api_base``) or embedded (``:memory:`` / path).

Every entry is one point whose id derives from its stored key. The payload holds the
stored key, the encoded entry (``data``, or ``data_b64`` when it is not UTF-8 text),
``created_at`` / ``expires_at`` timestamps (cache clock, seconds since the epoch; entries
without TTL get a far-future ``expires_at``), and, when indexed for similarity, the
prompt, the filter hash ``fh`` and the namespace tag ``ns``; the vector is the named
vector ``prompt``. Exact entries that were never indexed carry no vector.

Queries filter on ``fh``, ``ns`` and ``expires_at > now``, so an expired point never
answers; expired points are also deleted in the background (at most every
``purge_interval`` seconds, after a write) and by :meth:`QdrantSemanticBackend.purge_expired`.
On a server, the collection gets payload indexes on the filter fields; embedded Qdrant
searches exhaustively and has no payload indexes, so none are made there.

>>> cache = QdrantSemanticCache(qdrant_location=":memory:")  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from qdrant_client import AsyncQdrantClient, QdrantClient
from qdrant_client import models as qm

from .. import envelope
from ..base import BaseCache
from ..bridge import LoopLocal
from ..config import split_settings
from ..contract import WriteItem
from ..exceptions import ConfigurationError
from ..keys import stored_key_prefix
from .base import (
    DEFAULT_SEMANTIC_CANDIDATES,
    DEFAULT_SIMILARITY_THRESHOLD,
    EmbedWhat,
    SemanticBackend,
    SemanticSettings,
    scope_tag,
    similarity_from_cosine_score,
)

__all__ = [
    "DEFAULT_COLLECTION", "NEVER", "VECTOR_NAME", "QdrantSemanticBackend",
    "QdrantSemanticCache", "point_id", "quantization_config",
]

DEFAULT_COLLECTION = "asynccache-semantic"
VECTOR_NAME = "prompt"
# expires_at of entries without TTL: one range filter then covers every point.
NEVER = 1e18
_ID_NAMESPACE = uuid.UUID("0f6a8a53-5d3e-4a43-9b1e-7d0b6c1c5e11")


def quantization_config(value: Any) -> qm.QuantizationConfig | None:
    """``"binary"`` / ``"scalar"`` / ``"product"`` / ``None`` (or a Qdrant config object)."""
    if value is None:
        return None
    if isinstance(value, qm.ScalarQuantization | qm.ProductQuantization | qm.BinaryQuantization):
        return value
    if value == "binary":
        return qm.BinaryQuantization(binary=qm.BinaryQuantizationConfig(always_ram=True))
    if value == "scalar":
        return qm.ScalarQuantization(scalar=qm.ScalarQuantizationConfig(
            type=qm.ScalarType.INT8, quantile=0.99, always_ram=True))
    if value == "product":
        return qm.ProductQuantization(product=qm.ProductQuantizationConfig(
            compression=qm.CompressionRatio.X16, always_ram=True))
    raise ConfigurationError(
        "qdrant_quantization_config must be 'binary', 'scalar', 'product' or None, "
        f"got {value!r}"
    )


def point_id(stored_key: str) -> str:
    """The point id of a stored key (a UUID derived from the key)."""
    return str(uuid.uuid5(_ID_NAMESPACE, stored_key))


def _match(field: str, value: str) -> qm.FieldCondition:
    return qm.FieldCondition(key=field, match=qm.MatchValue(value=value))


class QdrantSemanticBackend(SemanticBackend):
    """Exact entries and their vectors in one Qdrant collection (see the module docstring).

    Where: ``qdrant_api_base`` (+ ``qdrant_api_key``) for a server, or embedded with
    ``qdrant_location=":memory:"`` or ``qdrant_path="./qdrant"``. Collection:
    ``qdrant_collection_name``, ``qdrant_quantization_config``. ``purge_interval``: seconds
    between background deletions of expired points. Semantic settings: see
    :class:`~asynccache.semantic.base.SemanticSettings`
    (``qdrant_semantic_cache_embedding_model`` is an alias of ``embedding``).
    """

    name = "qdrant-semantic"
    remote = True
    max_batch = 256

    def __init__(
        self, *, qdrant_api_base: str | None = None, qdrant_api_key: str | None = None,
        qdrant_location: str | None = None, qdrant_path: str | None = None,
        qdrant_collection_name: str = DEFAULT_COLLECTION,
        qdrant_quantization_config: Any = None,
        similarity_threshold: float = DEFAULT_SIMILARITY_THRESHOLD,
        embedding: Any = "local", qdrant_semantic_cache_embedding_model: str | None = None,
        embed_what: EmbedWhat | str = EmbedWhat.last_user_message,
        embedding_dimension: int | None = None, openai_client: Any = None,
        embedding_kwargs: dict[str, Any] | None = None, embedding_cache_size: int = 1024,
        purge_interval: float = 60.0, client_options: dict[str, Any] | None = None,
        semantic_guard: Any = True, semantic_judge: Any = None,
        semantic_judge_timeout: float | None = 10.0,
        semantic_candidates: int = DEFAULT_SEMANTIC_CANDIDATES,
    ) -> None:
        given = [n for n, v in (("qdrant_api_base", qdrant_api_base),
                                ("qdrant_location", qdrant_location),
                                ("qdrant_path", qdrant_path)) if v is not None]
        if len(given) != 1:
            raise ConfigurationError(
                "pass exactly one of qdrant_api_base (a server URL), qdrant_location=':memory:' "
                f"or qdrant_path (embedded Qdrant); got {given or 'none'}"
            )
        if not isinstance(qdrant_collection_name, str) or not qdrant_collection_name:
            raise ConfigurationError(
                f"qdrant_collection_name must be a non-empty str, got {qdrant_collection_name!r}"
            )
        if isinstance(purge_interval, bool) or not isinstance(purge_interval, int | float) or (
            purge_interval <= 0
        ):
            raise ConfigurationError(f"purge_interval must be > 0 seconds, got {purge_interval!r}")
        if qdrant_semantic_cache_embedding_model is not None:
            embedding = qdrant_semantic_cache_embedding_model
        self._init_verifier(semantic_guard, semantic_judge, semantic_judge_timeout,
                            semantic_candidates)
        self.semantic = SemanticSettings(
            similarity_threshold=similarity_threshold, embedding=embedding,
            embed_what=embed_what, embedding_dimension=embedding_dimension,
            openai_client=openai_client, embedding_kwargs=embedding_kwargs,
            embedding_cache_size=embedding_cache_size,
        )
        self.collection = qdrant_collection_name
        self.quantization = quantization_config(qdrant_quantization_config)
        self.purge_interval = float(purge_interval)
        options = dict(client_options or {})
        if qdrant_api_base is not None:
            # The version check is a blocking HTTP call made when the client is created,
            # which would stall the event loop; asynccache reports problems at
            # test_connection() instead.
            options.setdefault("check_compatibility", False)
        self.embedded = qdrant_api_base is None
        if qdrant_api_base is not None:
            parsed = urllib.parse.urlsplit(qdrant_api_base)
            self._where = f"{parsed.scheme}://{parsed.hostname}:{parsed.port or 6333}"
            self._connect: dict[str, Any] = {"url": qdrant_api_base, "api_key": qdrant_api_key,
                                             **options}
        elif qdrant_location is not None:
            self._where = str(qdrant_location)
            self._connect = {"location": qdrant_location, **options}
        else:
            self._where = f"path:{qdrant_path}"
            self._connect = {"path": qdrant_path, **options}
        # Embedded Qdrant keeps its data inside the client object (":memory:") or holds a
        # lock on its folder (path), so one client serves every loop. Its "async" client
        # does the (brute-force) search on the calling thread, which would block the event
        # loop for the whole search; the sync client on one worker thread does not, and
        # that one thread also serialises calls coming from several loops. A server client
        # holds loop-bound HTTP connections, so each loop gets its own.
        self._embedded_client: _EmbeddedClient | None = None
        self._clients: LoopLocal[AsyncQdrantClient] = LoopLocal(self._make_client, _close_client)
        self._dimension: int | None = None
        self._last_purge: float | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.purged = 0

    async def _make_client(self) -> AsyncQdrantClient:
        return AsyncQdrantClient(**self._connect)

    async def _client(self) -> Any:
        """The client for this loop: ``AsyncQdrantClient`` or the embedded wrapper."""
        if not self.embedded:
            return await self._clients.get()
        if self._embedded_client is None:
            self._embedded_client = _EmbeddedClient(self._connect)
        return self._embedded_client

    # -- the collection -----------------------------------------------------------------

    async def _existing_dimension(self, client: Any) -> int | None:
        if not await client.collection_exists(self.collection):
            return None
        info = await client.get_collection(self.collection)
        vectors = info.config.params.vectors
        params = vectors.get(VECTOR_NAME) if isinstance(vectors, dict) else None
        if params is None:
            raise ConfigurationError(
                f"Qdrant collection {self.collection!r} exists without a {VECTOR_NAME!r} named "
                "vector; choose another qdrant_collection_name"
            )
        return int(params.size)

    def _check_dimension(self, existing: int, wanted: int) -> None:
        if existing != wanted:
            raise ConfigurationError(
                f"Qdrant collection {self.collection!r} holds {existing}-dimensional vectors but "
                f"the embedder makes {wanted}-dimensional ones; use another "
                "qdrant_collection_name or delete the collection"
            )

    async def _ensure_collection(self, client: Any, dimension: int | None) -> None:
        if self._dimension is not None:
            if dimension is not None:
                self._check_dimension(self._dimension, dimension)
            return
        if dimension is None:
            # An exact write before any embedding: the collection needs the vector size.
            dimension = self.semantic.embedder.dimension or len(
                await self.semantic.embedder.embed_one("asynccache collection probe"))
        existing = await self._existing_dimension(client)
        if existing is None:
            try:
                await client.create_collection(
                    self.collection,
                    vectors_config={VECTOR_NAME: qm.VectorParams(
                        size=dimension, distance=qm.Distance.COSINE)},
                    quantization_config=self.quantization,
                )
            except Exception:
                # Someone else created it meanwhile; otherwise re-raise.
                existing = await self._existing_dimension(client)
                if existing is None:
                    raise
            else:
                existing = dimension
                if not self.embedded:
                    await self._create_payload_indexes(client)
        self._check_dimension(existing, dimension)
        self._dimension = existing

    async def _create_payload_indexes(self, client: Any) -> None:
        keyword, number = qm.PayloadSchemaType.KEYWORD, qm.PayloadSchemaType.FLOAT
        for field, schema in (("key", keyword), ("head", keyword), ("fh", keyword),
                              ("ns", keyword), ("expires_at", number)):
            await client.create_payload_index(self.collection, field, field_schema=schema)

    # -- payloads -----------------------------------------------------------------------

    def _payload(self, key: str, data: bytes, now: float) -> dict[str, Any]:
        # The envelope's expiry, copied so searches and purges can filter on it.
        expires_at = envelope.peek_expires_at(data)
        payload: dict[str, Any] = {
            "key": key, "head": stored_key_prefix(key), "created_at": now,
            "expires_at": NEVER if expires_at is None else expires_at,
        }
        try:
            payload["data"] = data.decode("utf-8")
        except UnicodeDecodeError:
            payload["data_b64"] = base64.b64encode(data).decode("ascii")
        return payload

    @staticmethod
    def _data(payload: Mapping[str, Any]) -> bytes | None:
        text = payload.get("data")
        if isinstance(text, str):
            return text.encode("utf-8")
        encoded = payload.get("data_b64")
        if isinstance(encoded, str):
            return base64.b64decode(encoded)
        return None

    def _live(self, payload: Mapping[str, Any] | None, now: float) -> bool:
        if payload is None:
            return False
        expires = payload.get("expires_at")
        return not isinstance(expires, int | float) or expires > now

    # -- exact-key contract -------------------------------------------------------------

    async def _found(self, client: Any, keys: Sequence[str]
                     ) -> dict[str, dict[str, Any]]:
        if not await client.collection_exists(self.collection):
            return {}
        points = await client.retrieve(self.collection, ids=sorted({point_id(k) for k in keys}),
                                       with_payload=True, with_vectors=False)
        wanted = set(keys)
        found: dict[str, dict[str, Any]] = {}
        for point in points:
            payload = point.payload or {}
            key = payload.get("key")
            if isinstance(key, str) and key in wanted:
                found[key] = payload
        return found

    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        client = await self._client()
        found = await self._found(client, keys)
        now = self.clock()
        return [self._data(found[key]) if self._live(found.get(key), now) else None
                for key in keys]

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        client = await self._client()
        await self._ensure_collection(client, None)
        now = self.clock()
        points = [qm.PointStruct(id=point_id(key), vector={}, payload=self._payload(key, data, now))
                  for key, data, _ in items]
        await client.upsert(self.collection, points=points, wait=True)
        self._maybe_purge(now)
        return None

    async def remove_many(self, keys: Sequence[str]) -> int:
        client = await self._client()
        found = await self._found(client, keys)
        if not found:
            return 0
        now = self.clock()
        existed = sum(1 for key in set(keys) if self._live(found.get(key), now))
        await client.delete(self.collection, points_selector=qm.PointIdsList(
            points=[point_id(key) for key in found]), wait=True)
        return existed

    async def _delete_where(self, client: Any, condition: qm.Filter) -> int:
        count = (await client.count(self.collection, count_filter=condition, exact=True)).count
        if count:
            await client.delete(self.collection, points_selector=qm.FilterSelector(
                filter=condition), wait=True)
        return count

    async def remove_prefix(self, prefix: str) -> int:
        client = await self._client()
        if not await client.collection_exists(self.collection):
            return 0
        if prefix == "":
            return await self._delete_where(client, qm.Filter(must=[]))
        if stored_key_prefix(prefix) == prefix:
            # A namespace prefix ("ns:"): keys start with it exactly when their head is it.
            return await self._delete_where(client, qm.Filter(must=[_match("head", prefix)]))
        ids: list[Any] = []
        offset: Any = None
        while True:
            points, offset = await client.scroll(self.collection, limit=1000, offset=offset,
                                                 with_payload=["key"], with_vectors=False)
            ids.extend(p.id for p in points
                       if str((p.payload or {}).get("key", "")).startswith(prefix))
            if offset is None:
                break
        if ids:
            await client.delete(self.collection, points_selector=qm.PointIdsList(points=ids),
                                wait=True)
        return len(ids)

    async def check_health(self) -> None:
        client = await self._client()
        await client.get_collections()
        existing = await self._existing_dimension(client)
        wanted = self.semantic.embedder.dimension
        if existing is not None and wanted is not None:
            self._check_dimension(existing, wanted)

    async def purge_expired(self) -> int:
        """Delete every point whose ``expires_at`` has passed; return how many."""
        client = await self._client()
        if not await client.collection_exists(self.collection):
            return 0
        condition = qm.Filter(must=[qm.FieldCondition(key="expires_at",
                                                      range=qm.Range(lte=self.clock()))])
        deleted = await self._delete_where(client, condition)
        self.purged += deleted
        return deleted

    def _maybe_purge(self, now: float) -> None:
        if self._last_purge is None:
            self._last_purge = now
            return
        if now - self._last_purge < self.purge_interval:
            return
        self._last_purge = now
        task = asyncio.get_running_loop().create_task(self._purge_quietly())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _purge_quietly(self) -> None:
        try:
            await self.purge_expired()
        except Exception:  # a failed purge is retried at the next interval
            import logging

            logging.getLogger("asynccache").debug("qdrant purge failed", exc_info=True)

    async def aclose(self) -> None:
        current = asyncio.get_running_loop()
        for task in list(self._tasks):
            if task.get_loop() is current:
                task.cancel()
        pending = [t for t in self._tasks if t.get_loop() is current]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        await self._clients.aclose_all()
        if self._embedded_client is not None:
            client, self._embedded_client = self._embedded_client, None
            await client.close()

    def describe(self) -> dict[str, Any]:
        quantization = None if self.quantization is None else type(self.quantization).__name__
        return {"server": self._where, "collection": self.collection,
                "quantization": quantization, **self.semantic.describe()}

    # -- similarity ---------------------------------------------------------------------

    async def _search_nearest(
        self, wanted: float, fh: str, vector: Any, scope: str, limit: int
    ) -> list[tuple[bytes, float, str]]:
        """The nearest live points with the same filter hash and scope whose similarity
        reaches the threshold, best first."""
        client = await self._client()
        await self._ensure_collection(client, len(vector))
        condition = qm.Filter(must=[
            _match("fh", fh), _match("ns", scope),
            qm.FieldCondition(key="expires_at", range=qm.Range(gt=self.clock())),
        ])
        params = None
        if self.quantization is not None and not self.embedded:
            # Score candidates with the original vectors, not the quantized ones, so the
            # similarity compared with the threshold is the true cosine.
            params = qm.SearchParams(quantization=qm.QuantizationSearchParams(
                rescore=True, oversampling=2.0))
        response = await client.query_points(
            self.collection, query=list(vector), using=VECTOR_NAME, query_filter=condition,
            limit=limit, with_payload=True, with_vectors=False, search_params=params,
            score_threshold=wanted,
        )
        found: list[tuple[bytes, float, str]] = []
        for point in response.points:
            similarity = similarity_from_cosine_score(point.score)
            payload = point.payload or {}
            data = self._data(payload)
            if similarity >= wanted and data is not None:
                found.append((data, similarity, str(payload.get("prompt", ""))))
        return found

    async def _store_indexed(
        self, items: Sequence[WriteItem], prepared: Sequence[tuple[str, str] | None],
        vectors: Sequence[Any], prefix: str,
    ) -> None:
        """Write the entries and their vectors (one upsert)."""
        client = await self._client()
        await self._ensure_collection(client, len(vectors[0]) if vectors else None)
        remaining = iter(vectors)
        ns = scope_tag(prefix)
        now = self.clock()
        points: list[qm.PointStruct] = []
        for (key, data, _), prep in zip(items, prepared, strict=True):
            payload = self._payload(key, data, now)
            vector: dict[str, Any] = {}
            if prep is not None:
                payload.update(prompt=prep[0], fh=prep[1], ns=ns)
                vector = {VECTOR_NAME: list(next(remaining))}
            points.append(qm.PointStruct(id=point_id(key), vector=vector, payload=payload))
        await client.upsert(self.collection, points=points, wait=True)
        self._maybe_purge(now)


async def _close_client(client: AsyncQdrantClient) -> None:
    await client.close()


class _EmbeddedClient:
    """Embedded Qdrant's sync client, each call run on one dedicated worker thread.

    Exposes the same awaitable methods as ``AsyncQdrantClient`` (``await c.upsert(...)``).
    """

    def __init__(self, connect: dict[str, Any]) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="asynccache-qdrant"
        )
        self._connect = connect
        self._client: QdrantClient | None = None

    def _sync_client(self) -> QdrantClient:
        if self._client is None:
            self._client = QdrantClient(**self._connect)
        return self._client

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            def run() -> Any:
                return getattr(self._sync_client(), name)(*args, **kwargs)

            return await asyncio.wrap_future(self._executor.submit(run))

        return call

    async def close(self) -> None:
        def run() -> None:
            if self._client is not None:
                self._client.close()
                self._client = None

        try:
            await asyncio.wrap_future(self._executor.submit(run))
        finally:
            self._executor.shutdown(wait=False)


class QdrantSemanticCache(BaseCache):
    """A cache on Qdrant (also ``Cache(type="qdrant-semantic")``).

    Like every cache it has ``async_lookup`` / ``async_store`` (exact key first, then
    similarity), the key-value API, stats and the sync twins.

    >>> cache = QdrantSemanticCache(qdrant_location=":memory:", embedding="local")  # doctest: +SKIP
    """

    def __init__(self, **settings: Any) -> None:
        backend, cache = split_settings("QdrantSemanticCache", settings, QdrantSemanticBackend)
        super().__init__(QdrantSemanticBackend(**backend), **cache)
