"""Cache type names -> backend factories, imported lazily with install hints."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .exceptions import ConfigurationError, MissingExtraError

__all__ = ["BackendSpec", "backend_factory", "cache_types", "canonical_type", "extra_settings"]

if TYPE_CHECKING:
    from .contract import Backend


@dataclass(frozen=True)
class BackendSpec:
    """Where a backend lives and which extra installs its dependencies."""

    target: str  # "module:callable" returning a Backend
    extra: str | None
    description: str
    #: "module:ATTRIBUTE" naming the settings the factory takes through ``**options``.
    options: str | None = None


_REDIS_OPTIONS = "asynccache.backends.redis_settings:REDIS_SETTINGS"

_SPECS: dict[str, BackendSpec] = {
    "local": BackendSpec("asynccache.backends.memory:MemoryBackend", None, "in-process LRU"),
    "dual": BackendSpec("asynccache.dual:create_dual_backend", None,
                        "in-process L1 in front of any L2 cache"),
    "disk": BackendSpec("asynccache.backends.disk:create_disk_backend", None,
                        "a durable local folder (SQLite, or a file per entry)"),
    "cassette": BackendSpec("asynccache.backends.cassette:CassetteBackend", None,
                            "recorded answers in a JSON file, replayed in tests"),
    "redis": BackendSpec("asynccache.backends.redis:create_redis_backend", "redis",
                         "Redis or Redis Cluster", _REDIS_OPTIONS),
    "redis-cluster": BackendSpec("asynccache.backends.redis_cluster:RedisClusterBackend",
                                 "redis", "Redis Cluster", _REDIS_OPTIONS),
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
                                  "semantic cache on Redis vector search", _REDIS_OPTIONS),
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


#: Aliases listed with the type names (``"memory"`` is what most users write first).
_LISTED_ALIASES = ("memory",)


def cache_types() -> list[str]:
    """Every type name :class:`~asynccache.Cache` accepts (spelling variants excluded)."""
    return sorted([*_SPECS, *_LISTED_ALIASES])


def canonical_type(type_name: str) -> str:
    """The registered name of a type name or alias; raise listing the choices."""
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


def extra_settings(type_name: str) -> frozenset[str]:
    """Settings the backend of ``type_name`` takes through ``**options`` (imported lazily)."""
    spec = _SPECS[canonical_type(type_name)]
    if spec.options is None:
        return frozenset()
    module_name, _, attribute = spec.options.partition(":")
    names: frozenset[str] = getattr(importlib.import_module(module_name), attribute)
    return names
