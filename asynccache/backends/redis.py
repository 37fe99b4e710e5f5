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
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from redis.asyncio.connection import Connection, SSLConnection, parse_url
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, ResponseError
from redis.retry import Retry

from ..base import Backend, BaseCache, WriteItem
from ..bridge import LoopLocal
from ..config import NotGiven, env_settings, split_backend_settings
from ..config import positive_setting as _positive
from ..exceptions import AccessDeniedError, ConfigurationError

logger = logging.getLogger("asynccache")

_hiredis_pack: Any
try:  # hiredis packs commands in C; redis[hiredis] brings it
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is part of the redis extra
    _hiredis_pack = None

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6379
DEFAULT_MAX_CONNECTIONS = 50
#: Seconds: an unreachable or frozen Redis fails a call after this long, never hangs it.
DEFAULT_SOCKET_TIMEOUT = 5.0
DEFAULT_CONNECT_TIMEOUT = 2.0
_SCAN_COUNT = 1000
_GLOB_SPECIAL = frozenset("*?[]\\")

#: Connection options passed through to redis-py as they are.
CONNECTION_OPTIONS = frozenset({
    "client_name", "credential_provider", "health_check_interval", "socket_keepalive",
    "socket_keepalive_options", "ssl_ca_certs", "ssl_ca_data", "ssl_ca_path", "ssl_cert_reqs",
    "ssl_certfile", "ssl_check_hostname", "ssl_ciphers", "ssl_keyfile", "ssl_min_version",
    "ssl_password",
})
_NOT_ON_CLUSTER = frozenset({"ssl_ca_path", "ssl_password"})

#: Environment variables read by :func:`redis_env_settings` (explicit arguments win).
ENV_VARIABLES = ("REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "REDIS_URL", "REDIS_CLUSTER_NODES")


# -- settings ---------------------------------------------------------------------------


def parse_cluster_nodes(value: object) -> list[dict[str, Any]]:
    """Startup nodes as ``[{"host": ..., "port": ...}]`` from any accepted spelling.

    Accepts a list of dicts or ``(host, port)`` pairs, a JSON list, or the text
    ``"host1:port1,host2:port2"`` (the ``REDIS_CLUSTER_NODES`` format).
    """
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise ConfigurationError(f"cluster nodes are not valid JSON: {exc}") from None
        else:
            value = [part.strip() for part in text.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not value:
        raise ConfigurationError(
            "redis_startup_nodes must be a non-empty list of {'host', 'port'}, "
            f"got {value!r:.100}"
        )
    nodes: list[dict[str, Any]] = []
    for node in value:
        if isinstance(node, Mapping):
            host, port = node.get("host"), node.get("port")
        elif isinstance(node, str):
            host, _, port = node.rpartition(":")
            host = host.strip("[]")
        elif isinstance(node, list | tuple) and len(node) == 2:
            host, port = node
        else:
            raise ConfigurationError(f"cannot read cluster node {node!r:.100}")
        try:
            port_number = int(port)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConfigurationError(f"cluster node {node!r:.100} has no valid port") from None
        if not host or not isinstance(host, str):
            raise ConfigurationError(f"cluster node {node!r:.100} has no host")
        nodes.append({"host": host, "port": port_number})
    return nodes


def redis_env_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Settings read from ``REDIS_HOST``, ``REDIS_PORT``, ``REDIS_PASSWORD``, ``REDIS_URL``
    and ``REDIS_CLUSTER_NODES`` (unset variables are left out)."""
    found = env_settings(
        "REDIS_",
        {"host": str, "port": int, "password": str, "url": str, "cluster_nodes": str},
        os.environ if environ is None else environ,
    )
    if "cluster_nodes" in found:
        found["startup_nodes"] = parse_cluster_nodes(found.pop("cluster_nodes"))
    return found


def _verification_off(cert_reqs: object) -> bool:
    """Whether an ``ssl_cert_reqs`` value turns server certificate checks off."""
    import ssl as ssl_module

    if isinstance(cert_reqs, str):
        return cert_reqs.lower() == "none"
    return cert_reqs is None or cert_reqs == ssl_module.CERT_NONE


#: The commands the Redis cache sends, for a least-privilege ACL user (see the docs'
#: security page): ``ACL SETUSER cache on >PASSWORD resetkeys ~NAMESPACE:* -@all +...``.
REQUIRED_COMMANDS = ("get", "mget", "set", "del", "unlink", "scan", "incrbyfloat",
                     "pexpire", "pttl", "ping")


def access_denied(exc: NoPermissionError) -> AccessDeniedError:
    """A Redis ``NOPERM`` reply as an error that says which rights the cache needs."""
    return AccessDeniedError(
        f"Redis refused the cache's user: {exc}. The cache needs the commands "
        f"{' '.join('+' + name for name in REQUIRED_COMMANDS)} on its namespace's keys "
        "(e.g. ~NAMESPACE:*)"
    )


def raise_for_permission(replies: Sequence[object]) -> None:
    """Raise :class:`AccessDeniedError` if any reply is a ``NOPERM`` error.

    A permission error is a configuration problem of the whole batch, not a failure of
    one item: it is raised so the guard logs it and ``test_connection`` reports it.
    """
    for reply in replies:
        if isinstance(reply, NoPermissionError):
            raise access_denied(reply) from reply


def write_flags(replies: Sequence[object]) -> list[bool] | None:
    """Per-item results of a batch of writes: ``None`` when every reply succeeded."""
    raise_for_permission(replies)
    if any(isinstance(reply, Exception) for reply in replies):
        return [not isinstance(reply, Exception) for reply in replies]
    return None


@dataclass(frozen=True)
class RedisSettings:
    """Resolved connection settings (explicit arguments over environment variables)."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    ssl: bool = False
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    socket_timeout: float | None = DEFAULT_SOCKET_TIMEOUT
    socket_connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT
    startup_nodes: tuple[tuple[str, int], ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def resolve(
        cls,
        *,
        host: str | None = None,
        port: int | str | None = None,
        password: str | None = None,
        username: str | None = None,
        db: int | str | None = None,
        url: str | None = None,
        ssl: bool | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        socket_timeout: float | None = DEFAULT_SOCKET_TIMEOUT,
        socket_connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        startup_nodes: object = None,
        environ: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> RedisSettings:
        """Merge explicit settings over the environment; raise naming a bad setting.

        Precedence: explicit arguments, then an explicit ``url``, then ``REDIS_URL``
        (only when no explicit host/port/url was given), then ``REDIS_HOST`` /
        ``REDIS_PORT`` / ``REDIS_PASSWORD``, then the defaults.
        """
        env = redis_env_settings(environ)
        explicit_address = host is not None or port is not None or url is not None
        from_url: dict[str, Any] = {}
        chosen_url = url if url is not None else (None if explicit_address else env.get("url"))
        if chosen_url is not None:
            if not isinstance(chosen_url, str) or not chosen_url.startswith(
                ("redis://", "rediss://")
            ):
                raise ConfigurationError("url must start with redis:// or rediss://")
            try:
                parsed = dict(parse_url(chosen_url))
            except ValueError as exc:
                raise ConfigurationError(f"cannot read the Redis url: {exc}") from None
            from_url = {k: parsed[k] for k in ("host", "port", "username", "password", "db")
                        if k in parsed}
            if chosen_url.startswith("rediss://"):
                from_url["ssl"] = True

        def pick(name: str, given: Any, default: Any) -> Any:
            if given is not None:
                return given
            if name in from_url:
                return from_url[name]
            if (not explicit_address or name == "password") and name in env:
                return env[name]
            return default

        chosen_port = pick("port", port, DEFAULT_PORT)
        try:
            port_number = int(chosen_port)
        except (TypeError, ValueError):
            raise ConfigurationError(f"port must be an int, got {chosen_port!r}") from None
        if not 0 < port_number < 65536:
            raise ConfigurationError(f"port must be 1-65535, got {chosen_port!r}")
        chosen_db = pick("db", db, 0)
        try:
            db_number = int(chosen_db)
        except (TypeError, ValueError):
            raise ConfigurationError(f"db must be an int, got {chosen_db!r}") from None
        nodes: tuple[tuple[str, int], ...] = ()
        if startup_nodes is not None:
            nodes = tuple((n["host"], n["port"]) for n in parse_cluster_nodes(startup_nodes))
        elif not explicit_address and "startup_nodes" in env:
            nodes = tuple((n["host"], n["port"]) for n in env["startup_nodes"])
        use_ssl = bool(pick("ssl", ssl, False))
        options = dict(extra or {})
        nested = options.pop("client_options", None)
        if nested is not None:
            if not isinstance(nested, Mapping):
                raise ConfigurationError(
                    f"client_options must be a dict of connection options, got {nested!r:.100}"
                )
            # The semantic cache's spelling; accepted here too so one dict works for both.
            options = {**nested, **options}
        allowed = CONNECTION_OPTIONS - (_NOT_ON_CLUSTER if nodes else frozenset())
        for name in options:
            if name not in allowed:
                raise ConfigurationError(
                    f"unknown Redis setting {name!r}; connection options accepted: "
                    f"{', '.join(sorted(allowed))}"
                )
            if name.startswith("ssl_") and not use_ssl:
                raise ConfigurationError(f"{name} needs ssl=True or a rediss:// url")
        if use_ssl and _verification_off(options.get("ssl_cert_reqs", "required")):
            logger.warning(
                "asynccache: TLS certificate verification is OFF for Redis (ssl_cert_reqs=%r): "
                "the connection is encrypted but the server is not authenticated",
                options["ssl_cert_reqs"],
            )
        return cls(
            host=str(pick("host", host, DEFAULT_HOST)),
            port=port_number,
            username=pick("username", username, None),
            password=pick("password", password, None),
            db=db_number,
            ssl=use_ssl,
            max_connections=_positive("max_connections", max_connections, int),
            socket_timeout=_positive("socket_timeout", socket_timeout, allow_none=True),
            socket_connect_timeout=_positive(
                "socket_connect_timeout", socket_connect_timeout, allow_none=True
            ),
            startup_nodes=nodes,
            extra=options,
        )

    def connection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a ``redis.asyncio`` connection (password included)."""
        kwargs: dict[str, Any] = {
            "host": self.host, "port": self.port, "db": self.db,
            "username": self.username, "password": self.password,
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_connect_timeout,
            # Failures are retried (once, on a fresh connection) by the backend and then
            # handled by the circuit breaker; retrying inside the connection would only
            # multiply the wait on a dead server.
            "retry": Retry(NoBackoff(), 0),
            **self.extra,
        }
        return kwargs

    def describe(self) -> dict[str, Any]:
        """Non-secret settings (no password)."""
        described: dict[str, Any] = {"host": self.host, "port": self.port}
        if self.startup_nodes:
            described = {"startup_nodes": [f"{h}:{p}" for h, p in self.startup_nodes]}
        else:
            described["db"] = self.db
        if self.username:
            described["username"] = self.username
        described.update(ssl=self.ssl, max_connections=self.max_connections,
                         socket_timeout=self.socket_timeout)
        return described


# -- the wire ---------------------------------------------------------------------------


def pack(*args: bytes | str | int) -> bytes:
    """One command in the Redis protocol (hiredis packs it in C when installed)."""
    if _hiredis_pack is not None:
        packed: bytes = _hiredis_pack(args)
        return packed
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def set_command(key: str, data: bytes, ttl: float | None) -> bytes:
    """``SET key data [EX s | PX ms]``: whole seconds use EX, fractions use PX."""
    encoded = key.encode()
    if ttl is None:
        return pack(b"SET", encoded, data)
    if float(ttl).is_integer():
        return pack(b"SET", encoded, data, b"EX", int(ttl))
    return pack(b"SET", encoded, data, b"PX", max(1, math.ceil(ttl * 1000)))


def escape_glob(text: str) -> str:
    """``text`` with the glob characters of ``SCAN MATCH`` escaped."""
    return "".join("\\" + ch if ch in _GLOB_SPECIAL else ch for ch in text)


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
        async with _async_timeout(timeout):
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


def _async_timeout(seconds: float) -> Any:
    if hasattr(asyncio, "timeout"):
        return asyncio.timeout(seconds)
    from redis.asyncio.connection import async_timeout  # pragma: no cover - Python 3.10

    return async_timeout(seconds)  # pragma: no cover


# -- the backend ------------------------------------------------------------------------


class RedisBackend(Backend):
    """One Redis server (or a proxy speaking its protocol): batches in one round trip.

    Settings: ``host``, ``port``, ``password``, ``username``, ``db``, ``url``
    (``redis://`` or ``rediss://`` for TLS), ``ssl``, ``max_connections``,
    ``socket_timeout``, ``socket_connect_timeout``; unset ones come from ``REDIS_HOST``,
    ``REDIS_PORT``, ``REDIS_PASSWORD`` and ``REDIS_URL``. Extra keyword arguments
    (``ssl_ca_certs``, ``ssl_cert_reqs``, ``client_name``...) go to the connections.
    """

    name: ClassVar[str] = "redis"
    remote: ClassVar[bool] = True
    max_batch: ClassVar[int] = 1000

    def __init__(
        self,
        host: str | None = None,
        port: int | str | None = None,
        *,
        password: str | None = None,
        username: str | None = None,
        db: int | str | None = None,
        url: str | None = None,
        ssl: bool | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        socket_timeout: float | None = DEFAULT_SOCKET_TIMEOUT,
        socket_connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        settings: RedisSettings | None = None,
        **connection_options: Any,
    ) -> None:
        if settings is None:
            settings = RedisSettings.resolve(
                host=host, port=port, password=password, username=username, db=db, url=url,
                ssl=ssl, max_connections=max_connections, socket_timeout=socket_timeout,
                socket_connect_timeout=socket_connect_timeout, extra=connection_options,
            )
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
        reply = (await self._run(pack(*args), 1))[0]
        if isinstance(reply, Exception):
            raise_for_permission((reply,))
            raise reply
        return reply

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        reply = (await self._run(pack(b"MGET", *[key.encode() for key in keys]), 1))[0]
        if isinstance(reply, Exception):
            raise_for_permission((reply,))
            raise reply
        return list(reply)

    async def set_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        if not items:
            return None
        packed = b"".join([set_command(key, data, ttl) for key, data, ttl in items])
        return write_flags(await self._run(packed, len(items)))

    async def delete_many(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        return int(await self.command(b"UNLINK", *[key.encode() for key in keys]))

    async def clear(self, prefix: str) -> int:
        pattern = escape_glob(prefix).encode() + b"*"
        deleted = 0
        cursor: bytes | int = b"0"
        while True:
            cursor, keys = await self.command(b"SCAN", cursor, b"MATCH", pattern,
                                              b"COUNT", _SCAN_COUNT)
            if keys:
                deleted += int(await self.command(b"UNLINK", *keys))
            if int(cursor) == 0:
                return deleted

    async def increment(self, key: str, amount: float, ttl: float | None) -> float:
        encoded = key.encode()
        number = repr(float(amount)) if not isinstance(amount, int) else str(amount)
        commands = [pack(b"INCRBYFLOAT", encoded, number)]
        if ttl is not None:
            # NX: the TTL applies only when the counter has none (it was just created).
            commands.append(pack(b"PEXPIRE", encoded, max(1, math.ceil(ttl * 1000)), b"NX"))
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

    async def get_ttl(self, key: str) -> float | NotGiven | None:
        millis = int(await self.command(b"PTTL", key.encode()))
        return None if millis < 0 else millis / 1000

    async def ping(self) -> None:
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
    *,
    redis_startup_nodes: object = None,
    startup_nodes: object = None,
    host: str | None = None,
    port: int | str | None = None,
    password: str | None = None,
    username: str | None = None,
    db: int | str | None = None,
    url: str | None = None,
    ssl: bool | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    socket_timeout: float | None = DEFAULT_SOCKET_TIMEOUT,
    socket_connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    cluster_retry_seconds: float | None = None,
    environ: Mapping[str, str] | None = None,
    **connection_options: Any,
) -> Backend:
    """The backend for ``Cache(type="redis", ...)``.

    A Redis Cluster backend when ``redis_startup_nodes`` is given (or
    ``REDIS_CLUSTER_NODES`` is set and no explicit host/port/url is), else a single
    Redis. Explicit arguments override environment variables.
    ``cluster_retry_seconds`` (cluster only) bounds how long a batch retries through a
    failover.
    """
    nodes = redis_startup_nodes if redis_startup_nodes is not None else startup_nodes
    if db is not None and nodes is not None and int(db) != 0:
        raise ConfigurationError("db must be 0 on Redis Cluster")
    settings = RedisSettings.resolve(
        host=host, port=port, password=password, username=username, db=db, url=url, ssl=ssl,
        max_connections=max_connections, socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout, startup_nodes=nodes, environ=environ,
        extra=connection_options,
    )
    if settings.startup_nodes:
        from .redis_cluster import RedisClusterBackend

        if cluster_retry_seconds is None:
            return RedisClusterBackend(settings=settings)
        return RedisClusterBackend(settings=settings, cluster_retry_seconds=cluster_retry_seconds)
    if cluster_retry_seconds is not None:
        raise ConfigurationError("cluster_retry_seconds applies to Redis Cluster only")
    return RedisBackend(settings=settings)


_BACKEND_ARGS = frozenset({
    "host", "port", "password", "username", "db", "url", "ssl", "max_connections",
    "socket_timeout", "socket_connect_timeout",
})


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
        common, backend = split_backend_settings(settings)
        super().__init__(RedisBackend(host, port, **backend), **common)
