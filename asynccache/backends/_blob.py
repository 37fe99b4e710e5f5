"""What the object-store backends (S3, GCS, Azure Blob) share.

:class:`BlobBackend` turns the batch contract of :class:`~asynccache.base.Backend` into a
handful of per-object primitives (get, head, put, delete, list one page) that each store
implements in a few lines. Everything else lives here once:

* **Object names.** A stored key becomes ``<path><namespace>/<key>`` where both parts are
  encoded so that any key is safe: only ``A-Z a-z 0-9 - _`` are kept, every other
  character becomes ``~XX`` per UTF-8 byte (so there is no ``.``/``..`` segment, no
  control character, no ``%``), and the namespace of the stored key
  (:func:`asynccache.keys.split_stored_key`) becomes a real folder. The encoding works
  left to right one character at a time, so the name of a stored-key prefix is a prefix
  of the names of its keys and ``clear(prefix)`` is a prefix listing. Long parts are cut
  and suffixed with ``~~`` and a SHA-256 (``~~`` never occurs in a plain encoding, so
  hashed and plain names cannot collide); names stay under about 800 characters plus the
  path.
* **Expiry.** Each object carries its envelope's absolute expiry time
  (:func:`asynccache.envelope.peek_expires_at`) as object metadata too, so a ``HEAD``
  answers TTL questions without the body. A read that finds an expired object deletes
  it in the background (conditionally on its version where the store allows it, so a
  fresh write racing the delete survives); the cache decides the miss from the envelope
  itself. Object stores have no native TTL; :meth:`install_lifecycle_rule` adds a
  store-side safety net where the store supports one.
* **Bounded concurrency.** Batches run one request per object, at most
  ``max_concurrency`` at a time per event loop (an :class:`asyncio.Semaphore`). A batch
  where some objects fail returns per-item results (failed reads are misses, failed
  writes ``False``); a batch where every object fails raises, so the cache's circuit
  breaker and error counters see it.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from .. import envelope
from ..bridge import LoopLocal
from ..config import NOT_GIVEN, NotGiven
from ..contract import Backend, WriteItem
from ..exceptions import CacheConnectionError, ConfigurationError
from ..keys import split_stored_key

logger = logging.getLogger("asynccache")

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_MAX_CONCURRENCY = 64
DEFAULT_LIST_PAGE_SIZE = 1000

#: Longest encoded namespace kept readable; longer ones become ``~~<sha256>``.
MAX_NAMESPACE_CHARS = 200
#: Longest encoded key kept whole; longer ones keep ``KEY_HEAD_CHARS`` plus ``~~<sha256>``.
MAX_KEY_CHARS = 600
KEY_HEAD_CHARS = 500
MAX_PATH_CHARS = 200

#: Value of the expiry metadata for entries that never expire.
NEVER = "never"

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _escape(match: re.Match[str]) -> str:
    return "".join(f"~{byte:02X}" for byte in match.group().encode("utf-8", "surrogatepass"))


def _encode(text: str) -> str:
    return _UNSAFE.sub(_escape, text)


def _cut(encoded: str, limit: int) -> str:
    """``encoded[:limit]`` moved back so that no ``~XX`` escape is split."""
    head = encoded[:limit]
    if head.endswith("~"):
        return head[:-1]
    if len(head) >= 2 and head[-2] == "~":
        return head[:-2]
    return head


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _namespace_segment(namespace: str) -> str:
    encoded = _encode(namespace)
    if len(encoded) > MAX_NAMESPACE_CHARS:
        return "~~" + _digest(namespace)
    return encoded


def _key_segment(key: str) -> str:
    encoded = _encode(key)
    if len(encoded) > MAX_KEY_CHARS:
        return _cut(encoded, KEY_HEAD_CHARS) + "~~" + _digest(key)
    return encoded


def object_name(stored_key: str) -> str:
    """The safe object name (without the path) of a stored key.

    >>> object_name("my%20ns:../../etc/passwd")
    'my~2520ns/~2E~2E~2F~2E~2E~2Fetc~2Fpasswd'
    """
    namespace, key = split_stored_key(stored_key)
    if namespace is None:
        return _key_segment(key)
    return _namespace_segment(namespace) + "/" + _key_segment(key)


def listing_prefix(prefix: str) -> str:
    """The object-name prefix (without the path) shared by every stored key starting with it.

    Exact for ``""`` and for namespace prefixes (``"ns:"``), which is what caches clear.
    A prefix reaching past the readable head of a hashed long key does not match that key.
    """
    namespace, key = split_stored_key(prefix)
    if namespace is None:
        return _encode(key)
    return _namespace_segment(namespace) + "/" + _encode(key)


def require_name(value: object, setting: str) -> str:
    """A bucket or container name: a non-empty str, else a ConfigurationError naming it."""
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{setting} must be a non-empty str, got {value!r:.80}")
    return value


def normalize_path(path: str | None, setting: str) -> str:
    """A user's folder inside the bucket (``"cache"``, ``"llm/cache/"``) as ``"llm/cache/"``."""
    if path is None or path == "":
        return ""
    if not isinstance(path, str):
        raise ConfigurationError(f"{setting} must be a str, got {path!r:.80}")
    if len(path) > MAX_PATH_CHARS:
        raise ConfigurationError(f"{setting} must be at most {MAX_PATH_CHARS} characters")
    parts = [part for part in path.strip("/").split("/") if part]
    for part in parts:
        if part in {".", ".."} or any(ord(ch) < 32 or ord(ch) == 127 for ch in part):
            raise ConfigurationError(
                f"{setting}={path!r:.80} holds a '.'/'..' segment or a control character"
            )
    return "/".join(parts) + "/" if parts else ""


def check_positive_int(value: object, setting: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(f"{setting} must be a positive int, got {value!r:.80}")
    return value


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object as a store returns it."""

    data: bytes
    metadata: dict[str, str]
    #: Store-specific version (S3 ETag, GCS generation, Azure ETag) for conditional deletes.
    version: str | None = None


@dataclass(frozen=True, slots=True)
class ObjectHead:
    """An object's metadata without its body."""

    metadata: dict[str, str]
    version: str | None = None


class BlobBackend(Backend, abc.ABC):
    """Shared object-store logic; subclasses implement the per-object primitives.

    ``path`` is a folder inside the bucket/container; ``max_concurrency`` bounds requests
    in flight per event loop; ``list_page_size`` is the page size of prefix listings.
    """

    name: ClassVar[str] = "blob"
    max_batch: ClassVar[int] = 1000
    #: Metadata name holding the absolute expiry time (Azure needs an identifier).
    expiry_metadata: ClassVar[str] = "asynccache-expires-at"
    #: The store's clients, one per event loop; subclasses create it.
    _clients: LoopLocal[Any]

    def __init__(self, *, path: str | None, path_setting: str,
                 max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
                 list_page_size: int = DEFAULT_LIST_PAGE_SIZE) -> None:
        self.path = normalize_path(path, path_setting)
        self.max_concurrency = check_positive_int(max_concurrency, "max_concurrency")
        self.list_page_size = check_positive_int(list_page_size, "list_page_size")
        self._semaphores: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}
        # Strong references: the loop only keeps weak ones, and a collected task would
        # silently never delete its expired object.
        self._cleanup_tasks: set[asyncio.Task[None]] = set()
        #: Expired objects deleted in the background so far.
        self.expired_deleted = 0
        #: Per-object failures inside batches that otherwise succeeded.
        self.object_errors = 0

    # -- primitives a store implements --------------------------------------------------

    @abc.abstractmethod
    async def _get_object(self, name: str) -> StoredObject | None:
        """The object's bytes and metadata, or ``None`` when it does not exist."""

    @abc.abstractmethod
    async def _head_object(self, name: str) -> ObjectHead | None:
        """The object's metadata, or ``None`` when it does not exist."""

    @abc.abstractmethod
    async def _put_object(self, name: str, data: bytes, metadata: dict[str, str]) -> None:
        """Write (overwrite) the object with its metadata."""

    @abc.abstractmethod
    async def _delete_object(self, name: str, version: str | None = None) -> bool:
        """Delete the object (only if still at ``version`` when given); whether it existed."""

    @abc.abstractmethod
    async def _list_page(self, prefix: str, token: str | None) -> tuple[list[str], str | None]:
        """One page of object names under ``prefix`` and the next page's token (or None)."""

    @abc.abstractmethod
    async def _check_store(self) -> None:
        """Raise :class:`CacheConnectionError` saying why the bucket/container is unusable."""

    async def _delete_listed(self, names: Sequence[str]) -> int:
        """Delete objects just listed (they exist); stores with a batch delete override it."""
        results = await self._bounded(self._delete_object, names)
        return self._count_deleted(results)

    async def _close(self) -> None:
        """Close every per-loop client (each on its own loop)."""
        await self._clients.aclose_all()

    async def install_lifecycle_rule(self, days: int) -> None:
        """Ask the store to delete objects under this cache's path ``days`` after writing.

        A store-side safety net for entries nobody reads again (reads delete expired
        entries themselves). It removes every object under the path older than ``days``,
        whatever its TTL.
        """
        raise NotImplementedError(f"{self.name} has no lifecycle rules asynccache can install")

    # -- naming -------------------------------------------------------------------------

    def object_name(self, stored_key: str) -> str:
        """Full object name (with the path) for a stored key."""
        return self.path + object_name(stored_key)

    def listing_prefix(self, prefix: str) -> str:
        """Full object-name prefix (with the path) for a stored-key prefix."""
        return self.path + listing_prefix(prefix)

    # -- expiry -------------------------------------------------------------------------

    def _expiry_metadata(self, data: bytes) -> dict[str, str]:
        expires_at = envelope.peek_expires_at(data)
        return {self.expiry_metadata: NEVER if expires_at is None else repr(expires_at)}

    def _expires_at(self, metadata: dict[str, str], data: bytes | None) -> float | NotGiven | None:
        """Absolute expiry from the body's envelope, else the metadata, else ``NOT_GIVEN``."""
        if data is not None:
            return envelope.peek_expires_at(data)
        raw = metadata.get(self.expiry_metadata)
        if raw is None:
            # Some stores return metadata names in another case.
            lowered = {k.lower(): v for k, v in metadata.items()}
            raw = lowered.get(self.expiry_metadata.lower())
        if raw is None:
            return NOT_GIVEN
        if raw == NEVER:
            return None
        try:
            return float(raw)
        except ValueError:
            return NOT_GIVEN

    def _is_expired(self, expires_at: float | NotGiven | None, now: float) -> bool:
        return isinstance(expires_at, float) and now >= expires_at

    def _schedule_cleanup(self, name: str, version: str | None) -> None:
        task = asyncio.get_running_loop().create_task(self._cleanup(name, version))
        self._cleanup_tasks.add(task)
        task.add_done_callback(self._cleanup_tasks.discard)

    async def _cleanup(self, name: str, version: str | None) -> None:
        try:
            if await self._delete_object(name, version):
                self.expired_deleted += 1
        except Exception as exc:  # best effort: the next read tries again
            logger.debug("asynccache: deleting expired object on %s failed: %s",
                         self.name, type(exc).__name__)

    async def wait_for_cleanup(self) -> int:
        """Wait for the background deletions of expired objects started on this loop.

        Returns how many were awaited (tests use it instead of sleeping).
        """
        loop = asyncio.get_running_loop()
        pending = [task for task in self._cleanup_tasks if task.get_loop() is loop]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        return len(pending)

    # -- bounded concurrency ------------------------------------------------------------

    def _semaphore(self) -> asyncio.Semaphore:
        # One per loop: asyncio primitives belong to the loop that first waits on them,
        # and a cache is used both from the caller's loop and from the sync bridge's.
        loop = asyncio.get_running_loop()
        semaphore = self._semaphores.get(loop)
        if semaphore is None:
            for stale in [lp for lp in self._semaphores if lp.is_closed()]:
                del self._semaphores[stale]
            semaphore = self._semaphores[loop] = asyncio.Semaphore(self.max_concurrency)
        return semaphore

    async def _bounded(self, call: Callable[[T], Awaitable[R]], items: Sequence[T]
                       ) -> list[R | BaseException]:
        """``call(item)`` for every item, at most ``max_concurrency`` at once; errors kept."""
        if not items:
            return []
        semaphore = self._semaphore()

        async def one(item: T) -> R:
            async with semaphore:
                return await call(item)

        if len(items) == 1:
            try:
                return [await one(items[0])]
            except Exception as exc:
                return [exc]
        return await asyncio.gather(*(one(item) for item in items), return_exceptions=True)

    def _settle(self, results: Sequence[object]) -> None:
        """Raise if every item failed; otherwise count the failed ones."""
        errors = [r for r in results if isinstance(r, BaseException)]
        if not errors:
            return
        for error in errors:
            if not isinstance(error, Exception):
                raise error  # cancellation and friends propagate
        if len(errors) == len(results):
            raise errors[0]
        self.object_errors += len(errors)

    def _count_deleted(self, results: Sequence[bool | BaseException]) -> int:
        self._settle(results)
        return sum(1 for r in results if r is True)

    # -- the Backend contract -----------------------------------------------------------

    async def _read(self, name: str) -> bytes | None:
        found = await self._get_object(name)
        if found is None:
            return None
        expires_at = self._expires_at(found.metadata, found.data)
        if self._is_expired(expires_at, self.clock()):
            self._schedule_cleanup(name, found.version)
            return None
        return found.data

    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        names = [self.object_name(key) for key in keys]
        unique = list(dict.fromkeys(names))
        results = await self._bounded(self._read, unique)
        self._settle(results)
        by_name = {
            name: (None if isinstance(result, BaseException) else result)
            for name, result in zip(unique, results, strict=True)
        }
        return [by_name[name] for name in names]

    async def _write(self, item: WriteItem) -> bool:
        key, data, _ = item
        await self._put_object(self.object_name(key), data, self._expiry_metadata(data))
        return True

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        # A batch may name a key twice; the last write wins, as in one Redis pipeline.
        last: dict[str, int] = {}
        for index, (key, _, _) in enumerate(items):
            last[key] = index
        order = sorted(last.values())
        results = await self._bounded(self._write, [items[i] for i in order])
        self._settle(results)
        ok = {items[i][0]: result is True for i, result in zip(order, results, strict=True)}
        flags = [ok[key] for key, _, _ in items]
        return None if all(flags) else flags

    async def remove_many(self, keys: Sequence[str]) -> int:
        names = list(dict.fromkeys(self.object_name(key) for key in keys))
        return self._count_deleted(await self._bounded(self._delete_object, names))

    async def remove_prefix(self, prefix: str) -> int:
        listing = self.listing_prefix(prefix)
        deleted = 0
        token: str | None = None
        while True:
            names, token = await self._list_page(listing, token)
            if names:
                deleted += await self._delete_listed(names)
            if not token:
                return deleted

    async def stored_ttl(self, key: str) -> float | NotGiven | None:
        name = self.object_name(key)
        head = await self._head_object(name)
        if head is None:
            return None
        expires_at = self._expires_at(head.metadata, None)
        if isinstance(expires_at, NotGiven) or expires_at is None:
            return expires_at
        now = self.clock()
        if now >= expires_at:
            self._schedule_cleanup(name, head.version)
            return None
        return expires_at - now

    async def check_health(self) -> None:
        """Check the bucket/container exists and the credentials work."""
        await self._check_store()

    async def aclose(self) -> None:
        pending = [task for task in self._cleanup_tasks if not task.done()]
        loop = asyncio.get_running_loop()
        mine = [task for task in pending if task.get_loop() is loop]
        if mine:
            await asyncio.gather(*mine, return_exceptions=True)
        await self._close()

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "max_concurrency": self.max_concurrency}

    def counters(self) -> dict[str, int]:
        return {"expired_deleted": self.expired_deleted, "object_errors": self.object_errors}


def connection_error(store: str, what: str, reason: str, exc: BaseException | None = None
                     ) -> CacheConnectionError:
    """A :class:`CacheConnectionError` worded the same way for every store."""
    detail = f" ({type(exc).__name__})" if exc is not None else ""
    return CacheConnectionError(f"{store} {what}: {reason}{detail}")
