"""Semantic cache on PostgreSQL with pgvector: HNSW index, cosine distance.

``Cache(type="postgres-semantic", url="postgresql+asyncpg://...")`` (or ``engine=``).

Entries live in one table with the columns of the SQL store
(:mod:`asynccache.backends.sql`: key hash, key, value, created/expires) plus ``prompt``,
``fh`` (the filter hash: model, parameters and everything but the embedded text),
``ns`` (the namespace tag) and ``embedding`` (``vector(d)``, with an HNSW index using
``vector_cosine_ops``). Exact-key calls are the SQL store's; a lookup embeds the
request's text exactly as the Redis and Qdrant stores do
(:class:`~asynccache.semantic.base.SemanticSettings`) and asks for the nearest live row
with the same ``fh`` and ``ns``::

    SELECT value, prompt, embedding <=> :q FROM ... WHERE fh = :fh AND ns = :ns
      AND (expires_at IS NULL OR expires_at > :now) ORDER BY embedding <=> :q LIMIT 1

``<=>`` is the cosine distance (``1 - cos``), converted to the same 0..1 similarity the
other stores report. Connections set ``hnsw.iterative_scan = strict_order``, so a filter
that rejects the first candidates of the index makes the scan continue instead of
returning nothing (pgvector 0.8+).

>>> cache = PgVectorSemanticCache(url="postgresql+asyncpg://app@db/app")  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..backends.sql import SQLBackend, _Store, key_parts
from ..base import BaseCache
from ..config import NotGiven, split_settings
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

__all__ = [
    "DEFAULT_EF_SEARCH", "DEFAULT_TABLE", "HNSW_EF_CONSTRUCTION", "HNSW_M",
    "PgVectorSemanticBackend", "PgVectorSemanticCache",
]

DEFAULT_TABLE = "asynccache_semantic"
#: HNSW build settings (pgvector's defaults) and the search breadth per query.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
DEFAULT_EF_SEARCH = 64


class PgVectorSemanticBackend(SemanticBackend):
    """Exact entries and their vectors in one PostgreSQL table (see the module docstring).

    Where: ``url`` (``postgresql+asyncpg://``) or ``engine`` (an application's
    ``AsyncEngine``; its connections must allow ``SET hnsw.ef_search``), ``table``,
    ``schema``, ``pool_size``. ``ef_search``: HNSW candidates examined per query. Semantic
    settings: see :class:`~asynccache.semantic.base.SemanticSettings`.
    """

    name = "postgres-semantic"
    remote = True
    max_batch = 256

    def __init__(
        self, url: str | sa.URL | None = None, *, engine: AsyncEngine | None = None,
        table: str = DEFAULT_TABLE, schema: str | None = None, pool_size: int = 10,
        ef_search: int = DEFAULT_EF_SEARCH,
        similarity_threshold: float = DEFAULT_SIMILARITY_THRESHOLD,
        embedding: Any = "local", embed_what: EmbedWhat | str = EmbedWhat.last_user_message,
        embedding_dimension: int | None = None, openai_client: Any = None,
        embedding_kwargs: dict[str, Any] | None = None, embedding_cache_size: int = 1024,
        connect_timeout: float = 5.0,
        semantic_guard: Any = True, semantic_judge: Any = None,
        semantic_judge_timeout: float | None = 10.0,
        semantic_candidates: int = DEFAULT_SEMANTIC_CANDIDATES,
    ) -> None:
        if isinstance(ef_search, bool) or not isinstance(ef_search, int) or not (
            1 <= ef_search <= 1000
        ):
            raise ConfigurationError(f"ef_search must be an int in 1..1000, got {ef_search!r}")
        self._init_verifier(semantic_guard, semantic_judge, semantic_judge_timeout,
                            semantic_candidates)
        self.semantic = SemanticSettings(
            similarity_threshold=similarity_threshold, embedding=embedding,
            embed_what=embed_what, embedding_dimension=embedding_dimension,
            openai_client=openai_client, embedding_kwargs=embedding_kwargs,
            embedding_cache_size=embedding_cache_size,
        )
        self._where: dict[str, Any] = dict(url=url, engine=engine, table=table, schema=schema,
                           pool_size=pool_size, connect_timeout=connect_timeout)
        # Validates url / engine / names now, before any I/O (the real store is made once
        # the vector size is known).
        probe = SQLBackend(url, engine=engine, table=table, schema=schema, pool_size=pool_size,
                           connect_timeout=connect_timeout)
        if probe.dialect != "postgresql":
            raise ConfigurationError(
                f"postgres-semantic needs a postgresql+asyncpg:// url, got a {probe.dialect!r} one"
            )
        self._described = probe.describe()
        self.ef_search = ef_search
        self._sql: SQLBackend | None = None
        self._lock: asyncio.Lock | None = None

    # -- the table ----------------------------------------------------------------------

    async def _store(self, dimension: int | None = None) -> SQLBackend:
        if self._sql is not None:
            if dimension is not None and dimension != self._dimension:
                self._mismatch(self._dimension, dimension)
            return self._sql
        if dimension is None:
            dimension = self.semantic.embedder.dimension or len(
                await self.semantic.embedder.embed_one("asynccache table probe"))
        if self._sql is None:
            self._sql = self._make_sql(dimension)
        return self._sql

    def _make_sql(self, dimension: int) -> SQLBackend:
        where = self._where
        table = str(where["table"])
        extra = [
            sa.Column("prompt", sa.Text(), nullable=True),
            sa.Column("fh", sa.String(64), nullable=True),
            sa.Column("ns", sa.String(64), nullable=True),
            sa.Column("embedding", Vector(dimension), nullable=True),
        ]
        sql = SQLBackend(
            where["url"], engine=where["engine"], table=table, schema=where["schema"],
            pool_size=where["pool_size"], connect_timeout=where["connect_timeout"],
            extra_columns=extra, before_create=["CREATE EXTENSION IF NOT EXISTS vector"],
            engine_options={"connect_args": {
                "timeout": where["connect_timeout"],
                "server_settings": {"hnsw.iterative_scan": "strict_order",
                                    "hnsw.ef_search": str(self.ef_search)},
            }},
        )
        t = sql.table
        sa.Index(f"{table}_filter", t.c.fh, t.c.ns)
        sa.Index(f"{table}_hnsw", t.c.embedding, postgresql_using="hnsw",
                 postgresql_with={"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION},
                 postgresql_ops={"embedding": "vector_cosine_ops"})
        sql.clock = self.clock
        self._dimension = dimension
        self._checked_dimension = False
        return sql

    def _mismatch(self, existing: int, wanted: int) -> None:
        raise ConfigurationError(
            f"table {self._described['table']!r} holds {existing}-dimensional vectors but the "
            f"embedder makes {wanted}-dimensional ones; use another table= or drop the table"
        )

    async def _run(self, work: Any, transaction: bool = False,
                   dimension: int | None = None) -> Any:
        sql = await self._store(dimension)
        sql.clock = self.clock
        if not self._checked_dimension:
            existing = await sql._run(self._column_dimension)
            if existing is not None and existing != self._dimension:
                self._mismatch(existing, self._dimension)
            self._checked_dimension = True
        return await sql._run(work, transaction=transaction)

    async def _column_dimension(self, connection: AsyncConnection, store: _Store) -> int | None:
        table = store.table
        row = (await connection.execute(sa.text(
            "SELECT atttypmod FROM pg_attribute WHERE attrelid = CAST(:name AS regclass)"
            " AND attname = 'embedding'"
        ), {"name": table.fullname})).first()
        return None if row is None or row[0] is None or row[0] < 0 else int(row[0])

    # -- exact-key contract: the SQL store's ---------------------------------------------

    async def _sql_ready(self) -> SQLBackend:
        sql = await self._store()
        sql.clock = self.clock
        if not self._checked_dimension:
            await self._run(self._noop)
        return sql

    @staticmethod
    async def _noop(connection: AsyncConnection, store: _Store) -> None:
        return None

    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return await (await self._sql_ready()).read_many(keys)

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        return await (await self._sql_ready()).write_many(items)

    async def remove_many(self, keys: Sequence[str]) -> int:
        return await (await self._sql_ready()).remove_many(keys)

    async def remove_prefix(self, prefix: str) -> int:
        return await (await self._sql_ready()).remove_prefix(prefix)

    async def increment_counter(self, key: str, amount: float, ttl: float | None) -> float:
        return await (await self._sql_ready()).increment_counter(key, amount, ttl)

    async def stored_ttl(self, key: str) -> float | NotGiven | None:
        return await (await self._sql_ready()).stored_ttl(key)

    async def purge(self) -> int:
        """Delete every expired row now; return how many."""
        return await (await self._sql_ready()).purge()

    async def check_health(self) -> None:
        await (await self._sql_ready()).check_health()

    async def aclose(self) -> None:
        if self._sql is not None:
            await self._sql.aclose()

    def describe(self) -> dict[str, Any]:
        return {**self._described, **self.semantic.describe()}

    # -- similarity ---------------------------------------------------------------------

    async def _search_nearest(
        self, wanted: float, fh: str, vector: Any, scope: str, limit: int
    ) -> list[tuple[bytes, float, str]]:
        """The nearest live rows with the same filter hash and scope that are similar
        enough, best first."""
        now = self.clock()
        query = [float(x) for x in vector]

        async def nearest(connection: AsyncConnection, store: _Store) -> Any:
            t = store.table
            distance = t.c.embedding.cosine_distance(query)
            statement = (
                sa.select(t.c.value, t.c.prompt, distance.label("distance"))
                .where(t.c.fh == fh, t.c.ns == scope, t.c.embedding.is_not(None),
                       sa.or_(t.c.expires_at.is_(None), t.c.expires_at > now))
                .order_by(distance).limit(limit)
            )
            return (await connection.execute(statement)).all()

        rows = await self._run(nearest, dimension=len(query))
        found: list[tuple[bytes, float, str]] = []
        for row in rows:
            similarity = similarity_from_cosine_distance(row.distance)
            if similarity >= wanted:
                found.append((bytes(row.value), similarity, str(row.prompt or "")))
        return found

    async def _store_indexed(
        self, items: Sequence[WriteItem], prepared: Sequence[tuple[str, str] | None],
        vectors: Sequence[Any], prefix: str,
    ) -> None:
        """Write the entries with their prompt, filter and vector (one upsert)."""
        dimension = len(vectors[0]) if vectors else None
        remaining = iter(vectors)
        ns = scope_tag(prefix)
        now = self.clock()
        rows: dict[bytes, dict[str, Any]] = {}
        for (key, data, ttl), prep in zip(items, prepared, strict=True):
            key_hash, head, tail = key_parts(key)
            row: dict[str, Any] = {
                "key_hash": key_hash, "key_head": head, "key_tail": tail, "value": data,
                "created_at": now, "expires_at": None if ttl is None else now + ttl,
                "prompt": None, "fh": None, "ns": None, "embedding": None,
            }
            if prep is not None:
                row.update(prompt=prep[0], fh=prep[1], ns=ns,
                           embedding=[float(x) for x in next(remaining)])
            rows[key_hash] = row

        async def upsert(connection: AsyncConnection, store: _Store) -> None:
            statement = pg_insert(store.table)
            statement = statement.on_conflict_do_update(
                index_elements=[store.table.c.key_hash],
                set_={c: statement.excluded[c] for c in (
                    "key_head", "key_tail", "value", "created_at", "expires_at", "prompt",
                    "fh", "ns", "embedding")},
            )
            await connection.execute(statement, list(rows.values()))

        await self._run(upsert, transaction=True, dimension=dimension)


class PgVectorSemanticCache(BaseCache):
    """A :class:`~asynccache.Cache` on PostgreSQL + pgvector (``type="postgres-semantic"``).

    >>> cache = PgVectorSemanticCache(url="postgresql+asyncpg://app@db/app")  # doctest: +SKIP
    """

    def __init__(self, **settings: Any) -> None:
        backend, cache = split_settings("PgVectorSemanticCache", settings,
                                        PgVectorSemanticBackend)
        super().__init__(PgVectorSemanticBackend(**backend), **cache)
