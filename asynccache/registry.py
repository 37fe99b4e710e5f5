"""Cache type names -> backend factories, imported lazily with install hints."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .exceptions import ConfigurationError, MissingExtraError

if TYPE_CHECKING:
    from .base import Backend


@dataclass(frozen=True)
class BackendSpec:
    """Where a backend lives and which extra installs its dependencies."""

    target: str  # "module:callable" returning a Backend
    extra: str | None
    description: str


_SPECS: dict[str, BackendSpec] = {
    "local": BackendSpec("asynccache.backends.memory:MemoryBackend", None, "in-process LRU"),
    "disk": BackendSpec("asynccache.backends.disk:DiskBackend", None, "files on local disk"),
    "cassette": BackendSpec("asynccache.backends.cassette:CassetteBackend", None,
                            "recorded answers in a JSON file, replayed in tests"),
    "redis": BackendSpec("asynccache.backends.redis:create_redis_backend", "redis",
                         "Redis or Redis Cluster"),
    "redis-cluster": BackendSpec("asynccache.backends.redis_cluster:RedisClusterBackend",
                                 "redis", "Redis Cluster"),
    "memcached": BackendSpec("asynccache.backends.memcached:MemcachedBackend", "memcached",
                             "one or more memcached nodes"),
    "s3": BackendSpec("asynccache.backends.s3:S3Backend", "s3", "Amazon S3 or compatible"),
    "gcs": BackendSpec("asynccache.backends.gcs:GCSBackend", "gcs", "Google Cloud Storage"),
    "azure_blob": BackendSpec("asynccache.backends.azure_blob:AzureBlobBackend", "azure",
                              "Azure Blob Storage"),
    "sqlite": BackendSpec("asynccache.backends.sqlite:SQLiteBackend", None,
                          "one SQLite file (WAL, group commit)"),
    "sql": BackendSpec("asynccache.backends.sql:SQLBackend", "sql",
                       "PostgreSQL, MariaDB/MySQL or SQLite through SQLAlchemy asyncio"),
    "redis-semantic": BackendSpec("asynccache.semantic.redis:RedisSemanticBackend", "redis",
                                  "semantic cache on Redis vector search"),
    "qdrant-semantic": BackendSpec("asynccache.semantic.qdrant:QdrantSemanticBackend", "qdrant",
                                   "semantic cache on Qdrant"),
    "postgres-semantic": BackendSpec("asynccache.semantic.pgvector:PgVectorSemanticBackend",
                                     "postgres", "semantic cache on PostgreSQL + pgvector"),
    "local-semantic": BackendSpec("asynccache.semantic.embedded:LocalSemanticBackend",
                                  "local-semantic",
                                  "semantic cache with no server: in-process index over disk"),
}
_ALIASES = {"memory": "local", "in-memory": "local", "redis_cluster": "redis-cluster",
            "azure-blob": "azure_blob", "azure": "azure_blob", "redis_semantic": "redis-semantic",
            "qdrant_semantic": "qdrant-semantic", "local_semantic": "local-semantic",
            "sqlite3": "sqlite", "postgres_semantic": "postgres-semantic",
            "pgvector": "postgres-semantic"}


def cache_types() -> list[str]:
    """Every type name :class:`~asynccache.Cache` accepts (aliases excluded)."""
    return sorted(_SPECS)


def canonical_type(type_name: str) -> str:
    if not isinstance(type_name, str):
        raise ConfigurationError(f"cache type must be a str, got {type_name!r}")
    name = _ALIASES.get(type_name.lower(), type_name.lower())
    if name not in _SPECS:
        raise ConfigurationError(
            f"unknown cache type {type_name!r}; choose one of: {', '.join(cache_types())}"
        )
    return name


def backend_factory(type_name: str) -> Callable[..., Backend]:
    """Import and return the factory for ``type_name``, or say which extra to install."""
    spec = _SPECS[canonical_type(type_name)]
    module_name, _, attribute = spec.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if spec.extra is None or (exc.name or "").startswith("asynccache"):
            raise
        raise MissingExtraError(
            f"Cache(type={type_name!r}) needs the {spec.extra!r} extra, which is not installed "
            f"(missing module {exc.name!r}): pip install 'asynccache[{spec.extra}]'"
        ) from exc
    factory: Callable[..., Backend] = getattr(module, attribute)
    return factory


def create_backend(type_name: str, settings: dict[str, Any]) -> Backend:
    """Build the backend for ``type_name``; unknown settings raise naming the setting."""
    factory = backend_factory(type_name)
    try:
        return factory(**settings)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc) or "positional argument" in str(exc):
            raise ConfigurationError(
                f"Cache(type={type_name!r}) does not accept that setting: {exc}"
            ) from exc
        raise
