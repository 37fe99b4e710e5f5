"""``type="disk"``: a durable cache in a local folder, on one of two stores.

* **The SQLite store** (the default for a new folder): every entry in one file,
  ``<disk_cache_dir>/asynccache.db``, through :class:`~asynccache.backends.sqlite.SQLiteBackend`
  (WAL, the gets of one loop tick answered by one ``SELECT``, the sets of one tick
  committed in one transaction, small batches on the loop thread, big ones in worker
  threads). It is several times faster than a file per entry: one commit instead of a
  file creation and a rename per set.
* **The file store** (:class:`DiskBackend`): one file per entry under sharded folders,
  written atomically. A folder that already holds file-store entries (from an earlier
  release) keeps opening with it, so an upgrade loses nothing; ``store="files"`` asks
  for it explicitly, ``store="sqlite"`` for the SQLite store.

The rest of this module is the file store. Layout under ``disk_cache_dir``::

    <disk_cache_dir>/<namespace folder>/<shard>/<sha256 of the stored key>.ace

* The file name is the SHA-256 of the stored key and the folders are fixed names or
  hashes, so no key (``../../etc``, NUL bytes, newlines, 64 KB keys, any script) can
  name a path outside the cache folder.
* A stored key's namespace (:func:`asynccache.keys.split_stored_key`) picks its folder
  (``ns-<hash>``); keys without a namespace live in ``_default``. Clearing a namespace
  therefore walks only that namespace's folder.
* Every file starts with a small header: magic, the stored key's length, the data
  length and a CRC-32. The key lets :meth:`DiskBackend.clear` match any prefix and detects
  hash collisions; the length and CRC turn a truncated or garbage file into a miss.
* Writes go to a temporary file in the entry's own folder, then ``os.replace`` moves it
  into place: readers see the old entry or the new one, never half of one.
* A read that finds an entry whose envelope has expired
  (:func:`asynccache.envelope.peek_expires_at`) deletes its file; the cache decides the
  miss from the same envelope.
* ``max_bytes`` bounds the total size of the entry files: the sizes are kept in memory
  (after a lazy scan of the folder on the first write) and the least recently used
  entries are deleted when a write goes over the bound.

No call blocks the event loop: every file-system call runs in a worker thread. The
work of one loop tick is merged into one thread hop (:class:`_TickBatcher`): 64 tasks
that each read or write one entry in the same tick cost one hop, not 64, and each hop
does the whole of an operation (open + read + check + purge, or write + rename +
evict) rather than one hop per system call. The constructor touches nothing on disk;
folders are created on the first write.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import struct
import threading
import time
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar

from .. import envelope
from ..base import BaseCache
from ..contract import Backend, WriteItem
from ..exceptions import ConfigurationError
from ..keys import split_stored_key
from .sqlite import SQLiteBackend

__all__ = [
    "DEFAULT_DISK_CACHE_DIR", "DEFAULT_MAX_BYTES", "SQLITE_FILE", "STORES", "SUFFIX",
    "UNREADABLE", "DiskBackend", "DiskCache", "SQLiteDiskBackend", "create_disk_backend",
    "entry_file", "read_entry_file",
]

DEFAULT_DISK_CACHE_DIR = "./.asynccache"
DEFAULT_MAX_BYTES = 1024 * 1024 * 1024  # 1 GiB

SUFFIX = ".ace"
# Version 2 dropped the expiry from the header: it is read from the entry's envelope.
_MAGIC = b"ACD2"
# magic, key length, data length, CRC-32 of key + data
_HEADER = struct.Struct(">4sIII")
_DEFAULT_FOLDER = "_default"
_NAMESPACE_FOLDER = "ns-"
_TMP_SUFFIX = ".tmp"
# A temporary file this old belongs to a writer that died (crash, kill -9); the scan
# deletes it. Live writers hold theirs for milliseconds.
_STALE_TMP_SECONDS = 3600.0
#: What a read returns for a torn or foreign entry file: bytes that never decode as an
#: entry, so the cache reports a miss and counts it in ``corrupt_entries`` (issue 8:
#: corrupt bytes planted in any store are a miss and a counter).
UNREADABLE = b"\x00unreadable disk entry"


#: The SQLite store's file inside ``disk_cache_dir``.
SQLITE_FILE = "asynccache.db"
#: The values of ``store``: ``None`` picks by what the folder holds.
STORES = ("sqlite", "files")


def _resolve(disk_cache_dir: str | os.PathLike[str]) -> str:
    if not isinstance(disk_cache_dir, str | os.PathLike) or not os.fspath(disk_cache_dir):
        raise ConfigurationError(
            f"disk_cache_dir must be a non-empty path, got {disk_cache_dir!r:.200}"
        )
    # Resolved now (string work only, nothing created) so a later chdir() cannot move
    # the cache.
    return os.path.abspath(os.path.expanduser(os.fspath(disk_cache_dir)))


def _holds_file_entries(directory: str) -> bool:
    """Whether ``directory`` is a file-store folder (and not a SQLite-store one)."""
    if os.path.exists(os.path.join(directory, SQLITE_FILE)):
        return False
    try:
        names = os.listdir(directory)
    except OSError:  # missing (a new cache) or unreadable (its calls will fail open)
        return False
    return any(name == _DEFAULT_FOLDER or name.startswith(_NAMESPACE_FOLDER) for name in names)


def _hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _namespace_folder(stored_key: str) -> str:
    namespace, _ = split_stored_key(stored_key)
    if namespace is None:
        return _DEFAULT_FOLDER
    # Hashed: an encoded namespace may be "..", very long or hold "%" escapes.
    return _NAMESPACE_FOLDER + _hex(namespace)[:32]


def _is_entry_name(name: str) -> bool:
    stem = name[: -len(SUFFIX)]
    return (name.endswith(SUFFIX) and len(stem) == 64
            and all(c in "0123456789abcdef" for c in stem))


def entry_file(stored_key: str, data: bytes) -> bytes:
    """The file contents for one entry: header, stored key, then the encoded bytes."""
    key = stored_key.encode("utf-8", "surrogatepass")
    crc = zlib.crc32(data, zlib.crc32(key))
    return b"".join((_HEADER.pack(_MAGIC, len(key), len(data), crc), key, data))


def read_entry_file(blob: bytes) -> tuple[str, bytes] | None:
    """``(stored key, data)`` from file contents, or ``None`` if unreadable."""
    if len(blob) < _HEADER.size:
        return None
    magic, key_len, data_len, crc = _HEADER.unpack_from(blob)
    start = _HEADER.size
    if magic != _MAGIC or len(blob) != start + key_len + data_len:
        return None
    key = blob[start : start + key_len]
    data = blob[start + key_len :]
    if zlib.crc32(data, zlib.crc32(key)) != crc:
        return None
    try:
        text = key.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None
    return text, data


def _read_blocking(path: str) -> bytes | None:
    try:
        with open(path, "rb") as file:
            return file.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _read_key_blocking(path: str) -> str | None:
    """The stored key in a file's header (worker thread only)."""
    try:
        with open(path, "rb") as file:
            head = file.read(_HEADER.size)
            if len(head) < _HEADER.size:
                return None
            magic, key_len, _, _ = _HEADER.unpack(head)
            if magic != _MAGIC:
                return None
            return file.read(key_len).decode("utf-8", "surrogatepass")
    except (OSError, UnicodeDecodeError):
        return None


# Module-level names so tests can step in between the write and the rename.
_replace = os.replace


def _discard_blocking(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


class _TickBatcher:
    """Runs the blocking calls made during one loop tick in one worker-thread hop.

    The first call of a tick schedules the hop with ``call_soon``, so every task that
    runs in the same tick adds its call to the same batch; the worker thread runs them
    in order and one ``call_soon_threadsafe`` hands every caller its result (or its
    exception). A lone call pays one hop, as ``asyncio.to_thread`` would.
    """

    def __init__(self) -> None:
        self._pending: dict[asyncio.AbstractEventLoop, list[Any]] = {}

    async def run(self, function: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        batch = self._pending.get(loop)
        if batch is None:
            batch = self._pending[loop] = []
            loop.call_soon(self._send, loop)
        batch.append((function, args, future))
        return await future

    def _send(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._pending.pop(loop)
        try:
            loop.run_in_executor(None, self._work, loop, batch)
        except RuntimeError as exc:  # the executor is shut down (interpreter exit)
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)

    @staticmethod
    def _work(loop: asyncio.AbstractEventLoop, batch: list[Any]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        for function, args, _ in batch:
            try:
                outcomes.append((True, function(*args)))
            except BaseException as exc:  # handed to the caller, never lost in the thread
                outcomes.append((False, exc))
        try:
            loop.call_soon_threadsafe(_TickBatcher._deliver, batch, outcomes)
        except RuntimeError:
            pass  # the loop closed while the hop ran: nobody is waiting any more

    @staticmethod
    def _deliver(batch: list[Any], outcomes: list[tuple[bool, Any]]) -> None:
        for (_, _, future), (ok, value) in zip(batch, outcomes, strict=True):
            if future.done():
                continue  # the caller was cancelled
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


class DiskBackend(Backend):
    """Entries as files under ``disk_cache_dir``, bounded by ``max_bytes`` (LRU eviction).

    ``increment`` is a read-modify-write guarded by a per-key lock of this process's event
    loop: concurrent increments through one cache on one loop never lose updates, but
    increments from other processes (or other loops) on the same folder are not atomic.
    """

    name: ClassVar[str] = "disk"
    remote: ClassVar[bool] = False
    max_batch: ClassVar[int] = 256

    def __init__(self, disk_cache_dir: str | os.PathLike[str] = DEFAULT_DISK_CACHE_DIR,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ConfigurationError(f"max_bytes must be a positive int, got {max_bytes!r}")
        self.directory = _resolve(disk_cache_dir)
        self.max_bytes = max_bytes
        self.evictions = 0
        # Entry path -> file size, least recently used first. Filled by a lazy scan on
        # the first write; guarded by a thread lock because one cache may be used from
        # the caller's loop and from the sync bridge's loop at the same time.
        self._index: OrderedDict[str, int] = OrderedDict()
        self._bytes = 0
        self._indexed = False
        self._index_lock = threading.Lock()
        self._scan_lock = threading.Lock()
        self._known_dirs: set[str] = set()
        self._hops = _TickBatcher()
        self._key_locks: weakref.WeakValueDictionary[
            tuple[asyncio.AbstractEventLoop, str], asyncio.Lock
        ] = weakref.WeakValueDictionary()

    # -- paths ---------------------------------------------------------------------------

    def path_for(self, stored_key: str) -> str:
        """The file that holds ``stored_key`` (always inside :attr:`directory`)."""
        digest = _hex(stored_key)
        return os.path.join(self.directory, _namespace_folder(stored_key), digest[:2],
                            digest + SUFFIX)

    @property
    def size_bytes(self) -> int:
        """Total size of the entry files this process knows about."""
        return self._bytes

    # -- the in-memory index -------------------------------------------------------------

    def _touch(self, path: str) -> None:
        if self._indexed:
            with self._index_lock:
                if path in self._index:
                    self._index.move_to_end(path)

    def _forget(self, paths: Sequence[str]) -> None:
        with self._index_lock:
            for path in paths:
                size = self._index.pop(path, None)
                if size is not None:
                    self._bytes -= size

    def _record(self, path: str, size: int) -> list[str]:
        """Note a written file; return the paths to evict (already out of the index)."""
        with self._index_lock:
            old = self._index.pop(path, None)
            if old is not None:
                self._bytes -= old
            self._index[path] = size
            self._bytes += size
            victims: list[str] = []
            while self._bytes > self.max_bytes and len(self._index) > 1:
                victim, victim_size = self._index.popitem(last=False)
                self._bytes -= victim_size
                victims.append(victim)
            return victims

    def _scan_blocking(self) -> None:
        """List every entry file, oldest write first, once (worker thread only)."""
        if self._indexed:
            return
        with self._scan_lock:
            if self._indexed:
                return
            found: list[tuple[float, str, int]] = []
            now = time.time()
            for folder, _, names in os.walk(self.directory):
                for name in names:
                    path = os.path.join(folder, name)
                    try:
                        stat = os.stat(path)
                    except OSError:
                        continue
                    if _is_entry_name(name):
                        found.append((stat.st_mtime, path, stat.st_size))
                    elif name.endswith(_TMP_SUFFIX) and now - stat.st_mtime > _STALE_TMP_SECONDS:
                        with contextlib.suppress(OSError):
                            os.remove(path)
            found.sort()
            with self._index_lock:
                # Entries written while the scan ran are already in the index and are the
                # most recent: keep them at the end.
                recent = self._index
                self._index = OrderedDict((path, size) for _, path, size in found
                                          if path not in recent)
                self._index.update(recent)
                self._bytes = sum(self._index.values())
                self._indexed = True

    # -- blocking work (worker thread only) ----------------------------------------------

    def _load_blocking(self, key: str, now: float, torn: bytes | None) -> bytes | None:
        """The stored bytes of ``key``, purging a file whose envelope has expired.

        A torn or foreign file is deleted and gives ``None``, or ``torn`` when it is
        passed (reads pass :data:`UNREADABLE` so the cache counts it).
        """
        path = self.path_for(key)
        blob = _read_blocking(path)
        if blob is None:
            return None
        entry = read_entry_file(blob)
        if entry is None:
            # Torn or foreign file. (A writer may replace it between our read and this
            # delete; losing that entry costs one miss, never a wrong answer.)
            self._remove_blocking(path)
            return torn
        stored, data = entry
        if stored != key:  # a SHA-256 collision, or a file copied in by hand
            return None
        expires_at = envelope.peek_expires_at(data)
        if expires_at is not None and now >= expires_at:
            self._remove_blocking(path)
            return None
        self._touch(path)
        return data

    def _read_many_blocking(self, keys: Sequence[str], now: float) -> list[bytes | None]:
        return [self._load_blocking(key, now, UNREADABLE) for key in keys]

    def _remove_blocking(self, path: str) -> bool:
        self._forget([path])
        try:
            os.remove(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def _write_file_blocking(self, path: str, blob: bytes) -> None:
        folder = os.path.dirname(path)
        for attempt in (1, 2):
            if folder not in self._known_dirs:
                os.makedirs(folder, exist_ok=True)
                self._known_dirs.add(folder)
            tmp = f"{path}.{secrets.token_hex(8)}{_TMP_SUFFIX}"
            try:
                with open(tmp, "wb") as file:
                    file.write(blob)
                _replace(tmp, path)
                return
            except FileNotFoundError:
                # The folder was removed under us (someone deleted the cache folder):
                # create it again once.
                self._known_dirs.discard(folder)
                _discard_blocking(tmp)
                if attempt == 2:
                    raise
            except BaseException:
                _discard_blocking(tmp)
                raise

    def _store_blocking(self, key: str, data: bytes) -> bool:
        blob = entry_file(key, data)
        if len(blob) > self.max_bytes:
            return False
        path = self.path_for(key)
        self._write_file_blocking(path, blob)
        for victim in self._record(path, len(blob)):
            self.evictions += 1
            _discard_blocking(victim)
        return True

    def _write_many_blocking(self, items: Sequence[WriteItem]) -> list[bool | BaseException]:
        self._scan_blocking()
        outcomes: list[bool | BaseException] = []
        for key, data, _ in items:
            try:
                outcomes.append(self._store_blocking(key, data))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def _ping_blocking(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        probe = os.path.join(self.directory, f".ping.{secrets.token_hex(8)}{_TMP_SUFFIX}")
        try:
            with open(probe, "wb") as file:
                file.write(b"ok")
        finally:
            _discard_blocking(probe)

    # -- async forms: one thread hop per loop tick ---------------------------------------

    # -- the backend contract ------------------------------------------------------------

    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self._hops.run(self._read_many_blocking, keys, self.clock())

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        outcomes = await self._hops.run(self._write_many_blocking, items)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors and len(errors) == len(outcomes):
            raise errors[0]  # nothing written: let the guard count and log the failure
        results = [o is True for o in outcomes]
        return None if all(results) else results

    async def remove_many(self, keys: Sequence[str]) -> int:
        def remove_all() -> int:
            return sum(self._remove_blocking(self.path_for(key)) for key in keys)

        return await self._hops.run(remove_all)

    async def remove_prefix(self, prefix: str) -> int:
        namespace, rest = split_stored_key(prefix)
        if not prefix:
            folder, check = self.directory, None
        elif namespace is not None:
            # Only keys with the prefix's namespace part can match: walk that folder alone.
            folder = os.path.join(self.directory, _namespace_folder(prefix))
            check = prefix if rest else None
        else:
            folder, check = self.directory, prefix
        removed = await self._hops.run(self._clear_blocking, folder, check)
        self._forget(removed)
        return len(removed)

    @staticmethod
    def _clear_blocking(folder: str, prefix: str | None) -> list[str]:
        """Delete entry files under ``folder`` whose key starts with ``prefix`` (thread)."""
        removed: list[str] = []
        for root, _, names in os.walk(folder):
            for name in names:
                if not _is_entry_name(name):
                    continue  # temp files of live writers, or files that are not ours
                path = os.path.join(root, name)
                if prefix is not None:
                    key = _read_key_blocking(path)
                    if key is None or not key.startswith(prefix):
                        continue
                try:
                    os.remove(path)
                except FileNotFoundError:
                    continue
                removed.append(path)
        return removed

    async def increment_counter(self, key: str, amount: int | float,
                                ttl: float | None) -> int | float:
        # The contract's read-add-write, one at a time per key and loop: file I/O
        # suspends between the read and the write.
        loop = asyncio.get_running_loop()
        lock = self._key_locks.get((loop, key))
        if lock is None:
            lock = self._key_locks[(loop, key)] = asyncio.Lock()
        async with lock:
            return await super().increment_counter(key, amount, ttl)

    async def check_health(self) -> None:
        """Create the folder if needed and prove a file can be written and removed."""
        await self._hops.run(self._ping_blocking)

    def describe(self) -> dict[str, Any]:
        return {"disk_cache_dir": self.directory, "store": "files", "max_bytes": self.max_bytes}

    def counters(self) -> dict[str, int]:
        return {"evictions": self.evictions}


class SQLiteDiskBackend(SQLiteBackend):
    """``type="disk"`` on the SQLite store: ``<disk_cache_dir>/asynccache.db``."""

    name: ClassVar[str] = "disk"

    def __init__(self, disk_cache_dir: str | os.PathLike[str] = DEFAULT_DISK_CACHE_DIR,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = _resolve(disk_cache_dir)
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ConfigurationError(f"max_bytes must be a positive int, got {max_bytes!r}")
        super().__init__(os.path.join(self.directory, SQLITE_FILE), max_bytes=max_bytes)

    def describe(self) -> dict[str, Any]:
        return {"disk_cache_dir": self.directory, "store": "sqlite", "max_bytes": self.max_bytes}

    def counters(self) -> dict[str, int]:
        return {"evictions": self.evictions}


def create_disk_backend(disk_cache_dir: str | os.PathLike[str] = DEFAULT_DISK_CACHE_DIR,
                        max_bytes: int = DEFAULT_MAX_BYTES,
                        store: str | None = None) -> SQLiteDiskBackend | DiskBackend:
    """The backend of ``type="disk"``: the SQLite store, or the file store for a folder
    that already holds file-store entries (``store`` picks one explicitly).

    The choice only looks at the folder (one ``listdir``); nothing is created until the
    first write.
    """
    if store is not None and store not in STORES:
        raise ConfigurationError(f"store must be one of {', '.join(map(repr, STORES))} or "
                                 f"None (pick by what the folder holds), got {store!r:.100}")
    directory = _resolve(disk_cache_dir)
    if store == "files" or (store is None and _holds_file_entries(directory)):
        return DiskBackend(disk_cache_dir=directory, max_bytes=max_bytes)
    return SQLiteDiskBackend(disk_cache_dir=directory, max_bytes=max_bytes)


class DiskCache(BaseCache):
    """Persistent cache in a local folder: survives restarts, shared by processes on one host.

    ``disk_cache_dir`` is the folder (created on first write); ``max_bytes`` bounds the
    size of the entries (the oldest are deleted first); ``store`` is ``"sqlite"`` (the
    default for a new folder: one SQLite file, ``asynccache.db``), ``"files"`` (a file
    per entry), or ``None`` to keep whichever store the folder already holds. Every
    :class:`~asynccache.base.BaseCache` setting (``namespace``, ``ttl``...) applies.

    >>> cache = DiskCache(disk_cache_dir="./.asynccache", max_bytes=512 * 1024**2, ttl=3600)
    >>> cache.set_cache("greeting", {"text": "hello"})  # doctest: +SKIP
    True
    >>> cache.get_cache("greeting")                      # doctest: +SKIP
    {'text': 'hello'}
    """

    def __init__(self, *, disk_cache_dir: str | os.PathLike[str] = DEFAULT_DISK_CACHE_DIR,
                 max_bytes: int = DEFAULT_MAX_BYTES, store: str | None = None,
                 **settings: Any) -> None:
        super().__init__(create_disk_backend(disk_cache_dir, max_bytes, store), **settings)
