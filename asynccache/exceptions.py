"""Errors raised by asynccache.

Every error asynccache raises derives from :class:`CacheError`::

    CacheError
    ├── ConfigurationError (also ValueError)   a bad setting, control, TTL or type name
    │   ├── ItemTooLargeError                   a value over ``max_item_size``
    │   ├── AccessDeniedError                   the store refused a command to this user
    │   └── MissingArgumentError (also TypeError) a required argument left out
    ├── SerializationError (also TypeError)    a value that cannot be stored as JSON
    ├── ResponseTypeError (also TypeError)     an upstream call returned what cannot be replayed
    ├── MissingExtraError (also ImportError)   a backend whose extra is not installed
    ├── BackendError                            the store failed (translated at the boundary)
    │   ├── CacheConnectionError                unreachable, refused, bad credentials
    │   └── CacheTimeoutError (also TimeoutError) a backend call, or a sync call, took too long
    ├── CacheClosedError                        a call on a cache after ``aclose()``
    ├── ReplayMissError                         a replaying cassette has no answer
    └── BridgeError (also RuntimeError)         misuse of the sync bridge

Backend errors are translated with ``raise ... from exc`` so the original stays on
``__cause__``. Read paths never raise them to the caller (a failed read is a miss); they
surface only from explicit health checks such as :meth:`BaseCache.test_connection`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AccessDeniedError", "BackendError", "BridgeError", "CacheClosedError",
    "CacheConnectionError", "CacheError", "CacheTimeoutError", "ConfigurationError",
    "ItemTooLargeError", "MissingArgumentError", "MissingExtraError", "ReplayMissError",
    "ResponseTypeError", "SerializationError",
]


class CacheError(Exception):
    """Root of every error raised by asynccache."""


class ConfigurationError(CacheError, ValueError):
    """A setting, per-call control, TTL or cache type that asynccache cannot accept."""


class ItemTooLargeError(ConfigurationError):
    """A value whose encoded size is over the cache's ``max_item_size``."""


class AccessDeniedError(ConfigurationError):
    """The store refused an operation for lack of permission (a Redis ACL, a bucket
    policy, a SQL grant): the cache's credentials need more rights, which no retry fixes.

    :meth:`BaseCache.test_connection` raises it; on the read and write paths it is a miss
    or a failed write like any backend failure, and the log line names the permission.
    """


class MissingArgumentError(ConfigurationError, TypeError):
    """A required argument was left out (``DualCache()`` without an L2).

    Also a :class:`TypeError`, which is what Python raises for a missing argument.
    """


class SerializationError(CacheError, TypeError):
    """A value that cannot be encoded (non-JSON object, NaN, nesting too deep...)."""


class ResponseTypeError(CacheError, TypeError):
    """An upstream call returned something a wrapper cannot cache or replay
    (``stream=True`` that returned no iterable)."""


class MissingExtraError(CacheError, ImportError):
    """A backend was asked for but the optional dependency it needs is not installed."""


class BackendError(CacheError):
    """The storage backend failed; ``__cause__`` holds the client library's error."""


class CacheConnectionError(BackendError):
    """The backend could not be reached, refused the connection or the credentials."""


class CacheTimeoutError(BackendError, TimeoutError):
    """A backend operation, or a sync twin waiting on the bridge, took longer than allowed.

    Also a :class:`TimeoutError`, so ``except TimeoutError`` keeps working.
    """


class CacheClosedError(CacheError):
    """The cache was used after :meth:`BaseCache.aclose`."""


class ReplayMissError(CacheError):
    """A replay-only cache (a cassette in ``replay`` mode) has no answer for a request.

    Raised instead of letting the call go upstream. ``explanation`` (a
    :class:`~asynccache.recording.MissExplanation`) names the nearest recorded request
    and the fields that differ; the message is its text.
    """

    def __init__(self, explanation: Any) -> None:
        super().__init__(f"asynccache replay miss: {explanation}")
        self.explanation = explanation


class BridgeError(CacheError, RuntimeError):
    """The sync bridge was misused (called from its own loop thread, or after shutdown)."""
