"""asynccache: an asyncio-first cache engine for LLM calls.

>>> from asynccache import Cache
>>> cache = Cache()                       # embedded in-memory default
>>> cache.set_cache("k", {"answer": 42}, ttl=60)
True
>>> cache.get_cache("k")
{'answer': 42}
"""

from __future__ import annotations

from typing import Any

from .backends.memory import MemoryCache
from .base import BaseCache, CacheHit
from .bridge import run_sync
from .config import NOT_GIVEN, CacheSettings
from .contract import Backend
from .controls import CacheControls, CacheMode, parse_controls
from .dual import DualCache
from .exceptions import (
    AccessDeniedError,
    BackendError,
    BridgeError,
    CacheClosedError,
    CacheConnectionError,
    CacheError,
    CacheTimeoutError,
    ConfigurationError,
    ItemTooLargeError,
    MissingArgumentError,
    MissingExtraError,
    ReplayMissError,
    ResponseTypeError,
    SerializationError,
)
from .facade import Cache, disable_cache, enable_cache, get_default_cache, update_cache
from .keys import request_key
from .registry import cache_types

__version__ = "0.1.0"

# Backends with optional dependencies are imported on first use, so `import asynccache`
# stays fast and works without the extras.
_LAZY = {
    "DiskCache": "asynccache.backends.disk",
    "MemcachedCache": "asynccache.backends.memcached",
    "RedisCache": "asynccache.backends.redis",
    "RedisClusterCache": "asynccache.backends.redis_cluster",
    "S3Cache": "asynccache.backends.s3",
    "GCSCache": "asynccache.backends.gcs",
    "AzureBlobCache": "asynccache.backends.azure_blob",
    "RedisSemanticCache": "asynccache.semantic.redis",
    "QdrantSemanticCache": "asynccache.semantic.qdrant",
    "LocalSemanticCache": "asynccache.semantic.embedded",
    "PgVectorSemanticCache": "asynccache.semantic.pgvector",
    "SQLCache": "asynccache.backends.sql",
    "SQLiteCache": "asynccache.backends.sqlite",
    "cached": "asynccache.integrations.wrappers",
    "cached_sync": "asynccache.integrations.wrappers",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'asynccache' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)


__all__ = [
    "NOT_GIVEN",
    "AccessDeniedError",
    "AzureBlobCache",
    "Backend",
    "BackendError",
    "BaseCache",
    "BridgeError",
    "Cache",
    "CacheClosedError",
    "CacheConnectionError",
    "CacheControls",
    "CacheError",
    "CacheHit",
    "CacheMode",
    "CacheSettings",
    "CacheTimeoutError",
    "ConfigurationError",
    "DiskCache",
    "DualCache",
    "GCSCache",
    "ItemTooLargeError",
    "LocalSemanticCache",
    "MemcachedCache",
    "MemoryCache",
    "MissingArgumentError",
    "MissingExtraError",
    "PgVectorSemanticCache",
    "QdrantSemanticCache",
    "RedisCache",
    "RedisClusterCache",
    "RedisSemanticCache",
    "ReplayMissError",
    "ResponseTypeError",
    "S3Cache",
    "SQLCache",
    "SQLiteCache",
    "SerializationError",
    "__version__",
    "cache_types",
    "cached",
    "cached_sync",
    "disable_cache",
    "enable_cache",
    "get_default_cache",
    "parse_controls",
    "request_key",
    "run_sync",
    "update_cache",
]
