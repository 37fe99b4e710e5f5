"""Redis Cluster backend: batches split by node, one pipeline per node, sent concurrently.

Every key of a batch is mapped to its hash slot and the slot to the primary that owns
it; each node then gets one pipeline with all of its commands, and the pipelines run at
the same time (``asyncio.gather``). Single-key commands only, so no ``CROSSSLOT`` error
can happen. Redirections and failovers are handled here, not by the caller:

* ``MOVED``: the slot map is patched from the reply and the command goes to its new owner;
* ``ASK`` (a slot being migrated): the command is resent once with ``ASKING``;
* a node that stops answering, ``CLUSTERDOWN``, ``TRYAGAIN`` or a read-only replica
  (a failover in progress): only the affected commands are retried, after refreshing
  the slot map, with backoff, for up to ``cluster_retry_seconds``.

>>> cache = RedisClusterCache(startup_nodes=[{"host": "127.0.0.1", "port": 7000}])  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import Any, ClassVar

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
    "DEFAULT_CLUSTER_RETRY_SECONDS", "ClusterRetryExhausted", "RedisClusterBackend",
    "RedisClusterCache",
]

logger = logging.getLogger("asynccache")

DEFAULT_CLUSTER_RETRY_SECONDS = 4.0
#: Replies that mean "the cluster is changing": retry after refreshing the slot map.
_TRANSIENT_REPLIES = (TryAgainError, ClusterDownError, ReadOnlyError)
#: Failures of a whole node pipeline that mean "this node is gone or busy".
_NODE_FAILURES = (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError)


class ClusterRetryExhausted(RedisClusterException):
    """Commands still failed after ``cluster_retry_seconds`` of retries."""


class RedisClusterBackend(Backend):
    """A Redis Cluster: batches grouped by node and pipelined to every node concurrently.

    Settings: ``startup_nodes`` (``[{"host": ..., "port": ...}]``, or the
    ``REDIS_CLUSTER_NODES`` environment variable as ``"host1:port1,host2:port2"``),
    ``password``, ``username``, ``ssl``, ``max_connections`` (per node),
    ``socket_timeout``, ``socket_connect_timeout`` and ``cluster_retry_seconds`` (how
    long a batch keeps retrying through a failover before it counts as failed).
    """

    name: ClassVar[str] = "redis-cluster"
    remote: ClassVar[bool] = True
    max_batch: ClassVar[int] = 1000

    def __init__(self, startup_nodes: object = None, *,
                 cluster_retry_seconds: float = DEFAULT_CLUSTER_RETRY_SECONDS,
                 settings: RedisSettings | None = None, **options: Any) -> None:
        if settings is None:
            nodes = startup_nodes
            if nodes is None:
                nodes = options.pop("redis_startup_nodes", None)
            host = options.pop("host", None)
            if nodes is None and host is not None:
                nodes = [{"host": host, "port": options.pop("port", None) or 6379}]
            settings = RedisSettings.from_options({**options, "startup_nodes": nodes})
        if not settings.startup_nodes:
            raise ConfigurationError(
                "Redis Cluster needs startup_nodes=[{'host': ..., 'port': ...}] "
                "(or the REDIS_CLUSTER_NODES environment variable)"
            )
        if isinstance(cluster_retry_seconds, bool) or not isinstance(
            cluster_retry_seconds, int | float
        ) or cluster_retry_seconds < 0:
            raise ConfigurationError(
                f"cluster_retry_seconds must be >= 0, got {cluster_retry_seconds!r}"
            )
        self.settings = settings
        self.cluster_retry_seconds = float(cluster_retry_seconds)
        #: Commands resent after a redirection or a failover (for stats and tests).
        self.retried_commands = 0
        #: MOVED and ASK replies followed.
        self.redirections = 0
        self._clients: LoopLocal[_LoopState] = LoopLocal(self._open, _close)

    # -- clients ------------------------------------------------------------------------

    async def _open(self) -> _LoopState:
        settings = self.settings
        kwargs = settings.connection_kwargs()
        for name in ("host", "port", "db"):
            kwargs.pop(name, None)
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in settings.startup_nodes],
            ssl=settings.ssl, max_connections=settings.max_connections,
            # kwargs["retry"] retries nothing: batches are retried here, with our deadline.
            **kwargs,
        )
        try:
            await client.initialize()
        except BaseException:
            await client.aclose()
            raise
        return _LoopState(client, settings.max_connections)

    async def _state(self) -> _LoopState:
        return self._clients.peek() or await self._clients.get()

    async def _client(self) -> RedisCluster:
        return (await self._state()).client

    # -- the per-node pipelines ---------------------------------------------------------

    async def _node_exchange(self, node: ClusterNode, commands: Sequence[bytes]) -> list[Any]:
        """Send ``commands`` to ``node`` in one write; replies (errors as objects).

        At most ``max_connections`` exchanges per node run at once; the others wait
        here (redis-py would raise instead of waiting for a free connection).
        """
        slots = (await self._state()).slots(node.name)
        async with slots:
            return await self._exchange_on(node, commands)

    async def _exchange_on(self, node: ClusterNode, commands: Sequence[bytes]) -> list[Any]:
        conn = node.acquire_connection()
        try:
            if not conn.is_connected:
                await conn.connect()
            timeout = self.settings.socket_timeout
            if timeout is None:
                return await _send_and_read(conn, commands)
            async with timeout_after(timeout):
                return await _send_and_read(conn, commands)
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            node.release(conn)

    async def _refresh(self, client: RedisCluster) -> None:
        try:
            await client.nodes_manager.initialize()
        except Exception as exc:  # the next attempt will tell; keep the old map meanwhile
            logger.debug("asynccache: refreshing the cluster slot map failed: %s", exc)

    async def _batch(self, commands: Sequence[bytes], keys: Sequence[bytes]) -> list[Any]:
        """Run one single-key command per key, grouped by node; replies in order.

        Replies that are not redirections or transient cluster errors are returned as
        they are (a ``ResponseError`` object for an error reply).
        """
        client = await self._client()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cluster_retry_seconds
        slots = [key_slot(key) for key in keys]
        results: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        attempt = 0
        while True:
            manager = client.nodes_manager
            groups: dict[str, tuple[ClusterNode, list[int]]] = {}
            retry: list[int] = []
            last_error: BaseException | None = None
            for index in todo:
                try:
                    node = manager.get_node_from_slot(slots[index])
                except SlotNotCoveredError as exc:
                    retry.append(index)
                    last_error = exc
                    continue
                group = groups.get(node.name)
                if group is None:
                    groups[node.name] = (node, [index])
                else:
                    group[1].append(index)
            outcomes = await asyncio.gather(
                *(self._node_exchange(node, [commands[i] for i in indexes])
                  for node, indexes in groups.values()),
                return_exceptions=True,
            )
            refresh = bool(retry)
            asks: list[tuple[int, AskError]] = []
            for (node, indexes), outcome in zip(groups.values(), outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    if not isinstance(outcome, _NODE_FAILURES):
                        raise outcome
                    node.update_active_connections_for_reconnect()
                    retry.extend(indexes)
                    refresh, last_error = True, outcome
                    continue
                for index, reply in zip(indexes, outcome, strict=True):
                    if isinstance(reply, MovedError):
                        self.redirections += 1
                        await manager.move_slot(reply)
                        retry.append(index)
                        last_error = reply
                    elif isinstance(reply, AskError):
                        self.redirections += 1
                        asks.append((index, reply))
                    elif isinstance(reply, _TRANSIENT_REPLIES):
                        retry.append(index)
                        refresh, last_error = True, reply
                    else:
                        results[index] = reply
            for index, ask in asks:
                reply = await self._asking(client, ask, commands[index])
                if isinstance(reply, (AskError, *_TRANSIENT_REPLIES)):
                    retry.append(index)
                    refresh, last_error = True, reply
                else:
                    results[index] = reply
            if not retry:
                return results
            if loop.time() >= deadline:
                raise ClusterRetryExhausted(
                    f"{len(retry)} cluster commands still failing after "
                    f"{self.cluster_retry_seconds} s: {type(last_error).__name__}: {last_error}"
                )
            if refresh:
                await asyncio.sleep(min(0.5, 0.02 * (2**attempt)))
                await self._refresh(client)
            attempt += 1
            self.retried_commands += len(retry)
            todo = sorted(retry)

    async def _asking(self, client: RedisCluster, ask: AskError, command: bytes) -> Any:
        node = client.nodes_manager.get_node(host=ask.host, port=ask.port)
        if node is None:
            node = ClusterNode(ask.host, ask.port, **client.nodes_manager.connection_kwargs)
        try:
            replies = await self._node_exchange(node, [pack_command(b"ASKING"), command])
        except _NODE_FAILURES as exc:
            return TryAgainError(str(exc))
        return replies[1]

    # -- the contract -------------------------------------------------------------------

    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        encoded = [key.encode() for key in keys]
        replies = await self._batch([pack_command(b"GET", key) for key in encoded], encoded)
        raise_for_permission(replies)
        for reply in replies:
            if isinstance(reply, ResponseError) and not str(reply).startswith("WRONGTYPE"):
                raise reply
        return [reply if isinstance(reply, bytes) else None for reply in replies]

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        if not items:
            return None
        commands = [set_command(key, data, ttl) for key, data, ttl in items]
        return write_flags(await self._batch(commands, [item[0].encode() for item in items]))

    async def remove_many(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        encoded = [key.encode() for key in keys]
        replies = await self._batch([pack_command(b"UNLINK", key) for key in encoded], encoded)
        raise_for_permission(replies)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return sum(int(reply) for reply in replies)

    async def remove_prefix(self, prefix: str) -> int:
        client = await self._client()
        pattern = escape_glob(prefix).encode() + b"*"
        primaries = client.get_primaries()
        counts = await asyncio.gather(*(self._clear_node(node, pattern) for node in primaries))
        return sum(counts)

    async def _clear_node(self, node: ClusterNode, pattern: bytes) -> int:
        deleted = 0
        cursor: bytes = b"0"
        while True:
            reply = (await self._node_exchange(
                node,
                [pack_command(b"SCAN", cursor, b"MATCH", pattern, b"COUNT", DEFAULT_SCAN_COUNT)],
            ))[0]
            if isinstance(reply, Exception):
                raise reply
            cursor, keys = reply
            if keys:
                # Routed by slot again (not sent to this node blindly): a key may have
                # moved since the scan saw it.
                replies = await self._batch([pack_command(b"UNLINK", key) for key in keys], keys)
                deleted += sum(int(r) for r in replies if not isinstance(r, Exception))
            if int(cursor) == 0:
                return deleted

    async def increment_counter(self, key: str, amount: float, ttl: float | None) -> float:
        client = await self._client()
        number = str(amount) if isinstance(amount, int) else repr(float(amount))
        try:
            value = await client.execute_command("INCRBYFLOAT", key, number)
        except ResponseError as exc:
            if "not a valid float" not in str(exc):
                raise
            # The key holds a cached value, not a counter: start the counter afresh.
            args: list[Any] = ["SET", key, number]
            if ttl is not None:
                args += ["PX", max(1, math.ceil(ttl * 1000))]
            await client.execute_command(*args)
            return float(amount)
        if ttl is not None:
            await client.execute_command("PEXPIRE", key, max(1, math.ceil(ttl * 1000)), "NX")
        return float(value)

    async def stored_ttl(self, key: str) -> float | NotGiven | None:
        client = await self._client()
        millis = int(await client.execute_command("PTTL", key))
        return None if millis < 0 else millis / 1000

    async def check_health(self) -> None:
        client = await self._client()
        await client.execute_command("PING")

    async def aclose(self) -> None:
        await self._clients.aclose_all()

    def describe(self) -> dict[str, Any]:
        return {**self.settings.describe(), "cluster_retry_seconds": self.cluster_retry_seconds}

    def counters(self) -> dict[str, int]:
        return {"retried_commands": self.retried_commands, "redirections": self.redirections}


async def _send_and_read(conn: Any, commands: Sequence[bytes]) -> list[Any]:
    await conn.send_packed_command(b"".join(commands), check_health=False)
    out: list[Any] = []
    for _ in range(len(commands)):
        try:
            out.append(await conn.read_response(timeout=math.inf))
        except ResponseError as exc:
            out.append(exc)
    return out


class _LoopState:
    """One event loop's cluster client and per-node connection limits."""

    def __init__(self, client: RedisCluster, max_connections: int) -> None:
        self.client = client
        self._max = max_connections
        self._slots: dict[str, asyncio.Semaphore] = {}

    def slots(self, node_name: str) -> asyncio.Semaphore:
        slots = self._slots.get(node_name)
        if slots is None:
            slots = self._slots[node_name] = asyncio.Semaphore(self._max)
        return slots


async def _close(state: _LoopState) -> None:
    await state.client.aclose()


class RedisClusterCache(BaseCache):
    """A cache on a Redis Cluster (see :class:`RedisClusterBackend` for the settings).

    >>> cache = RedisClusterCache(startup_nodes=[{"host": "127.0.0.1", "port": 7000}],
    ...                           namespace="app", ttl=600)                  # doctest: +SKIP
    """

    def __init__(self, startup_nodes: object = None, **settings: Any) -> None:
        backend, cache = split_settings("RedisClusterCache", settings, RedisClusterBackend,
                                        REDIS_SETTINGS)
        super().__init__(RedisClusterBackend(startup_nodes, **backend), **cache)


