"""Memcached for the contract suite, on real Debian memcached processes started here.

One single-node server and one three-node group per session (the three-node group is
what the contract runs against, so every test also exercises the key spreading); both
are stopped by process. Every cache gets a unique namespace, so ``clear()`` in one test
never touches another's keys.
"""

from __future__ import annotations

import pytest

from asynccache import Cache
from tests.helpers import CacheTracker, unique
from tests.plugins.services import service_unavailable
from tests.servers.memcached import MemcachedNodes, start_memcached_nodes
from tests.servers.processes import ServiceUnavailable

CONTRACT_BACKENDS = {"memcached": "memcached_cache_factory",
                     "memcached_3_nodes": "memcached_3_nodes_cache_factory"}


def _start(count: int, extra_args: tuple[str, ...] = ()) -> MemcachedNodes:
    try:
        return start_memcached_nodes(count, extra_args=extra_args)
    except ServiceUnavailable as exc:
        service_unavailable("memcached", exc)
        raise  # unreachable: service_unavailable skips or fails


@pytest.fixture(scope="session")
def memcached_server():
    """One memcached node (default settings: 64 MB, 1 MB item limit) for the session."""
    nodes = _start(1)
    yield nodes
    nodes.stop()


@pytest.fixture(scope="session")
def memcached_nodes():
    """Three memcached nodes for the session (never killed: fault tests start their own)."""
    nodes = _start(3)
    yield nodes
    nodes.stop()


def _factory(servers: list[str]) -> CacheTracker:
    def build(**settings):
        settings.setdefault("namespace", unique("mc"))
        return Cache(type="memcached", servers=servers, **settings)

    return CacheTracker(build)


@pytest.fixture
async def memcached_cache_factory(memcached_server):
    """``make(**settings)``: a ``Cache(type="memcached")`` on the single node."""
    tracker = _factory(memcached_server.servers)
    yield tracker
    await tracker.aclose()


@pytest.fixture
async def memcached_3_nodes_cache_factory(memcached_nodes):
    """``make(**settings)``: a ``Cache(type="memcached")`` over the three nodes."""
    tracker = _factory(memcached_nodes.servers)
    yield tracker
    await tracker.aclose()


@pytest.fixture(scope="session")
def docs_service_memcached(memcached_server):
    """Environment for docs blocks marked ``<!-- docs: needs memcached -->``."""
    return {"MEMCACHED_SERVERS": memcached_server.servers[0]}
