"""``Cache(type=...)``: the LiteLLM-shaped entry point. Thin: no storage logic here.

Picking a backend by name and splitting the user's keyword arguments between the cache
settings and the backend's are all it does; the key-value and LLM APIs are
:class:`~asynccache.base.BaseCache`'s, which every cache class shares.
"""

from __future__ import annotations

from typing import Any

from .base import BaseCache
from .config import split_settings
from .exceptions import ConfigurationError
from .registry import backend_factory, canonical_type, extra_settings

__all__ = [
    "Cache", "disable_cache", "enable_cache", "get_default_cache", "set_default_cache",
    "update_cache",
]

_SECRET_WORDS = ("password", "secret", "key", "token", "connection_string", "credential", "sas")


class Cache(BaseCache):
    """The cache users create: pick a backend by ``type`` and pass its settings.

    ``Cache()`` is the embedded in-memory default (``type="local"``, also spelled
    ``"memory"``). Other types: ``"disk"``, ``"redis"`` (``redis_startup_nodes=`` for a
    cluster), ``"redis-cluster"``, ``"memcached"`` (``servers=[...]``), ``"s3"``,
    ``"gcs"``, ``"azure_blob"``, ``"sqlite"``, ``"sql"`` (PostgreSQL, MariaDB/MySQL,
    SQLite), ``"dual"`` (``l1=``/``l2=`` caches or settings dicts), ``"redis-semantic"``,
    ``"qdrant-semantic"``, ``"postgres-semantic"``, ``"local-semantic"``
    (:func:`~asynccache.cache_types` lists them). Settings every cache has
    (``namespace``, ``ttl``, ``mode``, ``flush_size``...) are those of
    :class:`~asynccache.config.CacheSettings`; the rest go to the backend, and a setting
    no one knows raises naming the closest known one.

    >>> cache = Cache()
    >>> key = cache.get_cache_key(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    >>> cache.set_cache(key, {"choices": [{"message": {"content": "hello"}}]}, ttl=60)
    True
    >>> cache.get_cache(key)["choices"][0]["message"]["content"]
    'hello'
    """

    def __init__(self, type: str = "local", **settings: Any) -> None:
        self.type = canonical_type(type)
        factory = backend_factory(self.type)
        owner = f"Cache(type={self.type!r})"
        backend_settings, cache_settings = split_settings(
            owner, settings, factory, extra_settings(self.type))
        self._settings = dict(settings)
        super().__init__(factory(**backend_settings), **cache_settings)

    def settings(self) -> dict[str, Any]:
        """The settings this cache was created with (secrets masked)."""
        from .redact import mask, redact

        shown: dict[str, Any] = {}
        for name, value in self._settings.items():
            if any(word in name.lower() for word in _SECRET_WORDS):
                shown[name] = mask(value)
            elif isinstance(value, str):
                shown[name] = redact(value)  # url="redis://user:pw@host" -> user:***@host
            else:
                shown[name] = value
        return shown


_default_cache: BaseCache | None = None


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


def set_default_cache(cache: BaseCache | None) -> BaseCache | None:
    """Make ``cache`` (any cache) the default cache (``None``: none); return the previous one."""
    global _default_cache
    if cache is not None and not isinstance(cache, BaseCache):
        raise ConfigurationError(f"the default cache must be a cache, got {cache!r:.80}")
    previous, _default_cache = _default_cache, cache
    return previous


def get_default_cache() -> BaseCache | None:
    """The cache set by :func:`enable_cache`, or ``None``."""
    return _default_cache
