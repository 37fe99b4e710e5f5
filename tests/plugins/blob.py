"""Object-store emulators (moto S3, fake-gcs-server, Azurite) for the contract suite.

One server of each kind per session; every test gets its own bucket or container, so
tests never see each other's objects.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import uuid

import pytest

from tests.helpers import CacheTracker
from tests.plugins.services import service_unavailable
from tests.servers import blob_servers
from tests.servers.processes import ManagedProcess, ServiceUnavailable

# A store joins the contract suite only when its extra is installed, so a partial install
# still collects (and runs) everything else.
_CLIENT_MODULES = {"s3": "aiobotocore", "gcs": "gcloud.aio.storage",
                   "azure_blob": "azure.storage.blob"}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ModuleNotFoundError, ValueError):  # a parent package is missing or blocked
        return False


CONTRACT_BACKENDS = {
    name: f"{name}_cache_factory" for name, module in _CLIENT_MODULES.items()
    if _installed(module)
}


def _cache_class(module: str, name: str):
    """The cache class, imported on first use (the module needs its store's extra)."""
    return getattr(importlib.import_module(f"asynccache.backends.{module}"), name)


def bucket_name(prefix: str = "t") -> str:
    """A fresh bucket/container name valid on every store (lowercase, 3-63 chars)."""
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


def _serve(name: str, start):
    try:
        server: ManagedProcess = start()
    except ServiceUnavailable as exc:
        service_unavailable(name, exc)
    return server


def _stop(server: ManagedProcess) -> None:
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def moto_server():
    """moto's S3 server on 127.0.0.1 for the session."""
    server = _serve("moto_server", blob_servers.start_moto)
    yield server
    _stop(server)


@pytest.fixture(scope="session")
def fake_gcs_server():
    """fake-gcs-server on 127.0.0.1 for the session."""
    server = _serve("fake-gcs-server", blob_servers.start_fake_gcs)
    yield server
    _stop(server)


@pytest.fixture(scope="session")
def azurite_server():
    """Azurite's blob service on 127.0.0.1 for the session (npm-installed on first use)."""
    server = _serve("azurite", blob_servers.start_azurite)
    yield server
    _stop(server)


@pytest.fixture
def s3_settings(moto_server):
    """Settings of a fresh, empty S3 bucket on moto."""
    bucket = bucket_name("s3")
    blob_servers.create_s3_bucket(moto_server, bucket)
    return blob_servers.moto_settings(moto_server, bucket)


@pytest.fixture
def gcs_settings(fake_gcs_server):
    """Settings of a fresh, empty GCS bucket on fake-gcs-server."""
    bucket = bucket_name("gcs")
    blob_servers.create_gcs_bucket(fake_gcs_server, bucket)
    return blob_servers.gcs_settings(fake_gcs_server, bucket)


@pytest.fixture
def azure_settings(azurite_server):
    """Settings of a fresh container on Azurite (created by the first write)."""
    return blob_servers.azurite_settings(azurite_server, bucket_name("az"))


@pytest.fixture
async def s3_cache_factory(s3_settings):
    tracker = CacheTracker(lambda **kw: _cache_class("s3", "S3Cache")(**{**s3_settings, **kw}))
    yield tracker
    await tracker.aclose()


@pytest.fixture
async def gcs_cache_factory(gcs_settings):
    tracker = CacheTracker(lambda **kw: _cache_class("gcs", "GCSCache")(**{**gcs_settings, **kw}))
    yield tracker
    await tracker.aclose()


@pytest.fixture
async def azure_blob_cache_factory(azure_settings):
    tracker = CacheTracker(
        lambda **kw: _cache_class("azure_blob", "AzureBlobCache")(**{**azure_settings, **kw}))
    yield tracker
    await tracker.aclose()


@pytest.fixture(params=["s3", "gcs", "azure_blob"])
def blob_store(request):
    """(store name, settings of a fresh bucket/container) for each object store."""
    fixture = {"s3": "s3_settings", "gcs": "gcs_settings", "azure_blob": "azure_settings"}
    return request.param, request.getfixturevalue(fixture[request.param])
