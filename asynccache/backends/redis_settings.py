"""Redis settings and the wire format, shared by every Redis-speaking cache.

:class:`RedisSettings` is the one place Redis connection settings are declared, read
from the environment (``REDIS_URL``, ``REDIS_HOST``...) and checked, for
``type="redis"``, ``"redis-cluster"`` and ``"redis-semantic"`` alike
(:data:`REDIS_SETTINGS` names them all). The wire helpers pack commands with hiredis.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.connection import parse_url
from redis.backoff import NoBackoff
from redis.exceptions import NoPermissionError
from redis.retry import Retry

from ..config import env_settings, unknown_setting
from ..config import positive_setting as _positive
from ..exceptions import AccessDeniedError, ConfigurationError

__all__ = [
    "CONNECTION_OPTIONS", "DEFAULT_CONNECT_TIMEOUT", "DEFAULT_HOST", "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_PORT", "DEFAULT_SOCKET_TIMEOUT", "REDIS_SETTINGS", "REQUIRED_COMMANDS",
    "RedisSettings", "access_denied", "escape_glob", "pack_command", "parse_cluster_nodes",
    "raise_for_permission", "redis_env_settings", "set_command", "timeout_after", "write_flags",
]

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
#: Keys asked for per SCAN page when clearing.
DEFAULT_SCAN_COUNT = 1000
_GLOB_SPECIAL = frozenset("*?[]\\")

#: Connection options passed through to redis-py as they are.
CONNECTION_OPTIONS = frozenset({
    "client_name", "credential_provider", "health_check_interval", "socket_keepalive",
    "socket_keepalive_options", "ssl_ca_certs", "ssl_ca_data", "ssl_ca_path", "ssl_cert_reqs",
    "ssl_certfile", "ssl_check_hostname", "ssl_ciphers", "ssl_keyfile", "ssl_min_version",
    "ssl_password",
})
_NOT_ON_CLUSTER = frozenset({"ssl_ca_path", "ssl_password"})


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
                raise unknown_setting("Redis", name, allowed | _RESOLVED_NAMES)
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

    @classmethod
    def from_options(cls, options: Mapping[str, Any],
                     environ: Mapping[str, str] | None = None) -> RedisSettings:
        """Settings from the keyword arguments a user wrote (``host=``, ``url=``,
        ``ssl_ca_certs=``...); an unknown one raises naming the closest known name."""
        named = {k: v for k, v in options.items() if k in _RESOLVED_NAMES}
        extra = {k: v for k, v in options.items() if k not in _RESOLVED_NAMES}
        return cls.resolve(**named, environ=environ, extra=extra)

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


#: Settings :meth:`RedisSettings.resolve` takes by name.
_RESOLVED_NAMES = frozenset({
    "host", "port", "password", "username", "db", "url", "ssl", "max_connections",
    "socket_timeout", "socket_connect_timeout", "startup_nodes",
})
#: Every connection setting a Redis cache accepts (single, cluster and semantic).
REDIS_SETTINGS = _RESOLVED_NAMES | CONNECTION_OPTIONS | {"redis_startup_nodes", "client_options"}


# -- the wire ---------------------------------------------------------------------------


def pack_command(*args: bytes | str | int) -> bytes:
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
        return pack_command(b"SET", encoded, data)
    if float(ttl).is_integer():
        return pack_command(b"SET", encoded, data, b"EX", int(ttl))
    return pack_command(b"SET", encoded, data, b"PX", max(1, math.ceil(ttl * 1000)))


def escape_glob(text: str) -> str:
    """``text`` with the glob characters of ``SCAN MATCH`` escaped."""
    return "".join("\\" + ch if ch in _GLOB_SPECIAL else ch for ch in text)


def timeout_after(seconds: float) -> Any:
    """An async context manager that cancels its body after ``seconds`` (3.10 too)."""
    if hasattr(asyncio, "timeout"):
        return asyncio.timeout(seconds)
    from redis.asyncio.connection import async_timeout  # pragma: no cover - Python 3.10

    return async_timeout(seconds)  # pragma: no cover


