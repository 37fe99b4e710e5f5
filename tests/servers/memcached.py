"""Start Debian's memcached on 127.0.0.1 for tests and benchmarks, one process per node.

Every node binds 127.0.0.1 on a free port and is stopped by its process handle.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.servers.processes import HOST, ManagedProcess, ServiceUnavailable, free_port

MEMORY_MB = 64


def memcached_binary() -> str:
    """The memcached executable (Debian package ``memcached``)."""
    path = shutil.which("memcached") or "/usr/bin/memcached"
    if not Path(path).exists():
        raise ServiceUnavailable("memcached is not installed (apt-get install memcached)")
    return path


def start_memcached(workdir: Path | None = None, *, port: int | None = None,
                    extra_args: Sequence[str] = (), name: str = "memcached") -> ManagedProcess:
    """One memcached node: ``memcached -u nobody -l 127.0.0.1 -p P -m 64 [extra_args]``.

    ``extra_args=["-I", "2m"]`` raises the item size limit.
    """
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="asynccache-memcached-"))
    command = [memcached_binary(), "-u", "nobody", "-l", HOST, "-p", str(port),
               "-m", str(MEMORY_MB), *extra_args]
    return ManagedProcess(name, command, port, workdir).start()


@dataclass
class MemcachedNodes:
    """Several memcached processes; ``stop()`` ends them all."""

    nodes: list[ManagedProcess]

    @property
    def servers(self) -> list[str]:
        """``["127.0.0.1:P", ...]`` for ``Cache(type="memcached", servers=...)``."""
        return [f"{HOST}:{node.port}" for node in self.nodes]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
            shutil.rmtree(node.workdir, ignore_errors=True)


def start_memcached_nodes(count: int, *, extra_args: Sequence[str] = ()) -> MemcachedNodes:
    """``count`` memcached nodes on free ports."""
    nodes = MemcachedNodes([])
    try:
        for index in range(count):
            nodes.nodes.append(start_memcached(extra_args=extra_args,
                                               name=f"memcached-{index}"))
    except BaseException:
        nodes.stop()
        raise
    return nodes


def _command(port: int, command: bytes, end: bytes = b"END\r\n") -> bytes:
    import socket

    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(command)
        reply = b""
        while not reply.endswith(end):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    return reply


def server_stats(port: int) -> dict[str, str]:
    """``stats`` of one node (``cmd_flush``, ``curr_items``...)."""
    lines = _command(port, b"stats\r\n").decode().splitlines()
    return {parts[1]: parts[2] for parts in (line.split(" ", 2) for line in lines)
            if len(parts) == 3}


def item_expiries(port: int) -> dict[str, int]:
    """Every item on a node with its absolute expiry (-1: never), by key.

    Read with ``lru_crawler metadump all``: what the server itself holds, not what the
    client believes.
    """
    from urllib.parse import unquote

    found: dict[str, int] = {}
    for line in _command(port, b"lru_crawler metadump all\r\n").decode().splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if "key" in fields:
            found[unquote(fields["key"])] = int(fields["exp"])
    return found


def raw_set(port: int, key: bytes, value: bytes) -> None:
    """Store an item directly, as another application sharing the server would."""
    reply = _command(port, b"set %b 0 0 %d\r\n%b\r\n" % (key, len(value), value), b"\r\n")
    assert reply == b"STORED\r\n", reply


def raw_get(port: int, key: bytes) -> bytes | None:
    reply = _command(port, b"get %b\r\n" % key)
    if not reply.startswith(b"VALUE"):
        return None
    return reply.split(b"\r\n", 2)[1]
