"""Memcached backend on emcache's wire protocol: several nodes, one request per node per batch.

Memcached has sharp edges that a cache on top of it must handle itself:

* **Keys** are at most 250 bytes of printable ASCII without spaces. A stored key is
  kept readable when it already fits (``%`` and unsafe bytes percent-escaped, so the
  mapping is one-to-one) and replaced by its SHA-256 otherwise; the two forms carry
  different markers, so no escaped key can ever equal a hashed one.
* **No key listing**, so ``clear(namespace)`` cannot delete entries one by one. Every
  node keeps a random *generation token* per namespace (and one for the whole cache)
  and every stored key embeds the tokens of its node. Clearing deletes the token on
  every node: the old entries become unreachable and age out under memcached's LRU.
  ``flush_all`` is never sent, and other namespaces keep their tokens. Each request
  also reads the tokens it relied on, in the same round trip; if another process
  cleared in between, the request is redone under the new token, so a cleared entry
  is never served and a write is never lost to a stale token.
* **TTL**: memcached reads an expiry over 30 days as an absolute Unix time. Longer TTLs
  are converted; ``ttl=None`` is 0 (never expires). Memcached's clock ticks in whole
  seconds, so an entry is kept ``ceil(ttl) + 1`` seconds and the exact TTL is enforced
  from the entry's own header when it is read (a 0.3 s TTL is a miss after 0.3 s).
* **Item size**: values over the server's item limit (1 MB unless memcached runs with
  ``-I``) are rejected with :class:`~asynccache.exceptions.ItemTooLargeError` naming the
  limit (``item_size_max``), before anything is sent.
* **Counters** use ``incr`` for non-negative whole amounts (atomic on the server) and a
  compare-and-swap loop for fractions, negative amounts and non-integer counters.
* **Several nodes**: keys are spread by emcache's rendezvous hash (stable across
  processes; adding a node moves only its share of keys). A batch get is one ``get``
  per node, all nodes at once; a batch set is one pipelined write per node. A node
  that fails is skipped for ``retry_interval`` seconds: its keys are misses and its
  writes return ``False``, the other nodes keep serving, and nothing is raised unless
  every node is down. It serves again as soon as it answers.

Connections are kept per event loop (made on first use, dropped in a forked child).

>>> cache = MemcachedCache(servers=["127.0.0.1:11211"], namespace="prod")  # doctest: +SKIP
>>> await cache.async_set_cache("k", {"answer": 42}, ttl=3600)            # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote

import orjson
from emcache._cython import cyemcache  # type: ignore[attr-defined]
from emcache.protocol import MemcacheAsciiProtocol

from .. import envelope
from ..base import BaseCache
from ..bridge import LoopLocal
from ..config import positive_setting as _positive
from ..config import split_settings
from ..contract import Backend, WriteItem
from ..exceptions import CacheConnectionError, ConfigurationError
from ..keys import stored_key_prefixes

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT", "DEFAULT_ITEM_SIZE_MAX", "DEFAULT_KEY_PREFIX",
    "DEFAULT_MAX_CONNECTIONS", "DEFAULT_PORT", "DEFAULT_RETRY_INTERVAL", "DEFAULT_SERVER",
    "DEFAULT_SOCKET_TIMEOUT", "ITEM_OVERHEAD", "MAX_KEY_BYTES", "MAX_KEY_PREFIX_BYTES",
    "RELATIVE_TTL_LIMIT", "MemcachedBackend", "MemcachedCache", "NodeDown", "key_body",
    "memcached_expiry", "parse_servers", "parse_size", "validate_key_prefix",
]

logger = logging.getLogger("asynccache")
T = TypeVar("T")

DEFAULT_SERVER = "127.0.0.1:11211"
DEFAULT_PORT = 11211
DEFAULT_KEY_PREFIX = "ac:"
#: memcached's default item size limit (``-I 1m``).
DEFAULT_ITEM_SIZE_MAX = 1024 * 1024
#: Bytes of an item that are not the value: a key of up to 250 bytes, the item header
#: and CAS. Measured on memcached 1.6.18: 309 bytes with a 250-byte key.
ITEM_OVERHEAD = 512
#: Seconds one node may take to answer before it counts as failed.
DEFAULT_SOCKET_TIMEOUT = 1.0
DEFAULT_CONNECT_TIMEOUT = 1.0
DEFAULT_MAX_CONNECTIONS = 8
#: Seconds a failed node is skipped (its keys are misses) before it is tried again.
DEFAULT_RETRY_INTERVAL = 1.0
MAX_KEY_BYTES = 250
#: memcached reads an expiry above this many seconds as an absolute Unix time.
RELATIVE_TTL_LIMIT = 30 * 24 * 3600
MAX_KEY_PREFIX_BYTES = 64
_TOKEN_BYTES = 6  # 12 hex characters, 48 random bits per generation
_TOKEN_CHARS = 2 * _TOKEN_BYTES
#: Characters memcached accepts in a key as they are (``%`` is the escape character).
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")
#: Matches keys made only of characters memcached accepts as they are (not "%").
_SAFE_KEY = re.compile(r"[!-$&-~]+").fullmatch
#: The same for a batch of keys joined by single spaces.
_SAFE_BATCH = re.compile(r"[!-$&-~]+(?: [!-$&-~]+)*").fullmatch
_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)[bB]?\s*$")
_MAX_ROUNDS = 3  # a request redone more often than this (tokens keep changing) fails
_MAX_CACHED_TOKENS = 100_000
_CAS_ATTEMPTS = 100

if sys.version_info >= (3, 11):
    _timeout = asyncio.timeout
else:  # pragma: no cover - Python 3.10
    _timeout = None


# -- settings (pure) --------------------------------------------------------------------


def parse_servers(value: object) -> tuple[tuple[str, int], ...]:
    """Nodes as ``((host, port), ...)`` from any accepted spelling.

    Accepts ``"host:port"`` strings (``[::1]:11211`` for IPv6), ``(host, port)`` pairs,
    ``{"host": ..., "port": ...}`` dicts, a list of those, or one comma-separated string
    (the ``MEMCACHED_SERVERS`` format). A missing port is 11211.

    >>> parse_servers("127.0.0.1:11211, 127.0.0.1:11212")
    (('127.0.0.1', 11211), ('127.0.0.1', 11212))
    """
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not value:
        raise ConfigurationError(
            f"servers must be a non-empty list of 'host:port', got {value!r:.100}"
        )
    nodes: list[tuple[str, int]] = []
    for node in value:
        host: object
        port: object
        if isinstance(node, Mapping):
            host, port = node.get("host"), node.get("port", DEFAULT_PORT)
        elif isinstance(node, str):
            text = node.strip()
            if text.startswith("["):
                host, _, rest = text[1:].partition("]")
                port = rest.lstrip(":") or DEFAULT_PORT
            elif text.count(":") == 1:
                host, _, port = text.partition(":")
            else:
                host, port = text, DEFAULT_PORT
        elif isinstance(node, list | tuple) and len(node) == 2:
            host, port = node
        else:
            raise ConfigurationError(f"cannot read memcached server {node!r:.100}")
        if not host or not isinstance(host, str):
            raise ConfigurationError(f"memcached server {node!r:.100} has no host")
        try:
            port_number = int(port)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise ConfigurationError(f"memcached server {node!r:.100} has no valid port") from None
        if not 0 < port_number < 65536:
            raise ConfigurationError(f"memcached server {node!r:.100}: port must be 1-65535")
        if (host, port_number) in nodes:
            raise ConfigurationError(f"memcached server {host}:{port_number} is listed twice")
        nodes.append((host, port_number))
    return tuple(nodes)


def parse_size(value: object, name: str = "item_size_max") -> int:
    """Bytes from an int or memcached's ``-I`` spelling (``"1m"``, ``"512k"``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        unit = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]
        size = int(match.group(1)) * unit
    else:
        raise ConfigurationError(f"{name} must be bytes or a size like '2m', got {value!r}")
    if size <= ITEM_OVERHEAD:
        raise ConfigurationError(f"{name} must be over {ITEM_OVERHEAD} bytes, got {value!r}")
    return size


def memcached_expiry(ttl: float | None, now: float) -> int:
    """The ``exptime`` memcached needs for ``ttl`` seconds from ``now`` (Unix time).

    ``None`` is 0 (never expires). Memcached's clock ticks once a second, so an item
    set with exptime 1 can expire a moment later: the item is kept ``ceil(ttl) + 1``
    seconds and the exact TTL is enforced from the entry's header. Beyond 30 days
    memcached reads exptime as an absolute Unix time, so it is sent as one.

    >>> memcached_expiry(None, 0), memcached_expiry(0.2, 0), memcached_expiry(60, 0)
    (0, 2, 61)
    >>> memcached_expiry(40 * 86400, 1_700_000_000)
    1703456001
    """
    if ttl is None:
        return 0
    seconds = math.ceil(ttl) + 1
    if seconds > RELATIVE_TTL_LIMIT:
        return int(now) + seconds
    return seconds


def validate_key_prefix(prefix: object) -> bytes:
    """The key prefix as bytes: printable ASCII without spaces, at most 64 bytes."""
    if not isinstance(prefix, str) or not prefix:
        raise ConfigurationError(f"key_prefix must be a non-empty str, got {prefix!r:.80}")
    if any(ch not in _SAFE for ch in prefix) or len(prefix) > MAX_KEY_PREFIX_BYTES:
        raise ConfigurationError(
            f"key_prefix must be at most {MAX_KEY_PREFIX_BYTES} printable ASCII characters "
            f"without spaces or '%', got {prefix!r:.80}"
        )
    return prefix.encode()


def key_body(stored_key: str, budget: int) -> bytes:
    """``stored_key`` as memcached key bytes of at most ``budget`` bytes, one-to-one.

    A key of safe characters is kept as it is; otherwise ``%`` and every byte outside
    printable ASCII (spaces and control characters included) is percent-escaped. Either
    form starts with ``=``. When it does not fit, the key is ``#`` and its SHA-256.

    >>> key_body("abc", 100), key_body("a b%", 100), key_body("x" * 300, 100)[:5]
    (b'=abc', b'=a%20b%25', b'#2a5e')
    """
    if _SAFE_KEY(stored_key):
        escaped = stored_key.encode()
    else:
        escaped = quote(stored_key, safe=_SAFE, errors="strict").encode()
    if len(escaped) < budget:
        return b"=" + escaped
    return b"#" + hashlib.sha256(stored_key.encode()).hexdigest().encode()


# -- the wire ---------------------------------------------------------------------------


class _Replies:
    """Parser for one pipelined exchange: ``lines`` one-line replies, then an optional
    ``get`` reply, parsed by emcache's C parser."""

    __slots__ = ("_buffer", "_future", "_get", "_lines", "_pos", "_then_get", "lines")

    def __init__(self, future: asyncio.Future[None], lines: int, then_get: bool) -> None:
        self._future = future
        self._lines = lines
        self._then_get = then_get
        self._buffer = bytearray()
        self._pos = 0
        self._get: Any = None
        self.lines: list[bytes] = []
        if lines == 0:
            self._start_get(b"")

    def _start_get(self, rest: bytes) -> None:
        if not self._then_get:
            self._future.set_result(None)
            return
        self._get = cyemcache.AsciiMultiLineParser(self._future)
        if rest:
            self._get.feed_data(rest)

    def feed_data(self, data: bytes) -> None:
        if self._get is not None:
            self._get.feed_data(data)
            return
        buffer = self._buffer
        buffer += data
        lines = self.lines
        while len(lines) < self._lines:
            end = buffer.find(b"\r\n", self._pos)
            if end < 0:
                return
            lines.append(bytes(buffer[self._pos:end]))
            self._pos = end + 2
        self._start_get(bytes(buffer[self._pos:]))

    def found(self) -> dict[bytes, bytes]:
        """Keys and values of the trailing ``get`` (empty when there was none)."""
        if self._get is None:
            return {}
        error = self._get.client_error()
        if error:
            raise CacheConnectionError(f"memcached refused a get: {bytes(error)[:200]!r}")
        return dict(zip(self._get.keys(), self._get.values(), strict=True))


class _Connection(MemcacheAsciiProtocol):
    """emcache's protocol with pipelined exchanges that fail at once if the server goes."""

    _pending: asyncio.Future[None] | None = None

    async def exchange(self, data: bytes, lines: int, get_keys: Sequence[bytes]) -> _Replies:
        if get_keys:
            data += b"get " + b" ".join(get_keys) + b"\r\n"
        future: asyncio.Future[None] = self._loop.create_future()
        replies = _Replies(future, lines, bool(get_keys))
        self._parser = replies
        self._pending = future
        assert self._transport is not None
        self._transport.write(data)
        try:
            await future
        finally:
            self._parser = None
            self._pending = None
        return replies

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        pending = self._pending
        if pending is not None and not pending.done():
            pending.set_exception(ConnectionResetError("memcached closed the connection"))


class _Pool:
    """The connections of one event loop to one node, at most ``max_connections``.

    A connection whose exchange failed or was interrupted is closed, never reused (a
    late reply would otherwise be read by the next caller).
    """

    def __init__(self, host: str, port: int, settings: _Settings) -> None:
        self.host, self.port = host, port
        self._settings = settings
        self._free: list[_Connection] = []
        self._slots = asyncio.Semaphore(settings.max_connections)

    async def exchange(self, data: bytes, lines: int, get_keys: Sequence[bytes],
                       *, retry: bool) -> _Replies:
        async with self._slots:
            conn = self._take()
            reused = conn is not None
            try:
                return await self._run(conn or await self._connect(), data, lines, get_keys)
            except ConnectionError:
                if not (reused and retry):
                    raise
                # The server restarted since this connection was made: once more, afresh.
                return await self._run(await self._connect(), data, lines, get_keys)

    def _take(self) -> _Connection | None:
        while self._free:
            conn = self._free.pop()
            if not conn.closed():
                return conn
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        connect = loop.create_connection(_Connection, self.host, self.port)
        _, conn = await asyncio.wait_for(connect, self._settings.connect_timeout)
        return conn

    async def _run(self, conn: _Connection, data: bytes, lines: int,
                   get_keys: Sequence[bytes]) -> _Replies:
        try:
            timeout = self._settings.socket_timeout
            if timeout is None:
                replies = await conn.exchange(data, lines, get_keys)
            elif _timeout is not None:
                async with _timeout(timeout):
                    replies = await conn.exchange(data, lines, get_keys)
            else:  # pragma: no cover - Python 3.10
                replies = await asyncio.wait_for(conn.exchange(data, lines, get_keys), timeout)
        except BaseException:
            conn.close()
            raise
        self._free.append(conn)
        return replies

    def close(self) -> None:
        connections, self._free = self._free, []
        for conn in connections:
            conn.close()


class _Settings:
    __slots__ = ("connect_timeout", "max_connections", "retry_interval", "socket_timeout")

    def __init__(self, socket_timeout: float | None, connect_timeout: float,
                 max_connections: int, retry_interval: float) -> None:
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.retry_interval = retry_interval


class NodeDown(ConnectionError):
    """A node failed recently and is skipped until its retry interval is over."""


class _StaleTokens(Exception):
    """Generation tokens kept changing while a request was redone."""


async def _close_pools(pools: list[_Pool]) -> None:
    for pool in pools:
        pool.close()


# -- the backend ------------------------------------------------------------------------


class MemcachedBackend(Backend):
    """One or more memcached nodes (see the module docstring for how each trap is handled).

    Settings: ``servers`` (``["host:port", ...]``; default ``MEMCACHED_SERVERS`` or
    ``127.0.0.1:11211``), ``key_prefix`` (``"ac:"``), ``item_size_max`` (the server's
    ``-I``, default ``"1m"``), ``socket_timeout`` (1 s per node request),
    ``socket_connect_timeout`` (1 s), ``max_connections`` (8 per node and event loop),
    ``retry_interval`` (1 s: how long a failed node is skipped).
    """

    name: ClassVar[str] = "memcached"
    remote: ClassVar[bool] = True
    max_batch: ClassVar[int] = 1000

    def __init__(
        self,
        servers: object = None,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        item_size_max: int | str = DEFAULT_ITEM_SIZE_MAX,
        socket_timeout: float | None = DEFAULT_SOCKET_TIMEOUT,
        socket_connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if servers is None:
            env = os.environ if environ is None else environ
            servers = env.get("MEMCACHED_SERVERS") or DEFAULT_SERVER
        self.servers = parse_servers(servers)
        self.key_prefix = validate_key_prefix(key_prefix)
        self.item_size_max = parse_size(item_size_max)
        #: Largest encoded entry the servers accept (checked before anything is sent).
        self.max_item_size = self.item_size_max - ITEM_OVERHEAD
        self._settings = _Settings(
            _positive("socket_timeout", socket_timeout, allow_none=True),
            _positive("socket_connect_timeout", socket_connect_timeout),
            _positive("max_connections", max_connections, int),
            _positive("retry_interval", retry_interval),
        )
        # Room left in an item key for the stored-key body: the prefix, "d", two tokens,
        # ":" and the body's own "=" or "#" marker come first.
        self._budget = MAX_KEY_BYTES - len(self.key_prefix) - 3 - 2 * _TOKEN_CHARS
        self._rendezvous = [cyemcache.RendezvousNode(f"{host}:{port}", index)
                            for index, (host, port) in enumerate(self.servers)]
        self._down_until = [0.0] * len(self.servers)
        self._down_reason: list[str | None] = [None] * len(self.servers)
        # (node, generation key) -> token; None: the node holds no token (nothing stored).
        self._tokens: dict[tuple[int, bytes], bytes | None] = {}
        self._root_token_key = self.key_prefix + b"g"
        self._token_keys_of: dict[str, tuple[bytes, ...]] = {}
        self._pid = os.getpid()
        self._pools: LoopLocal[list[_Pool]] = LoopLocal(self._open, _close_pools)

    def item_limit_message(self) -> str:
        """Why :attr:`max_item_size` is what it is (used in ``ItemTooLargeError``)."""
        return (f"the memcached item limit: item_size_max={self.item_size_max} bytes less "
                f"{ITEM_OVERHEAD} for key and header; start memcached with a larger -I and "
                "pass item_size_max to match")

    # -- nodes ----------------------------------------------------------------------------

    async def _open(self) -> list[_Pool]:
        return [_Pool(host, port, self._settings) for host, port in self.servers]

    async def _pool(self, node: int) -> _Pool:
        if os.getpid() != self._pid:
            # A forked child: the parent's sockets are not ours to use or close.
            self._pid = os.getpid()
            self._pools = LoopLocal(self._open, _close_pools)
        pools = self._pools.peek() or await self._pools.get()
        return pools[node]

    def _node_of(self, body: bytes) -> int:
        if len(self._rendezvous) == 1:
            return 0
        node: int = cyemcache.node_selection(body, self._rendezvous)
        return node

    def _label(self, node: int) -> str:
        host, port = self.servers[node]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def _exchange(self, node: int, data: bytes, lines: int, get_keys: Sequence[bytes],
                        *, retry: bool = True) -> _Replies:
        """One pipelined request to ``node``; a failure marks it down for a while."""
        if self._down_until[node] and time.monotonic() < self._down_until[node]:
            raise NodeDown(f"memcached node {self._label(node)} is down: "
                           f"{self._down_reason[node]}")
        try:
            replies = await (await self._pool(node)).exchange(data, lines, get_keys,
                                                              retry=retry)
        except (OSError, TimeoutError, asyncio.TimeoutError) as exc:
            self._mark_down(node, exc)
            raise
        if self._down_until[node]:
            self._down_until[node] = 0.0
            self._down_reason[node] = None
            logger.warning("asynccache: memcached node %s answers again", self._label(node))
        return replies

    def _mark_down(self, node: int, exc: BaseException) -> None:
        if not self._down_until[node]:
            logger.warning("asynccache: memcached node %s failed (%s: %s); its keys are "
                           "misses, retried every %s s", self._label(node),
                           type(exc).__name__, exc, self._settings.retry_interval)
        self._down_until[node] = time.monotonic() + self._settings.retry_interval
        self._down_reason[node] = f"{type(exc).__name__}: {exc}"[:300]
        # The node may come back empty (restarted): forget its tokens.
        for key in [k for k in self._tokens if k[0] == node]:
            del self._tokens[key]

    async def _each_node(self, groups: Mapping[int, T],
                         work: Callable[[int, T], Awaitable[None]]) -> None:
        """Run ``work`` for every node at once. A failed node's share stays a miss or a
        failed write; only when the last request to every node of the cluster failed does
        this raise (so the cache's circuit breaker sees an unusable backend)."""
        if len(groups) == 1:
            ((node, group),) = groups.items()
            try:
                await work(node, group)
            except (ConnectionError, OSError, TimeoutError, asyncio.TimeoutError,
                    _StaleTokens) as exc:
                self._after_failures([exc])
            return
        outcomes = await asyncio.gather(*(work(node, group) for node, group in groups.items()),
                                        return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            self._after_failures(failures)

    def _after_failures(self, failures: list[BaseException]) -> None:
        for failure in failures:
            if not isinstance(failure, ConnectionError | OSError | TimeoutError
                              | asyncio.TimeoutError | _StaleTokens):
                raise failure
        # Every node's last request failed: the cache as a whole is unusable.
        if all(reason is not None for reason in self._down_reason):
            raise failures[0]

    # -- generation tokens ----------------------------------------------------------------

    def _token_keys(self, prefix: str) -> tuple[bytes, ...]:
        """The generation-token keys an entry under ``prefix`` depends on (root first)."""
        known = self._token_keys_of.get(prefix)
        if known is None:
            if len(self._token_keys_of) > _MAX_CACHED_TOKENS:
                self._token_keys_of.clear()
            known = (self._root_token_key,) if not prefix else (
                self._root_token_key, self.key_prefix + b"g:" + key_body(prefix, self._budget))
            self._token_keys_of[prefix] = known
        return known

    def _remember(self, node: int, found: Mapping[bytes, bytes],
                  token_keys: Sequence[bytes]) -> None:
        """Store the tokens a request read back (``None``: the node holds none)."""
        tokens = self._tokens
        if len(tokens) > _MAX_CACHED_TOKENS:
            tokens.clear()
        for key in token_keys:
            tokens[(node, key)] = found.get(key)

    async def _tokens_for(self, node: int, token_keys: Sequence[bytes],
                          create: bool) -> dict[bytes, bytes | None]:
        """The node's tokens for ``token_keys`` (cached; fetched, and created when asked,
        in one round trip otherwise)."""
        known: dict[bytes, bytes | None] = {}
        unknown: list[bytes] = []
        for key in token_keys:
            token = self._tokens.get((node, key), b"?")
            if token == b"?" or (token is None and create):
                unknown.append(key)
            else:
                known[key] = token
        if unknown:
            commands = b""
            if create:
                # add: only where no token exists, so concurrent creators agree on one.
                commands = b"".join(
                    b"add %b 0 0 %d\r\n%b\r\n" % (key, _TOKEN_CHARS,
                                                  secrets.token_hex(_TOKEN_BYTES).encode())
                    for key in unknown
                )
            replies = await self._exchange(node, commands, len(unknown) if create else 0,
                                           unknown)
            found = replies.found()
            self._remember(node, found, unknown)
            for key in unknown:
                known[key] = found.get(key)
        return known

    def _head(self, token_keys: Sequence[bytes],
              tokens: Mapping[bytes, bytes | None]) -> bytes | None:
        """The start of every item key that depends on ``token_keys`` (``None`` while a
        token is missing: nothing can be stored under it)."""
        parts = [tokens[key] for key in token_keys]
        if None in parts:
            return None
        return self.key_prefix + b"d" + b"".join(parts) + b":"  # type: ignore[arg-type]

    def _data_key(self, body: bytes, token_keys: Sequence[bytes],
                  tokens: Mapping[bytes, bytes | None]) -> bytes | None:
        head = self._head(token_keys, tokens)
        return None if head is None else head + body

    def _data_keys(self, indices: Sequence[int], bodies: Sequence[bytes],
                   token_keys: Sequence[tuple[bytes, ...]],
                   tokens: Mapping[bytes, bytes | None]) -> list[bytes | None]:
        # The keys of a batch mostly share one namespace: build each head once.
        heads: dict[tuple[bytes, ...], bytes | None] = {}
        keys: list[bytes | None] = []
        for index in indices:
            names = token_keys[index]
            if names in heads:
                head = heads[names]
            else:
                head = heads[names] = self._head(names, tokens)
            keys.append(None if head is None else head + bodies[index])
        return keys

    def _plan(self, keys: Sequence[str]) -> tuple[list[bytes], list[tuple[bytes, ...]],
                                                  dict[int, list[int]]]:
        """Per stored key: its key body, the token keys it depends on, and its node."""
        budget = self._budget
        joined = " ".join(keys)
        if keys and _SAFE_BATCH(joined) and joined.count(" ") == len(keys) - 1 and (
            max(map(len, keys)) < budget
        ):
            # The usual batch (hex digests in one namespace): every key is kept as it
            # is, checked and encoded in one pass instead of one per key.
            bodies = [b"=" + body for body in joined.encode().split(b" ")]
        else:
            bodies = [key_body(key, budget) for key in keys]
        prefixes = stored_key_prefixes(keys)
        if keys and prefixes.count(prefixes[0]) == len(prefixes):
            token_keys = [self._token_keys(prefixes[0])] * len(keys)
        else:
            token_keys = [self._token_keys(prefix) for prefix in prefixes]
        if len(self._rendezvous) == 1:
            return bodies, token_keys, {0: list(range(len(keys)))}
        groups: dict[int, list[int]] = {}
        for index, body in enumerate(bodies):
            groups.setdefault(self._node_of(body), []).append(index)
        return bodies, token_keys, groups

    async def _validated(self, node: int, indices: Sequence[int],
                         token_keys: Sequence[tuple[bytes, ...]], create: bool,
                         build: Callable[[dict[bytes, bytes | None]], tuple[bytes, int,
                                                                            list[bytes]]],
                         retry: bool = True) -> tuple[_Replies, dict[bytes, bytes | None]]:
        """Send ``build(tokens)`` to ``node`` with the tokens read back in the same round
        trip; redo it while another process changed them in between."""
        needed = sorted({key for index in indices for key in token_keys[index]})
        for _ in range(_MAX_ROUNDS):
            tokens = await self._tokens_for(node, needed, create)
            data, lines, get_keys = build(tokens)
            replies = await self._exchange(node, data, lines, get_keys + needed, retry=retry)
            found = replies.found()
            self._remember(node, found, needed)
            # Compared with the tokens this request used, not with the shared cache: a
            # concurrent request may have learnt the new tokens in the meantime.
            if all(found.get(key) == tokens[key] for key in needed):
                return replies, tokens
        raise _StaleTokens(f"generation tokens on {self._label(node)} kept changing")

    # -- primitives -----------------------------------------------------------------------

    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        found: list[bytes | None] = [None] * len(keys)
        if not keys:
            return found
        bodies, token_keys, groups = self._plan(keys)

        async def read(node: int, indices: list[int]) -> None:
            data_keys: list[bytes | None] = []

            def build(tokens: dict[bytes, bytes | None]) -> tuple[bytes, int, list[bytes]]:
                data_keys[:] = self._data_keys(indices, bodies, token_keys, tokens)
                return b"", 0, [key for key in dict.fromkeys(data_keys) if key is not None]

            replies, _ = await self._validated(node, indices, token_keys, False, build)
            values = replies.found()
            for index, key in zip(indices, data_keys, strict=True):
                if key is not None:
                    found[index] = values.get(key)

        await self._each_node(groups, read)
        return found

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        if not items:
            return None
        for _, data, _ in items:
            if len(data) > self.item_size_max - ITEM_OVERHEAD:
                # BaseCache checks first; a direct call must not reach the server either.
                raise ConfigurationError(f"an entry of {len(data)} bytes is over "
                                         f"{self.item_limit_message()}")
        stored = [False] * len(items)
        bodies, token_keys, groups = self._plan([item[0] for item in items])
        now = time.time()
        expiries = [memcached_expiry(item[2], now) for item in items]

        async def write(node: int, indices: list[int]) -> None:
            def build(tokens: dict[bytes, bytes | None]) -> tuple[bytes, int, list[bytes]]:
                commands = []
                keys = self._data_keys(indices, bodies, token_keys, tokens)
                for i, key in zip(indices, keys, strict=True):
                    assert key is not None  # tokens were created
                    data = items[i][1]
                    commands.append(b"set %b 0 %d %d\r\n%b\r\n" % (key, expiries[i], len(data),
                                                                   data))
                return b"".join(commands), len(indices), []

            replies, _ = await self._validated(node, indices, token_keys, True, build)
            for index, line in zip(indices, replies.lines, strict=True):
                stored[index] = line == b"STORED"
                if not stored[index]:
                    logger.debug("asynccache: memcached refused a write: %r", line[:200])

        await self._each_node(groups, write)
        return None if all(stored) else stored

    async def remove_many(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        bodies, token_keys, groups = self._plan(keys)
        deleted = 0

        async def delete(node: int, indices: list[int]) -> None:
            nonlocal deleted

            def build(tokens: dict[bytes, bytes | None]) -> tuple[bytes, int, list[bytes]]:
                data_keys = self._data_keys(indices, bodies, token_keys, tokens)
                targets = [key for key in dict.fromkeys(data_keys) if key is not None]
                return b"".join(b"delete %b\r\n" % key for key in targets), len(targets), []

            replies, _ = await self._validated(node, indices, token_keys, False, build)
            deleted += sum(line == b"DELETED" for line in replies.lines)

        await self._each_node(groups, delete)
        return deleted

    async def remove_prefix(self, prefix: str) -> int:
        """Drop the generation token of ``prefix`` on every node; return on how many
        nodes it existed (memcached cannot count the entries it makes unreachable)."""
        token_key = self._token_keys(prefix)[-1]
        cleared = 0

        async def drop(node: int, _: None) -> None:
            nonlocal cleared
            self._tokens.pop((node, token_key), None)
            replies = await self._exchange(node, b"delete %b\r\n" % token_key, 1, [])
            self._tokens.pop((node, token_key), None)
            cleared += replies.lines[0] == b"DELETED"

        groups = dict.fromkeys(range(len(self.servers)))
        outcomes = await asyncio.gather(*(drop(n, None) for n in groups),
                                        return_exceptions=True)
        failed = [self._label(n) for n, o in zip(groups, outcomes, strict=True)
                  if isinstance(o, BaseException)]
        if failed:
            # A node that missed the clear and comes back with its memory intact (it was
            # unreachable, not restarted) still serves that namespace's old entries.
            logger.warning("asynccache: memcached clear of %r missed node(s) %s",
                           prefix, ", ".join(failed))
            if len(failed) == len(groups):
                failure = next(o for o in outcomes if isinstance(o, BaseException))
                raise failure
        return cleared

    async def increment_counter(self, key: str, amount: float, ttl: float | None) -> float:
        bodies, token_keys, groups = self._plan([key])
        (node,) = groups
        expiry = memcached_expiry(ttl, time.time())
        if isinstance(amount, int) and amount >= 0:
            result = await self._increment_native(node, bodies[0], token_keys, amount, expiry)
            if result is not None:
                return result
        return await self._increment_cas(node, bodies[0], token_keys, amount, expiry)

    async def _increment_native(self, node: int, body: bytes,
                                token_keys: list[tuple[bytes, ...]], amount: int,
                                expiry: int) -> int | None:
        """``incr``, creating the counter with ``add`` when missing; ``None`` when the
        stored value is not an unsigned integer (the CAS loop takes over)."""
        for _ in range(_CAS_ATTEMPTS):
            def build(tokens: dict[bytes, bytes | None]) -> tuple[bytes, int, list[bytes]]:
                mkey = self._data_key(body, token_keys[0], tokens)
                assert mkey is not None  # tokens were created
                return b"incr %b %d\r\n" % (mkey, amount), 1, []

            # Not retried on a fresh connection: incr is not idempotent.
            replies, tokens = await self._validated(node, [0], token_keys, True, build,
                                                    retry=False)
            line = replies.lines[0]
            if line.isdigit():
                return int(line)
            if line != b"NOT_FOUND":
                return None
            mkey = self._data_key(body, token_keys[0], tokens)
            assert mkey is not None
            text = b"%d" % amount
            added = await self._exchange(
                node, b"add %b 0 %d %d\r\n%b\r\n" % (mkey, expiry, len(text), text), 1, [],
                retry=False)
            if added.lines[0] == b"STORED":
                return amount
        raise _StaleTokens("the counter kept changing")

    async def _increment_cas(self, node: int, body: bytes, token_keys: list[tuple[bytes, ...]],
                             amount: float, expiry: int) -> float:
        """Read value, CAS id and remaining TTL; write the sum back only if unchanged."""
        mkey_box: list[bytes] = []
        for _ in range(_CAS_ATTEMPTS):

            def build(tokens: dict[bytes, bytes | None]) -> tuple[bytes, int, list[bytes]]:
                mkey = self._data_key(body, token_keys[0], tokens)
                assert mkey is not None
                mkey_box[:] = [mkey]
                # mg's one-line reply carries the CAS id and TTL; the value comes from the
                # get after it. A write between the two changes the CAS id, so the
                # compare-and-swap below fails and the loop reads again.
                return b"mg %b c t\r\n" % mkey, 1, [mkey]

            replies, _ = await self._validated(node, [0], token_keys, True, build)
            mkey = mkey_box[0]
            header = replies.lines[0]
            current = replies.found().get(mkey)
            if header.startswith(b"HD") and current is not None:
                flags = dict((f[:1], f[1:]) for f in header.split()[1:])
                value = _counter_value(current) + amount
                remaining = int(flags.get(b"t", b"-1"))
                # The counter keeps the expiry it has (-1: none, which is T0 for ms).
                keep = 0 if remaining < 0 else max(1, remaining)
                if keep > RELATIVE_TTL_LIMIT:
                    keep += int(time.time())
                text = _number_bytes(value)
                command = b"ms %b %d C%b T%d\r\n%b\r\n" % (
                    mkey, len(text), flags[b"c"], keep, text)
            else:
                value = amount
                text = _number_bytes(value)
                command = b"add %b 0 %d %d\r\n%b\r\n" % (mkey, expiry, len(text), text)
            written = await self._exchange(node, command, 1, [], retry=False)
            if written.lines[0] in (b"HD", b"STORED"):
                return value
        raise _StaleTokens("the counter kept changing under compare-and-swap")

    async def check_health(self) -> None:
        """Ask every node for its version; raise naming the nodes that do not answer."""
        outcomes = await asyncio.gather(
            *(self._exchange(node, b"version\r\n", 1, []) for node in range(len(self.servers))),
            return_exceptions=True,
        )
        failed = [f"{self._label(n)} ({type(o).__name__}: {o})"
                  for n, o in enumerate(outcomes) if isinstance(o, BaseException)]
        if failed:
            raise CacheConnectionError(
                f"{len(failed)} of {len(self.servers)} memcached node(s) do not answer: "
                + "; ".join(failed)
            )

    async def aclose(self) -> None:
        await self._pools.aclose_all()

    def describe(self) -> dict[str, Any]:
        down = [self._label(n) for n, reason in enumerate(self._down_reason)
                if reason is not None]
        return {"servers": [self._label(n) for n in range(len(self.servers))],
                "key_prefix": self.key_prefix.decode(), "item_size_max": self.item_size_max,
                "nodes_down": down}


def _counter_value(data: bytes) -> int | float:
    # The counter's expiry is memcached's own (the CAS write keeps it), not the envelope's.
    return envelope.read_counter(data, 0.0)[0]


def _number_bytes(value: float) -> bytes:
    return orjson.dumps(value)


class MemcachedCache(BaseCache):
    """A cache on one or more memcached nodes.

    Connection settings are those of :class:`MemcachedBackend`; every other keyword
    (``namespace``, ``ttl``, ``flush_size``, ``timeout``...) is a :class:`BaseCache`
    setting.

    >>> cache = MemcachedCache(servers=["127.0.0.1:11211"], ttl=600)  # doctest: +SKIP
    >>> cache.set_cache("greeting", {"text": "hello"})               # doctest: +SKIP
    True
    """

    def __init__(self, servers: object = None, **settings: Any) -> None:
        backend, cache = split_settings("MemcachedCache", settings, MemcachedBackend)
        super().__init__(MemcachedBackend(servers, **backend), **cache)
