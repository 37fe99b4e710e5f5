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
