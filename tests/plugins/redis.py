"""Redis and Redis Cluster for the contract suite, on real servers started here.

The single server is the session's ``valkey_server`` (tests/plugins/services.py); the
cluster (3 primaries + 3 replicas, ``--cluster-port`` set, node timeout 2 s) is started
once per session by ``valkey_cluster`` and stopped by process. Every cache gets a
unique namespace, so ``clear()`` in one test never touches another's keys.
"""

from __future__ import annotations

import pytest

from asynccache import Cache
from tests.helpers import CacheTracker, unique
from tests.plugins.services import service_unavailable
from tests.servers.processes import ServiceUnavailable, start_valkey_cluster

CONTRACT_BACKENDS = {"redis": "redis_cache_factory", "redis_cluster": "redis_cluster_cache_factory"}


@pytest.fixture(scope="session")
def valkey_cluster():
    """A 6-node valkey cluster (3 primaries, 3 replicas) on 127.0.0.1."""
    try:
        cluster = start_valkey_cluster(primaries=3, replicas=1, node_timeout_ms=2000)
    except ServiceUnavailable as exc:
        service_unavailable("valkey cluster", exc)
    except ImportError as exc:
        service_unavailable("valkey cluster (redis client missing)", exc)  # type: ignore[arg-type]
    yield cluster
    cluster.stop()


def _scoped(settings: dict) -> dict:
    settings.setdefault("namespace", unique("redis"))
    return settings


@pytest.fixture
async def redis_cache_factory(valkey_server):
    """``make(**settings)``: a ``Cache(type="redis")`` on the session server."""
    def build(**settings):
        return Cache(type="redis", host="127.0.0.1", port=valkey_server.port, **_scoped(settings))

    tracker = CacheTracker(build)
    yield tracker
    await tracker.aclose()


@pytest.fixture
async def redis_cluster_cache_factory(valkey_cluster):
    """``make(**settings)``: a ``Cache(type="redis", redis_startup_nodes=...)``."""
    def build(**settings):
        return Cache(type="redis", redis_startup_nodes=valkey_cluster.startup_nodes[:1],
                     **_scoped(settings))

    tracker = CacheTracker(build)
    yield tracker
    await tracker.aclose()
