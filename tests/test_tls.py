"""TLS, mutual TLS and least-privilege users against real servers.

Debian's ``redis-server`` (built with TLS) serves TLS only, with certificates from a CA
the tests make; the ACL tests use the suite's valkey server with a user limited to one
namespace's keys and the commands the cache sends.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from pathlib import Path

import pytest

from asynccache import Cache, RedisCache
from asynccache.backends.redis_settings import REQUIRED_COMMANDS
from asynccache.exceptions import AccessDeniedError, CacheConnectionError
from tests.plugins.services import service_unavailable
from tests.servers.processes import ServiceUnavailable
from tests.servers.tls import (
    CertificateFiles,
    make_certificates,
    start_redis_tls,
    start_redis_tls_cluster,
)


def started(label: str, start):
    """A server for this module, stopped afterwards; in CI one that cannot start fails."""
    try:
        server = start()
    except ServiceUnavailable as exc:
        service_unavailable(label, exc)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def test_ca() -> CertificateFiles:
    return make_certificates(Path(tempfile.mkdtemp(prefix="asynccache-ca-")))


@pytest.fixture(scope="module")
def tls_redis(test_ca):
    yield from started("redis-server (TLS)", lambda: start_redis_tls(test_ca))


@pytest.fixture(scope="module")
def mtls_redis(test_ca):
    yield from started("redis-server (mutual TLS)",
                       lambda: start_redis_tls(test_ca, client_certs=True, name="redis-mtls"))


@pytest.fixture(scope="module")
def tls_cluster(test_ca):
    yield from started("redis-server cluster (TLS)", lambda: start_redis_tls_cluster(test_ca))


def tls_url(server) -> str:
    return f"rediss://127.0.0.1:{server.port}/0"


async def round_trip(cache) -> None:
    key = f"tls-{uuid.uuid4().hex}"
    assert await cache.async_set_cache(key, {"answer": 42}) is True
    assert await cache.async_get_cache(key) == {"answer": 42}
    pairs = {f"{key}-{i}": i for i in range(20)}
    assert await cache.async_set_cache_pipeline(pairs) == [True] * 20
    assert await cache.async_batch_get_cache(list(pairs)) == list(pairs.values())
    assert (await cache.async_test_connection())["status"] == "healthy"


async def fails_closed(cache, reason: str | None = None) -> None:
    """Nothing reaches an unverified server: a failed write, a miss, and a
    test_connection() error that says why (matching ``reason``)."""
    assert await cache.async_set_cache("k", "v") is False
    assert await cache.async_get_cache("k") is None
    with pytest.raises(CacheConnectionError, match=reason):
        await cache.async_test_connection()


# -- TLS ---------------------------------------------------------------------------------

async def test_rediss_url_with_the_ca_round_trips(tls_redis, test_ca):
    async with RedisCache(url=tls_url(tls_redis), ssl_ca_certs=str(test_ca.ca_cert),
                          namespace="tls") as cache:
        await round_trip(cache)


def test_sync_twins_over_tls(tls_redis, test_ca):
    with Cache(type="redis", url=tls_url(tls_redis), ssl_ca_certs=str(test_ca.ca_cert)) as cache:
        assert cache.set_cache("sync-tls", [1, 2]) is True
        assert cache.get_cache("sync-tls") == [1, 2]


@pytest.mark.parametrize("ca", ["none", "unrelated"])
async def test_an_unverifiable_server_fails_closed(tls_redis, test_ca, ca, caplog):
    """Without the CA (or with another CA) nothing is sent: a miss, a failed write, a
    logged certificate error, and test_connection() says why."""
    options = {} if ca == "none" else {"ssl_ca_certs": str(test_ca.other_ca_cert)}
    caplog.set_level(logging.WARNING, logger="asynccache")
    async with RedisCache(url=tls_url(tls_redis), breaker_threshold=1000, **options) as cache:
        assert await cache.async_set_cache("k", "secret") is False
        assert await cache.async_get_cache("k") is None
        with pytest.raises(CacheConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await cache.async_test_connection()
        assert cache.stats()["set_failures"] == 1
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


async def test_turning_verification_off_is_explicit_and_logged_once(tls_redis, caplog):
    caplog.set_level(logging.WARNING, logger="asynccache")
    async with RedisCache(url=tls_url(tls_redis), ssl_cert_reqs="none") as cache:
        await round_trip(cache)
    warnings = [r for r in caplog.records if "verification is OFF" in r.getMessage()]
    assert len(warnings) == 1


async def test_client_options_are_accepted_as_on_the_semantic_cache(tls_redis, test_ca):
    async with Cache(type="redis", url=tls_url(tls_redis),
                     client_options={"ssl_ca_certs": str(test_ca.ca_cert)}) as cache:
        await round_trip(cache)


async def test_plain_text_to_a_tls_port_fails_clearly(tls_redis):
    async with RedisCache(host="127.0.0.1", port=tls_redis.port, socket_timeout=1) as cache:
        assert await cache.async_get_cache("k") is None
        with pytest.raises(CacheConnectionError):
            await cache.async_test_connection()


# -- mutual TLS --------------------------------------------------------------------------

async def test_mutual_tls_with_a_client_certificate(mtls_redis, test_ca):
    async with RedisCache(url=tls_url(mtls_redis), ssl_ca_certs=str(test_ca.ca_cert),
                          ssl_certfile=str(test_ca.client_cert),
                          ssl_keyfile=str(test_ca.client_key)) as cache:
        await round_trip(cache)


async def test_mutual_tls_without_a_client_certificate_fails_closed(mtls_redis, test_ca):
    async with RedisCache(url=tls_url(mtls_redis), ssl_ca_certs=str(test_ca.ca_cert),
                          socket_timeout=2, breaker_threshold=1000) as cache:
        await fails_closed(cache)


# -- Redis Cluster over TLS --------------------------------------------------------------

async def test_cluster_over_tls(tls_cluster, test_ca):
    async with Cache(type="redis", redis_startup_nodes=tls_cluster.startup_nodes, ssl=True,
                     ssl_ca_certs=str(test_ca.ca_cert), namespace="tls-cluster") as cache:
        await round_trip(cache)
        assert await cache.async_clear() >= 21


async def test_cluster_over_tls_without_the_ca_fails_closed(tls_cluster):
    async with Cache(type="redis", redis_startup_nodes=tls_cluster.startup_nodes, ssl=True,
                     breaker_threshold=1000, socket_timeout=2) as cache:
        assert await cache.async_get_cache("k") is None
        assert await cache.async_set_cache("k", 1) is False
        with pytest.raises(CacheConnectionError):
            await cache.async_test_connection()


# -- least privilege ---------------------------------------------------------------------

def _acl_user(valkey_server, namespace: str, commands) -> tuple[str, str]:
    import redis

    user, password = f"cache-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with redis.Redis(host="127.0.0.1", port=valkey_server.port) as admin:
        admin.execute_command(
            "ACL", "SETUSER", user, "on", f">{password}", "resetkeys", f"~{namespace}:*",
            "resetchannels", "-@all", *[f"+{name}" for name in commands],
        )
    return user, password


def _drop_user(valkey_server, user: str) -> None:
    import redis

    with redis.Redis(host="127.0.0.1", port=valkey_server.port) as admin:
        admin.execute_command("ACL", "DELUSER", user)


async def test_a_user_limited_to_its_namespace_can_do_everything(valkey_server):
    namespace = f"acl{uuid.uuid4().hex[:6]}"
    user, password = _acl_user(valkey_server, namespace, REQUIRED_COMMANDS)
    try:
        async with RedisCache(host="127.0.0.1", port=valkey_server.port, username=user,
                              password=password, namespace=namespace) as cache:
            await round_trip(cache)
            assert await cache.async_increment("hits", 2, ttl=60) == 2
            assert 0 < (await cache.async_get_ttl("hits")) <= 60
            assert await cache.async_delete_cache("hits") is True
            assert await cache.async_clear() == 21
            assert cache.stats()["errors"] == 0
    finally:
        _drop_user(valkey_server, user)


async def test_a_denied_command_is_a_configuration_error_at_test_connection(valkey_server):
    namespace = f"acl{uuid.uuid4().hex[:6]}"
    without_set = [name for name in REQUIRED_COMMANDS if name != "set"]
    user, password = _acl_user(valkey_server, namespace, without_set)
    try:
        async with RedisCache(host="127.0.0.1", port=valkey_server.port, username=user,
                              password=password, namespace=namespace,
                              breaker_threshold=1000) as cache:
            with pytest.raises(AccessDeniedError, match=r"\+set") as raised:
                await cache.async_test_connection()
            assert password not in str(raised.value)
            # The LLM call path still never raises: a failed write, counted.
            assert await cache.async_set_cache("k", 1) is False
            assert cache.stats()["set_failures"] == 1
    finally:
        _drop_user(valkey_server, user)


async def test_keys_outside_the_namespace_are_denied_not_served(valkey_server):
    namespace = f"acl{uuid.uuid4().hex[:6]}"
    user, password = _acl_user(valkey_server, namespace, REQUIRED_COMMANDS)
    try:
        async with RedisCache(host="127.0.0.1", port=valkey_server.port, username=user,
                              password=password, namespace="elsewhere",
                              breaker_threshold=1000) as cache:
            assert await cache.async_get_cache("k") is None
            with pytest.raises(AccessDeniedError):
                await cache.async_test_connection()
    finally:
        _drop_user(valkey_server, user)


# -- S3 over HTTPS -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def https_moto(test_ca):
    from tests.servers import blob_servers

    yield from started("moto_server (HTTPS)",
                       lambda: blob_servers.start_moto(tls=test_ca.server_pair))


def _https_s3_settings(server, ca, **extra):
    import boto3

    from tests.servers import blob_servers

    settings = blob_servers.moto_settings(server, f"tls-{uuid.uuid4().hex[:10]}")
    endpoint = f"https://127.0.0.1:{server.port}"
    boto3.client("s3", endpoint_url=endpoint, verify=str(ca.ca_cert),
                 region_name=blob_servers.MOTO_REGION,
                 aws_access_key_id=blob_servers.MOTO_KEY_ID,
                 aws_secret_access_key=blob_servers.MOTO_SECRET,
                 ).create_bucket(Bucket=settings["s3_bucket_name"])
    return {**settings, "s3_endpoint_url": endpoint, **extra}


async def test_s3_over_https_with_the_ca(https_moto, test_ca):
    async with Cache(type="s3", **_https_s3_settings(
            https_moto, test_ca, s3_verify=str(test_ca.ca_cert))) as cache:
        await round_trip(cache)


async def test_s3_over_https_fails_closed_without_the_ca(https_moto, test_ca):
    async with Cache(type="s3", breaker_threshold=1000,
                     **_https_s3_settings(https_moto, test_ca)) as cache:
        await fails_closed(cache, r"(?i)ssl|certificate")


# -- GCS and Azure Blob over HTTPS -------------------------------------------------------

@pytest.fixture(scope="module")
def https_gcs(test_ca):
    from tests.servers import blob_servers

    yield from started("fake-gcs-server (HTTPS)",
                       lambda: blob_servers.start_fake_gcs(tls=test_ca.server_pair))


@pytest.fixture(scope="module")
def https_azurite(test_ca):
    from tests.servers import blob_servers

    yield from started("Azurite (HTTPS)",
                       lambda: blob_servers.start_azurite(tls=test_ca.server_pair))


def _https_gcs_settings(server, ca, **extra):
    import json
    import ssl
    import urllib.request

    bucket = f"tls-{uuid.uuid4().hex[:10]}"
    root = f"https://127.0.0.1:{server.port}"
    request = urllib.request.Request(
        f"{root}/storage/v1/b?project=test", data=json.dumps({"name": bucket}).encode(),
        method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(
            request, timeout=10, context=ssl.create_default_context(cafile=str(ca.ca_cert))):
        pass
    return {"gcs_bucket_name": bucket, "gcs_api_root": root, **extra}


def _https_azure_settings(server, **extra):
    from tests.servers import blob_servers

    return {"azure_connection_string": blob_servers.azurite_connection_string(
                server, scheme="https"),
            "azure_blob_container": f"tls-{uuid.uuid4().hex[:10]}", **extra}


async def test_gcs_over_https_with_the_ca(https_gcs, test_ca):
    async with Cache(type="gcs", **_https_gcs_settings(
            https_gcs, test_ca, gcs_ssl_ca_certs=str(test_ca.ca_cert))) as cache:
        await round_trip(cache)


async def test_gcs_over_https_fails_closed_without_the_ca(https_gcs, test_ca):
    async with Cache(type="gcs", breaker_threshold=1000,
                     **_https_gcs_settings(https_gcs, test_ca)) as cache:
        await fails_closed(cache, r"(?i)ssl|certificate")


async def test_azure_over_https_with_the_ca(https_azurite, test_ca):
    async with Cache(type="azure_blob", **_https_azure_settings(
            https_azurite, azure_ssl_ca_certs=str(test_ca.ca_cert))) as cache:
        await round_trip(cache)


async def test_azure_over_https_fails_closed_without_the_ca(https_azurite):
    async with Cache(type="azure_blob", breaker_threshold=1000, azure_retry_total=0,
                     **_https_azure_settings(https_azurite)) as cache:
        await fails_closed(cache, r"(?i)ssl|certificate")


# -- PostgreSQL and MariaDB over TLS -----------------------------------------------------

@pytest.fixture(scope="module")
def tls_postgres(test_ca):
    from tests.servers.sql_servers import start_postgres

    yield from started("PostgreSQL (TLS)",
                       lambda: start_postgres(name="postgres-tls", tls=test_ca.server_pair))


@pytest.fixture(scope="module")
def tls_mariadb(test_ca):
    from tests.servers.sql_servers import start_mariadb

    yield from started("MariaDB (TLS)",
                       lambda: start_mariadb(name="mariadb-tls", tls=test_ca.server_pair))


@pytest.fixture(params=["postgres", "mariadb"])
def tls_sql_server(request):
    """Each TLS-only database server (set up before the test's event loop runs)."""
    return request.getfixturevalue(f"tls_{request.param}")


async def test_sql_over_tls_verified_against_the_ca(tls_sql_server, test_ca):
    """The servers refuse connections that are not TLS, so a round trip proves TLS."""
    server = tls_sql_server
    async with Cache(type="sql", url=server.url, ssl_ca_certs=str(test_ca.ca_cert),
                     table=f"tls_{uuid.uuid4().hex[:8]}") as cache:
        await round_trip(cache)


async def test_sql_with_another_ca_fails_closed(tls_sql_server, test_ca):
    async with Cache(type="sql", url=tls_sql_server.url, breaker_threshold=1000,
                     connect_timeout=3, table=f"tls_{uuid.uuid4().hex[:8]}",
                     ssl_ca_certs=str(test_ca.other_ca_cert)) as cache:
        await fails_closed(cache)


async def test_plain_text_to_a_tls_only_mariadb_fails_closed(tls_mariadb):
    # (asyncpg's own default, sslmode=prefer, encrypts without verifying: documented.)
    async with Cache(type="sql", url=tls_mariadb.url, breaker_threshold=1000,
                     connect_timeout=3, table=f"tls_{uuid.uuid4().hex[:8]}") as cache:
        await fails_closed(cache)


def test_sql_client_certificate_needs_a_ca():
    from asynccache.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match="need ssl_ca_certs"):
        Cache(type="sql", url="postgresql+asyncpg://u@127.0.0.1/db", ssl_certfile="c.pem")
