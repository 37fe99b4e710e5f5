"""SQL backend on SQLAlchemy 2's asyncio Core: PostgreSQL, MariaDB/MySQL and SQLite.

``Cache(type="sql", url="postgresql+asyncpg://...")`` (or ``mysql+asyncmy://``,
``sqlite+aiosqlite:///file.db``), or ``engine=`` an application's own ``AsyncEngine``.

One table (``asynccache_entries`` unless ``table=`` says otherwise), created if missing:

=============  =========================  ===========================================
column         type                       why
=============  =========================  ===========================================
``key_hash``   32 bytes, primary key      SHA-256 of the stored key: every lookup is
                                          an equality on a fixed-size index entry
``key_head``   binary, at most 255 bytes  the key's first 255 UTF-8 bytes, indexed:
                                          prefix clears are index range scans
``key_tail``   binary, nullable           the rest of a longer key (rare)
``value``      binary (BYTEA / LONGBLOB)  the encoded entry
``created_at`` double                     when it was written (seconds since epoch)
``expires_at`` double, nullable, indexed  when it expires (``NULL``: never)
=============  =========================  ===========================================

Keys are binary rather than text because a key may hold any character, NUL included
(PostgreSQL text cannot), and MySQL's default collations would compare them
case-insensitively. For the same reason a prefix clear is a byte range
(``prefix <= key_head < prefix || 0xFF``; no UTF-8 byte is 0xFF) rather than a ``LIKE``:
it needs no escaping of ``%``/``_``/``\\`` and uses the index on every dialect.

* batch get: ``key_hash = ANY(:array)`` on PostgreSQL (one prepared statement for any
  size), ``IN (...)`` elsewhere, at most :data:`CHUNK` keys per query;
* batch set: one upsert executed for all rows in one transaction (``ON CONFLICT DO
  UPDATE`` on PostgreSQL and SQLite, ``ON DUPLICATE KEY UPDATE`` on MariaDB/MySQL);
* expired rows are never returned; once every ``purge_interval`` seconds a write also
  deletes up to 5,000 expired rows in its transaction (and :meth:`SQLBackend.purge`
  deletes them all);
* engines belong to an event loop: one engine (and pool) per loop, made on first use;
  an ``engine=`` given by the application serves its own loop and is never disposed
  by the cache (other loops get engines with the same URL).
* an existing table with another shape raises :class:`ConfigurationError` naming the
  columns found and expected, instead of writing into someone else's table.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import ssl
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .. import envelope
from ..base import BaseCache
from ..bridge import LoopLocal
from ..config import NotGiven, split_settings
from ..contract import Backend, WriteItem
from ..exceptions import BackendError, ConfigurationError

__all__ = [
    "CHUNK", "DEFAULT_CONNECT_TIMEOUT", "DEFAULT_POOL_SIZE", "DEFAULT_PURGE_INTERVAL",
    "DEFAULT_TABLE", "KEY_HEAD_BYTES", "SQLBackend", "SQLCache", "build_table", "key_parts",
]

DEFAULT_TABLE = "asynccache_entries"
DEFAULT_POOL_SIZE = 10
DEFAULT_PURGE_INTERVAL = 60.0
DEFAULT_CONNECT_TIMEOUT = 5.0
#: Keys per query of a batch get and rows per statement of a batch set.
CHUNK = 1000
#: Bytes of a key kept in the indexed ``key_head`` column (255 fits MySQL's index limit).
KEY_HEAD_BYTES = 255
_PURGE_CHUNK = 5000
_COLUMNS = ("key_hash", "key_head", "key_tail", "value", "created_at", "expires_at")
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_DRIVERS = {"postgresql": "asyncpg", "mysql": "asyncmy", "mariadb": "asyncmy",
            "sqlite": "aiosqlite"}

T = TypeVar("T")


def key_parts(key: str) -> tuple[bytes, bytes, bytes | None]:
    """``(hash, head, tail)`` of a stored key as they are written to the table."""
    raw = key.encode("utf-8", "surrogatepass")
    head, tail = raw[:KEY_HEAD_BYTES], raw[KEY_HEAD_BYTES:]
    return hashlib.sha256(raw).digest(), head, tail or None


def _binary(mysql_type: Any) -> Any:
    return sa.LargeBinary().with_variant(mysql_type, "mysql", "mariadb")


def build_table(name: str, metadata: sa.MetaData, schema: str | None = None,
                extra: Sequence[sa.Column[Any]] = ()) -> sa.Table:
    """The entries table with dialect-correct types (see the module docstring).

    ``extra`` columns (nullable) are added for stores that keep more per entry (the
    pgvector semantic store keeps the prompt and its vector).
    """
    from sqlalchemy.dialects import mysql

    table = sa.Table(
        name, metadata,
        sa.Column("key_hash", _binary(mysql.BINARY(32)), primary_key=True),
        sa.Column("key_head", _binary(mysql.VARBINARY(KEY_HEAD_BYTES)), nullable=False),
        sa.Column("key_tail", _binary(mysql.LONGBLOB()), nullable=True),
        sa.Column("value", _binary(mysql.LONGBLOB()), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=True),
        *extra,
        schema=schema,
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    sa.Index(f"{name}_head", table.c.key_head)
    sa.Index(f"{name}_expiry", table.c.expires_at)
    return table


class _Store:
    """One event loop's engine, with statements built for its dialect."""

    def __init__(self, engine: AsyncEngine, table: sa.Table, owned: bool) -> None:
        self.engine = engine
        self.owned = owned
        self.dialect = engine.dialect.name
        t = table
        self.table = t
        live = sa.or_(t.c.expires_at.is_(None), t.c.expires_at > sa.bindparam("now"))
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import ARRAY

            hashes = sa.bindparam("hashes", type_=ARRAY(sa.LargeBinary()))
            match = t.c.key_hash == sa.any_(hashes)
        else:
            match = t.c.key_hash.in_(sa.bindparam("hashes", expanding=True))
        self.select = sa.select(t.c.key_hash, t.c.value).where(match, live)
        self.delete = sa.delete(t).where(match)
        self.upsert = self._upsert(t)
        self._driver_sql(engine, t)
        self.insert_missing = self._insert_missing(t)
        self.expiry = sa.select(t.c.expires_at).where(
            t.c.key_hash == sa.bindparam("hash"), live
        )
        self.lock_row = sa.select(t.c.value, t.c.expires_at).where(
            t.c.key_hash == sa.bindparam("hash")
        ).with_for_update()
        self.update_value = sa.update(t).where(t.c.key_hash == sa.bindparam("hash")).values(
            value=sa.bindparam("new_value"), expires_at=sa.bindparam("new_expires_at"),
            created_at=sa.bindparam("new_created_at"),
        )
        doomed = sa.select(t.c.key_hash).where(t.c.expires_at <= sa.bindparam("now"))
        if self.dialect in ("mysql", "mariadb"):
            # MySQL cannot delete from a table it selects from in a subquery, but it can
            # delete with a LIMIT.
            expired = t.c.expires_at <= sa.bindparam("now")
            self.purge = sa.delete(t).where(expired).with_dialect_options(mysql_limit=_PURGE_CHUNK)
        else:
            self.purge = sa.delete(t).where(t.c.key_hash.in_(doomed.limit(_PURGE_CHUNK)
                                                             .scalar_subquery()))

    def _driver_sql(self, engine: AsyncEngine, t: sa.Table) -> None:
        """The hot statements as the driver's own SQL (PostgreSQL and MariaDB/MySQL).

        Run with ``exec_driver_sql``: SQLAlchemy still owns the pool, transactions and
        error handling (a connection killed by a server restart is invalidated), but a
        1,000-row batch skips per-parameter bind processing and row conversion, which
        cost about a third of the batch's time next to the raw driver.
        """
        self.driver_select: str | None = None
        self.driver_upsert: str | None = None
        name = engine.dialect.identifier_preparer.format_table(t)
        columns = ", ".join(_COLUMNS)
        extra = [c.name for c in t.columns if c.name not in _COLUMNS]
        if self.dialect == "postgresql":
            self.driver_select = (
                f"SELECT key_hash, value FROM {name} WHERE key_hash = ANY($1::bytea[])"
                " AND (expires_at IS NULL OR expires_at > $2)")
            # A plain write replaces the whole entry: extra columns (a semantic store's
            # prompt and vector) of an older version must not survive it.
            updates = [f"{c} = EXCLUDED.{c}" for c in _COLUMNS[1:]] + [f"{c} = NULL" for c in extra]
            self.driver_upsert = (
                f"INSERT INTO {name} ({columns}) VALUES ($1, $2, $3, $4, $5, $6)"
                f" ON CONFLICT (key_hash) DO UPDATE SET {', '.join(updates)}")
        elif self.dialect in ("mysql", "mariadb"):
            self.driver_select = (
                f"SELECT key_hash, value FROM {name} WHERE key_hash IN ({{marks}})"
                " AND (expires_at IS NULL OR expires_at > %s)")
            updates = [f"{c} = VALUES({c})" for c in _COLUMNS[1:]] + [f"{c} = NULL" for c in extra]
            # One "VALUES (...)" group: the driver's executemany turns it into one
            # multi-row INSERT for the whole batch.
            self.driver_upsert = (
                f"INSERT INTO {name} ({columns}) VALUES (%s, %s, %s, %s, %s, %s)"
                f" ON DUPLICATE KEY UPDATE {', '.join(updates)}")

    def _upsert(self, t: sa.Table) -> Any:
        """SQLite's upsert (PostgreSQL and MariaDB/MySQL use :meth:`_driver_sql`'s)."""
        if self.dialect != "sqlite":
            return None
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        lite = sqlite_insert(t).values({c: sa.bindparam(c) for c in _COLUMNS})
        # A plain write replaces the whole entry: extra columns (a semantic store's prompt
        # and vector) of an older version must not survive it.
        cleared = {c.name: sa.null() for c in t.columns if c.name not in _COLUMNS}
        return lite.on_conflict_do_update(
            index_elements=[t.c.key_hash],
            set_={**{c: lite.excluded[c] for c in _COLUMNS[1:]}, **cleared},
        )

    def _insert_missing(self, t: sa.Table) -> Any:
        columns: dict[str, Any] = {c: sa.bindparam(c) for c in _COLUMNS}
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(t).values(columns).on_conflict_do_nothing()
        if self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            return sqlite_insert(t).values(columns).on_conflict_do_nothing()
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        # Not INSERT IGNORE: on a duplicate it takes a shared row lock, and two
        # increments upgrading theirs to FOR UPDATE deadlock. A no-op update takes the
        # exclusive lock at once.
        return mysql_insert(t).values(columns).on_duplicate_key_update(key_hash=t.c.key_hash)

    async def aclose(self) -> None:
        if self.owned:
            await self.engine.dispose()


def _tls_context(ca: str | os.PathLike[str] | None, certfile: str | os.PathLike[str] | None,
                 keyfile: str | os.PathLike[str] | None) -> ssl.SSLContext | None:
    """A verifying TLS context for the database connection, or ``None`` (no TLS asked)."""
    if ca is None:
        if certfile is not None or keyfile is not None:
            raise ConfigurationError("ssl_certfile/ssl_keyfile need ssl_ca_certs (the CA "
                                     "that signed the database server's certificate)")
        return None
    try:
        context = ssl.create_default_context(cafile=os.fspath(ca))
        if certfile is not None:
            context.load_cert_chain(os.fspath(certfile),
                                    None if keyfile is None else os.fspath(keyfile))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load the TLS files for the SQL store: {exc}") from None
    return context


#: SQL stores on SQLite files, for the fork hooks below.
_SQLITE_STORES: weakref.WeakSet[SQLBackend] = weakref.WeakSet()


def _note_busy_before_fork() -> None:
    for backend in list(_SQLITE_STORES):
        backend._busy_at_fork = backend._in_use > 0


def _refuse_inherited_transactions() -> None:
    for backend in list(_SQLITE_STORES):
        if backend._busy_at_fork:
            backend._forked_mid_use = True
        backend._in_use = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_note_busy_before_fork,
                        after_in_child=_refuse_inherited_transactions)


class SQLBackend(Backend):
    """Entries in one table of a SQL database, through SQLAlchemy's asyncio Core.

    Settings: ``url`` (``postgresql+asyncpg://``, ``mysql+asyncmy://``,
    ``mariadb+asyncmy://``, ``sqlite+aiosqlite://``; a URL without a driver gets the
    async one), or ``engine`` (an ``AsyncEngine`` the application owns); ``table``
    (name, default ``asynccache_entries``) and ``schema``; ``pool_size``;
    ``purge_interval`` (seconds between background purges of expired rows);
    ``connect_timeout`` (seconds); ``engine_options`` (passed to
    ``create_async_engine``); ``ssl_ca_certs`` (TLS to PostgreSQL or MariaDB/MySQL,
    verifying the server against that CA file and its host name), with
    ``ssl_certfile`` / ``ssl_keyfile`` for a client certificate.
    """

    name: ClassVar[str] = "sql"
    remote: ClassVar[bool] = True
    max_batch: ClassVar[int] = CHUNK

    def __init__(self, url: str | sa.URL | None = None, *, engine: AsyncEngine | None = None,
                 table: str = DEFAULT_TABLE, schema: str | None = None,
                 pool_size: int = DEFAULT_POOL_SIZE,
                 purge_interval: float = DEFAULT_PURGE_INTERVAL,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 engine_options: dict[str, Any] | None = None,
                 extra_columns: Sequence[sa.Column[Any]] = (),
                 before_create: Sequence[str] = (),
                 ssl_ca_certs: str | os.PathLike[str] | None = None,
                 ssl_certfile: str | os.PathLike[str] | None = None,
                 ssl_keyfile: str | os.PathLike[str] | None = None) -> None:
        self._tls = _tls_context(ssl_ca_certs, ssl_certfile, ssl_keyfile)
        if (url is None) == (engine is None):
            raise ConfigurationError("pass exactly one of url= (a database URL) or engine= "
                                     "(an AsyncEngine)")
        if engine is not None and not isinstance(engine, AsyncEngine):
            raise ConfigurationError(
                f"engine must be a sqlalchemy.ext.asyncio.AsyncEngine, got {type(engine).__name__}"
            )
        if not isinstance(table, str) or not _TABLE_NAME.fullmatch(table):
            raise ConfigurationError(
                f"table must be a plain SQL name (letters, digits, _; at most 63), got {table!r}"
            )
        if schema is not None and not (isinstance(schema, str) and _TABLE_NAME.fullmatch(schema)):
            raise ConfigurationError(f"schema must be a plain SQL name, got {schema!r}")
        for name, value in (("pool_size", pool_size), ("purge_interval", purge_interval),
                            ("connect_timeout", connect_timeout)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 or (
                name == "pool_size" and not isinstance(value, int)
            ):
                raise ConfigurationError(f"{name} must be positive, got {value!r}")
        self.url = self._resolve_url(url if url is not None else engine.url)  # type: ignore[union-attr]
        self.dialect = self.url.get_backend_name()
        metadata = sa.MetaData()
        for statement in before_create:
            sa.event.listen(metadata, "before_create", sa.DDL(statement))
        self.table = build_table(table, metadata, schema, extra_columns)
        self.pool_size = pool_size
        self.purge_interval = float(purge_interval)
        self.connect_timeout = float(connect_timeout)
        self.engine_options = dict(engine_options or {})
        self._given_engine = engine
        self._given_loop: asyncio.AbstractEventLoop | None = None
        self._stores: LoopLocal[_Store] = LoopLocal(self._open, _close)
        self._table_checked = False
        self._next_purge = 0.0
        #: SQLite only: calls holding a pooled connection now. A transaction on SQLite
        #: spans awaits (the driver's thread runs each statement), so a fork can come in
        #: the middle of one, and a child would inherit SQLite's lock state for the file
        #: as it was then: its writes would then go through locks it does not hold, which
        #: corrupts the file. Such a child refuses to use the store (see _run).
        self._in_use = 0
        self._busy_at_fork = False
        self._forked_mid_use = False
        if self.dialect == "sqlite":
            _SQLITE_STORES.add(self)

    @staticmethod
    def _resolve_url(url: str | sa.URL) -> sa.URL:
        try:
            parsed = sa.make_url(url)
        except Exception as exc:
            raise ConfigurationError(f"cannot read the database url: {exc}") from None
        backend = parsed.get_backend_name()
        if backend not in _DRIVERS:
            raise ConfigurationError(
                f"url must be postgresql+asyncpg://, mysql+asyncmy://, mariadb+asyncmy:// or "
                f"sqlite+aiosqlite://, got a {backend!r} url"
            )
        if "+" not in parsed.drivername:
            parsed = parsed.set(drivername=f"{backend}+{_DRIVERS[backend]}")
        return parsed

    # -- engines, one per event loop -----------------------------------------------------

    def _engine_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.dialect in ("mysql", "mariadb"):
            connect_args: dict[str, Any] = {"connect_timeout": self.connect_timeout}
        else:
            connect_args = {"timeout": self.connect_timeout}
        if self._tls is not None:
            if self.dialect == "sqlite":
                raise ConfigurationError("ssl_ca_certs applies to PostgreSQL and MariaDB/MySQL")
            # asyncpg and asyncmy both take an SSLContext as ``ssl``.
            connect_args["ssl"] = self._tls
        if self.dialect != "sqlite" or self.url.database not in (None, "", ":memory:"):
            options.update(pool_size=self.pool_size, max_overflow=self.pool_size)
        given = dict(self.engine_options)
        options["connect_args"] = {**connect_args, **given.pop("connect_args", {})}
        options.update(given)
        return options

    async def _open(self) -> _Store:
        loop = asyncio.get_running_loop()
        if self._given_engine is not None and self._given_loop in (None, loop):
            self._given_loop = loop
            store = _Store(self._given_engine, self.table, owned=False)
        else:
            store = _Store(create_async_engine(self.url, **self._engine_options()), self.table,
                           owned=True)
        try:
            if not self._table_checked:
                await self._prepare_table(store.engine)
                self._table_checked = True
        except BaseException:
            await store.aclose()
            raise
        return store

    async def _prepare_table(self, engine: AsyncEngine) -> None:
        async with engine.begin() as connection:
            found = await connection.run_sync(self._columns_found)
            if found is None:
                try:
                    await connection.run_sync(self.table.metadata.create_all, checkfirst=True)
                except DBAPIError:
                    # Another process created it between our look and our create.
                    found = await connection.run_sync(self._columns_found)
                    if found is None:
                        raise
        if found is not None:
            expected = {column.name for column in self.table.columns}
            if set(found) != expected:
                raise ConfigurationError(
                    f"table {self.table.fullname!r} exists with columns {sorted(found)}, not the "
                    f"cache's {sorted(expected)}; pass table= to use another table"
                )

    def _columns_found(self, connection: sa.Connection) -> list[str] | None:
        inspector = sa.inspect(connection)
        if not inspector.has_table(self.table.name, schema=self.table.schema):
            return None
        return [c["name"] for c in inspector.get_columns(self.table.name,
                                                         schema=self.table.schema)]

    async def _store(self) -> _Store:
        return self._stores.peek() or await self._stores.get()

    async def _run(self, work: Callable[[AsyncConnection, _Store], Awaitable[T]],
                   transaction: bool = False) -> T:
        """Run ``work`` on a pooled connection, once more if the connection was dead.

        A server restart leaves every pooled connection dead; SQLAlchemy invalidates the
        pool on the first failure, so one retry on a fresh connection succeeds.
        """
        if self._forked_mid_use:
            raise BackendError(
                "this process was forked while the SQL store had a transaction open on its "
                f"SQLite file {self.url.database!r}; SQLite's lock state for the file came "
                "along half-way, and writing through it could corrupt the file, so the store "
                "is off in this process. Create the cache after the fork, or use "
                'type="sqlite", whose SQLite store closes its connections at a fork'
            )
        self._in_use += 1
        try:
            store = await self._store()
            for attempt in (1, 2):
                try:
                    if transaction:
                        async with store.engine.begin() as connection:
                            return await work(connection, store)
                    async with store.engine.connect() as connection:
                        result = await work(connection, store)
                        await connection.commit()
                        return result
                except DBAPIError as exc:
                    if attempt == 2 or not exc.connection_invalidated:
                        raise
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            self._in_use -= 1

    def _purge_due(self) -> bool:
        now = time.monotonic()
        if now < self._next_purge:
            return False
        self._next_purge = now + self.purge_interval
        return True

    # -- the backend contract ------------------------------------------------------------

    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        hashes = [hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest() for key in keys]
        now = self.clock()

        async def select(connection: AsyncConnection, store: _Store) -> dict[bytes, bytes]:
            found: dict[bytes, bytes] = {}
            unique = list(dict.fromkeys(hashes))
            for start in range(0, len(unique), CHUNK):
                chunk = unique[start : start + CHUNK]
                if store.driver_select is None:
                    result = await connection.execute(store.select,
                                                      {"hashes": chunk, "now": now})
                elif store.dialect == "postgresql":
                    result = await connection.exec_driver_sql(store.driver_select, (chunk, now))
                else:
                    marks = ", ".join(["%s"] * len(chunk))
                    result = await connection.exec_driver_sql(
                        store.driver_select.format(marks=marks), (*chunk, now))
                found.update((bytes(h), bytes(v)) for h, v in result)
            return found

        found = await self._run(select)
        return [found.get(h) for h in hashes]

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        if not items:
            return None
        now = self.clock()
        rows: dict[bytes, dict[str, Any]] = {}
        for key, data, ttl in items:  # the last write of a key in a batch wins
            key_hash, head, tail = key_parts(key)
            rows[key_hash] = {"key_hash": key_hash, "key_head": head, "key_tail": tail,
                              "value": data, "created_at": now,
                              "expires_at": None if ttl is None else now + ttl}
        values = list(rows.values())
        purge = self._purge_due()

        async def upsert(connection: AsyncConnection, store: _Store) -> None:
            for start in range(0, len(values), CHUNK):
                chunk = values[start : start + CHUNK]
                if store.driver_upsert is None:
                    await connection.execute(store.upsert, chunk)
                else:
                    await connection.exec_driver_sql(
                        store.driver_upsert, [tuple(row[c] for c in _COLUMNS) for row in chunk])
            if purge:
                # At most one bounded purge per interval rides along with a write: no
                # background task to outlive the cache or its loop.
                await connection.execute(store.purge, {"now": now})

        await self._run(upsert, transaction=True)
        return None

    async def remove_many(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        hashes = list(dict.fromkeys(key_parts(key)[0] for key in keys))

        async def delete(connection: AsyncConnection, store: _Store) -> int:
            deleted = 0
            for start in range(0, len(hashes), CHUNK):
                result = await connection.execute(store.delete,
                                                  {"hashes": hashes[start : start + CHUNK]})
                deleted += result.rowcount
            return deleted

        return await self._run(delete, transaction=True)

    async def remove_prefix(self, prefix: str) -> int:
        raw = prefix.encode("utf-8", "surrogatepass")
        t = self.table
        if not raw:
            statement = sa.delete(t)
        elif len(raw) <= KEY_HEAD_BYTES:
            statement = sa.delete(t).where(t.c.key_head >= raw, t.c.key_head < raw + b"\xff")
        else:
            head, rest = raw[:KEY_HEAD_BYTES], raw[KEY_HEAD_BYTES:]
            statement = sa.delete(t).where(t.c.key_head == head, t.c.key_tail >= rest,
                                           t.c.key_tail < rest + b"\xff")

        async def clear(connection: AsyncConnection, store: _Store) -> int:
            return int((await connection.execute(statement)).rowcount)

        return await self._run(clear, transaction=True)

    async def increment_counter(self, key: str, amount: float, ttl: float | None) -> float:
        key_hash, head, tail = key_parts(key)
        now = self.clock()

        async def add(connection: AsyncConnection, store: _Store) -> float:
            # Insert-if-missing first (it takes the write lock on SQLite), then lock the
            # row: concurrent increments from any process serialise on it.
            await connection.execute(store.insert_missing, {
                "key_hash": key_hash, "key_head": head, "key_tail": tail,
                "value": b"0", "created_at": now, "expires_at": None if ttl is None else now + ttl,
            })
            row = (await connection.execute(store.lock_row, {"hash": key_hash})).one()
            expires_at = row.expires_at
            if expires_at is not None and expires_at <= now:
                expires_at = None if ttl is None else now + ttl  # an expired counter restarts
                value = amount
            else:
                value = envelope.counter_value(bytes(row.value)) + amount
            await connection.execute(store.update_value, {
                "hash": key_hash, "new_value": orjson.dumps(value),
                "new_expires_at": expires_at, "new_created_at": now,
            })
            return value

        return await self._run(add, transaction=True)

    async def stored_ttl(self, key: str) -> float | NotGiven | None:
        key_hash = key_parts(key)[0]
        now = self.clock()

        async def expiry(connection: AsyncConnection, store: _Store) -> tuple[Any, ...] | None:
            row = (await connection.execute(store.expiry, {"hash": key_hash, "now": now})).first()
            return None if row is None else tuple(row)

        found = await self._run(expiry)
        if found is None or found[0] is None:
            return None
        return max(0.0, float(found[0]) - now)

    async def purge(self) -> int:
        """Delete every expired row now; return how many."""
        now = self.clock()

        async def purge(connection: AsyncConnection, store: _Store) -> int:
            removed = 0
            while True:
                count = int((await connection.execute(store.purge, {"now": now})).rowcount)
                removed += count
                if count < _PURGE_CHUNK:
                    return removed

        return await self._run(purge, transaction=True)

    async def check_health(self) -> None:
        async def one(connection: AsyncConnection, store: _Store) -> None:
            await connection.execute(sa.text("SELECT 1"))

        await self._run(one)

    async def aclose(self) -> None:
        await self._stores.aclose_all()

    def describe(self) -> dict[str, Any]:
        return {"url": self.url.render_as_string(hide_password=True),
                "table": self.table.fullname}


async def _close(store: _Store) -> None:
    await store.aclose()


class SQLCache(BaseCache):
    """A cache in a SQL database: PostgreSQL, MariaDB/MySQL or SQLite, natively async.

    Connection settings are those of :class:`SQLBackend`; every other keyword
    (``namespace``, ``ttl``...) is a :class:`~asynccache.base.BaseCache` setting.

    >>> cache = SQLCache(url="postgresql+asyncpg://app@db/app", ttl=3600)  # doctest: +SKIP
    >>> await cache.async_set_cache("k", {"answer": 42})                     # doctest: +SKIP
    True
    """

    def __init__(self, url: str | sa.URL | None = None, **settings: Any) -> None:
        backend, cache = split_settings("SQLCache", settings, SQLBackend)
        super().__init__(SQLBackend(url, **backend), **cache)
