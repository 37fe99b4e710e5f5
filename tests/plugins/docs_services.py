"""Servers for the documentation runner (tests/test_docs.py).

A block marked ``<!-- docs: needs NAME -->`` gets the session fixture
``docs_service_<NAME>`` (``-`` read as ``_``): it starts the server (or reuses the
suite's) and returns the environment variables a documented example reads, e.g.
``{"REDIS_URL": "redis://127.0.0.1:P/0"}``. Documenting a new server takes one fixture of
that name, next to the server's own fixtures.
"""

from __future__ import annotations

import pytest

from tests.servers.processes import HOST


@pytest.fixture(scope="session")
def docs_service_redis(valkey_server) -> dict[str, str]:
    """Valkey with RediSearch: serves ``redis`` and ``redis-semantic`` examples."""
    return {"REDIS_URL": f"redis://{HOST}:{valkey_server.port}/0"}


@pytest.fixture(scope="session")
def docs_service_redis_cluster(valkey_cluster) -> dict[str, str]:
    """The 6-node cluster; the URL names one startup node."""
    node = valkey_cluster.startup_nodes[0]
    return {"REDIS_CLUSTER_URL": f"redis://{node['host']}:{node['port']}"}


@pytest.fixture(scope="session")
def docs_service_s3(moto_server) -> dict[str, str]:
    """moto's S3 server; the AWS SDKs read the endpoint and credentials from these."""
    from tests.servers import blob_servers

    return {
        "AWS_ENDPOINT_URL": f"http://{HOST}:{moto_server.port}",
        "AWS_ACCESS_KEY_ID": blob_servers.MOTO_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": blob_servers.MOTO_SECRET,
        "AWS_DEFAULT_REGION": blob_servers.MOTO_REGION,
    }


@pytest.fixture(scope="session")
def docs_service_gcs(fake_gcs_server) -> dict[str, str]:
    """fake-gcs-server; gcloud-aio-storage reads ``STORAGE_EMULATOR_HOST``."""
    return {"STORAGE_EMULATOR_HOST": f"http://{HOST}:{fake_gcs_server.port}"}


@pytest.fixture(scope="session")
def docs_service_azure(azurite_server) -> dict[str, str]:
    """Azurite's blob service, as a connection string."""
    from tests.servers import blob_servers

    return {"AZURE_STORAGE_CONNECTION_STRING":
            blob_servers.azurite_connection_string(azurite_server)}
