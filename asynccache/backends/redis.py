"""Redis backend on ``redis.asyncio`` with hiredis: one round trip per batch.

* batch get is one ``MGET``; batch set is one non-transactional pipeline of ``SET`` with
  ``EX``/``PX`` per entry (``ttl=None`` sets no expiry at all);
* ``clear`` walks ``SCAN MATCH prefix*`` page by page with ``UNLINK`` (never
  ``FLUSHDB``/``FLUSHALL``, so other namespaces and other applications are untouched);
* connections are kept per event loop (:class:`~asynccache.bridge.LoopLocal`), made on
  first use: the constructor does no I/O, and the same cache works from the caller's
  loop and from the sync bridge;
* every socket has a timeout, so an unreachable Redis fails fast instead of hanging.

The hot path talks to pooled ``redis.asyncio`` connections directly (commands packed
by hiredis, replies parsed by hiredis) instead of going through ``Redis.pipeline()``,
whose per-command bookkeeping costs more than the network round trip for 1,000 small
commands.

>>> cache = RedisCache(host="127.0.0.1", port=6379, namespace="prod", ttl=3600)  # doctest: +SKIP
>>> await cache.async_set_cache("k", {"answer": 42})                             # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from redis.asyncio.connection import Connection, SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from ..base import BaseCache
from ..bridge import LoopLocal
from ..config import NotGiven, split_settings
from ..contract import Backend, WriteItem
from ..exceptions import ConfigurationError
from .redis_settings import (
    DEFAULT_SCAN_COUNT,
    REDIS_SETTINGS,
    RedisSettings,
    escape_glob,
    pack_command,
    raise_for_permission,
    set_command,
    timeout_after,
    write_flags,
)

__all__ = [
    "REDIS_SETTINGS", "ConnectionSet", "RedisBackend", "RedisCache", "RedisSettings",
    "create_redis_backend",
]

class ConnectionSet:
    """The connections of one event loop: a LIFO free list bounded by ``max_connections``.

    Callers wait for a free connection when all are busy (``max_connections`` is a hard
    limit, not an error). A connection whose exchange was interrupted (timeout,
    cancellation, error) is disconnected before reuse, so no late reply can be read by
    the next caller.
    """

    def __init__(self, settings: RedisSettings) -> None:
        self._kwargs = settings.connection_kwargs()
        self._class: type[Connection] = SSLConnection if settings.ssl else Connection
        self._free: list[Connection] = []
        self._all: list[Connection] = []
        self._slots = asyncio.Semaphore(settings.max_connections)
        self.timeout = settings.socket_timeout

    @property
    def size(self) -> int:
        return len(self._all)

    async def execute(self, packed: bytes | Sequence[bytes], replies: int, *,
                      retry: bool = True) -> list[Any]:
        """Send ``packed`` and read ``replies`` replies (error replies come back as
        :class:`~redis.exceptions.ResponseError` objects, not raised).

        A connection error on a reused connection (the server restarted since) is
        retried once on a fresh connection when ``retry`` is true.
        """
        await self._slots.acquire()
        try:
            conn = self._free.pop() if self._free else self._new()
            try:
                try:
                    return await self._exchange(conn, packed, replies)
                except RedisConnectionError:
                    if not retry:
                        raise
                    await conn.disconnect(nowait=True)
                    return await self._exchange(conn, packed, replies)
            except BaseException:
                # Timeout, cancellation or a dead socket mid-exchange: unread replies may
                # follow, so this connection starts afresh next time.
                await conn.disconnect(nowait=True)
                raise
            finally:
                self._free.append(conn)
        finally:
            self._slots.release()

    def _new(self) -> Connection:
        conn = self._class(**self._kwargs)
        self._all.append(conn)
        return conn

    async def _exchange(self, conn: Connection, packed: bytes | Sequence[bytes],
                        replies: int) -> list[Any]:
        if not conn.is_connected:
            await conn.connect()
        timeout = self.timeout
        if timeout is None:
            return await self._send_and_read(conn, packed, replies)
        # One deadline for the whole batch rather than one timer per reply.
        async with timeout_after(timeout):
            return await self._send_and_read(conn, packed, replies)

    @staticmethod
    async def _send_and_read(conn: Connection, packed: bytes | Sequence[bytes],
                             replies: int) -> list[Any]:
        await conn.send_packed_command(packed, check_health=False)
        out: list[Any] = []
        read = conn.read_response
        for _ in range(replies):
            try:
                out.append(await read(timeout=math.inf))
            except ResponseError as exc:
                out.append(exc)
        return out

    async def aclose(self) -> None:
        connections, self._all, self._free = self._all, [], []
        for conn in connections:
            try:
                await conn.disconnect()
            except Exception:  # closing is best effort
                pass


# -- the backend ------------------------------------------------------------------------

# Deletes the lease only if the caller's token still holds it (it may have expired and
# been taken by another process meanwhile).
_RELEASE_SCRIPT = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
    "else return 0 end"
)


class RedisBackend(Backend):
    """One Redis server (or a proxy speaking its protocol): batches in one round trip.

    Settings are those of :class:`RedisSettings` (``host``, ``port``, ``password``,
    ``username``, ``db``, ``url``, ``ssl``, ``max_connections``, timeouts, and connection
    options such as ``ssl_ca_certs``); unset ones come from ``REDIS_HOST``,
    ``REDIS_PORT``, ``REDIS_PASSWORD`` and ``REDIS_URL``.
    """

    name: ClassVar[str] = "redis"
    remote: ClassVar[bool] = True
    max_batch: ClassVar[int] = 1000
    sync_on_caller_thread: ClassVar[bool] = True

    def __init__(self, host: str | None = None, port: int | str | None = None, *,
                 settings: RedisSettings | None = None, **options: Any) -> None:
        if settings is None:
            settings = RedisSettings.from_options(
                {**options, **({"host": host} if host is not None else {}),
                 **({"port": port} if port is not None else {})})
        self.settings = replace(settings, startup_nodes=())
        self._connections: LoopLocal[ConnectionSet] = LoopLocal(self._open, _close)

    async def _open(self) -> ConnectionSet:
        return ConnectionSet(self.settings)

    async def _run(self, packed: bytes | Sequence[bytes], replies: int,
                   retry: bool = True) -> list[Any]:
        connections = self._connections.peek() or await self._connections.get()
        return await connections.execute(packed, replies, retry=retry)

    async def command(self, *args: bytes | str | int) -> Any:
        """Run one command and return its reply (an error reply raises)."""
        reply = (await self._run(pack_command(*args), 1))[0]
        if isinstance(reply, Exception):
            raise_for_permission((reply,))
            raise reply
        return reply

    # -- the lease capability ----------------------------------------------------------

    async def acquire_lease(self, key: str, token: str, ttl: float) -> bool:
        reply = await self.command(b"SET", key.encode(), token, b"NX", b"PX",
                                   max(1, int(ttl * 1000)))
        return reply is not None

    async def lease_held(self, key: str) -> bool:
        return bool(await self.command(b"EXISTS", key.encode()))

    async def release_lease(self, key: str, token: str) -> bool:
        return bool(await self.command(b"EVAL", _RELEASE_SCRIPT, 1, key.encode(), token))

    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        reply = (await self._run(pack_command(b"MGET", *[key.encode() for key in keys]), 1))[0]
        if isinstance(reply, Exception):
            raise_for_permission((reply,))
            raise reply
        return list(reply)

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        if not items:
            return None
        packed = b"".join([set_command(key, data, ttl) for key, data, ttl in items])
        return write_flags(await self._run(packed, len(items)))

    async def remove_many(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        return int(await self.command(b"UNLINK", *[key.encode() for key in keys]))

    async def remove_prefix(self, prefix: str) -> int:
        pattern = escape_glob(prefix).encode() + b"*"
        deleted = 0
        cursor: bytes | int = b"0"
        while True:
            cursor, keys = await self.command(b"SCAN", cursor, b"MATCH", pattern,
                                              b"COUNT", DEFAULT_SCAN_COUNT)
            if keys:
                deleted += int(await self.command(b"UNLINK", *keys))
            if int(cursor) == 0:
                return deleted

    async def increment_counter(self, key: str, amount: float, ttl: float | None) -> float:
        encoded = key.encode()
        number = repr(float(amount)) if not isinstance(amount, int) else str(amount)
        commands = [pack_command(b"INCRBYFLOAT", encoded, number)]
        if ttl is not None:
            # NX: the TTL applies only when the counter has none (it was just created).
            commands.append(pack_command(b"PEXPIRE", encoded, max(1, math.ceil(ttl * 1000)), b"NX"))
        # Not retried: INCRBYFLOAT is not idempotent.
        replies = await self._run(b"".join(commands), len(commands), retry=False)
        raise_for_permission(replies)
        value = replies[0]
        if isinstance(value, ResponseError):
            if "not a valid float" not in str(value):
                raise value
            # The key holds a cached value, not a counter: start the counter afresh.
            await self.command(*_set_args(encoded, number.encode(), ttl))
            return float(amount)
        if ttl is not None and len(replies) > 1 and isinstance(replies[1], ResponseError) and (
            int(await self.command(b"PTTL", encoded)) == -1
        ):
            # Servers older than Redis 7 have no NX: set the TTL only if there is none.
            await self.command(b"PEXPIRE", encoded, max(1, math.ceil(ttl * 1000)))
        return float(value)

    async def stored_ttl(self, key: str) -> float | NotGiven | None:
        millis = int(await self.command(b"PTTL", key.encode()))
        return None if millis < 0 else millis / 1000

    async def check_health(self) -> None:
        await self.command(b"PING")

    async def aclose(self) -> None:
        await self._connections.aclose_all()

    def describe(self) -> dict[str, Any]:
        return self.settings.describe()


def _set_args(key: bytes, data: bytes, ttl: float | None) -> tuple[bytes | int, ...]:
    if ttl is None:
        return (b"SET", key, data)
    return (b"SET", key, data, b"PX", max(1, math.ceil(ttl * 1000)))


async def _close(connections: ConnectionSet) -> None:
    await connections.aclose()


def create_redis_backend(
    *, redis_startup_nodes: object = None, cluster_retry_seconds: float | None = None,
    environ: Mapping[str, str] | None = None, **options: Any,
) -> Backend:
    """The backend for ``Cache(type="redis", ...)``.

    A Redis Cluster backend when ``redis_startup_nodes`` (or ``startup_nodes``) is given,
    or ``REDIS_CLUSTER_NODES`` is set and no explicit host/port/url is; else a single
    Redis. ``options`` are :class:`RedisSettings`; explicit ones override environment
    variables. ``cluster_retry_seconds`` (cluster only) bounds how long a batch retries
    through a failover.
    """
    if redis_startup_nodes is not None:
        options = {**options, "startup_nodes": redis_startup_nodes}
    db = options.get("db")
    if db is not None and options.get("startup_nodes") is not None and int(db) != 0:
        raise ConfigurationError("db must be 0 on Redis Cluster")
    settings = RedisSettings.from_options(options, environ)
    if settings.startup_nodes:
        from .redis_cluster import RedisClusterBackend

        if cluster_retry_seconds is None:
            return RedisClusterBackend(settings=settings)
        return RedisClusterBackend(settings=settings, cluster_retry_seconds=cluster_retry_seconds)
    if cluster_retry_seconds is not None:
        raise ConfigurationError("cluster_retry_seconds applies to Redis Cluster only")
    return RedisBackend(settings=settings)


class RedisCache(BaseCache):
    """A cache on one Redis server.

    Connection settings are those of :class:`RedisBackend`; every other keyword
    (``namespace``, ``ttl``, ``flush_size``, ``timeout``...) is a :class:`BaseCache`
    setting.

    >>> cache = RedisCache(host="127.0.0.1", port=6379, namespace="app", ttl=600)  # doctest: +SKIP
    >>> cache.set_cache("greeting", {"text": "hello"})                            # doctest: +SKIP
    True
    """

    def __init__(self, host: str | None = None, port: int | str | None = None,
                 **settings: Any) -> None:
        backend, cache = split_settings("RedisCache", settings, RedisBackend, REDIS_SETTINGS)
        super().__init__(RedisBackend(host, port, **backend), **cache)
