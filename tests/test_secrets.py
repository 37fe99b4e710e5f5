"""Secrets never show: not in repr(), settings(), stats(), exceptions or log records.

Each case builds a cache with a secret that the server refuses (wrong Redis password,
wrong S3 keys, wrong Azure key) or cannot check (a Qdrant API key for a closed port, a GCS
service-account file), so every failure path runs: ``test_connection()`` raising, then a
burst of failing calls that log. The whole exception chain (``__cause__`` included) and
every log record (message, arguments and attached traceback) are searched.
"""

from __future__ import annotations

import json
import logging
import shutil
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from asynccache import Cache, CacheError
from tests.helpers import unique
from tests.plugins.services import service_unavailable
from tests.servers import blob_servers
from tests.servers.processes import ServiceUnavailable, free_port, start_valkey

REDIS_SERVER_PASSWORD = "server-side-Pa55-kept"


@dataclass
class SecretCase:
    """A cache holding ``secrets``; ``fails`` when its backend refuses or is unreachable."""

    cache: Cache
    secrets: list[str]
    fails: bool = True


@pytest.fixture(scope="module")
def password_valkey(tmp_path_factory) -> Iterator[Any]:
    """A valkey-server that requires a password (none of the cases know it)."""
    try:
        server = start_valkey(tmp_path_factory.mktemp("valkey-auth"), search=False,
                              name="valkey-auth",
                              extra_args=["--requirepass", REDIS_SERVER_PASSWORD])
    except ServiceUnavailable as exc:
        service_unavailable("valkey-server", exc)
    yield server
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def auth_moto() -> Iterator[Any]:
    """moto's S3 server checking credentials (unknown keys are refused)."""
    try:
        server = blob_servers.start_moto(auth=True)
    except ServiceUnavailable as exc:
        service_unavailable("moto_server", exc)
    yield server
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


def _redis_password(request: pytest.FixtureRequest) -> SecretCase:
    server = request.getfixturevalue("password_valkey")
    secret = "Wrong-Pa55word-arg-7f3a"
    return SecretCase(Cache(type="redis", port=server.port, password=secret,
                            namespace=unique("sec")), [secret])


def _redis_url(request: pytest.FixtureRequest) -> SecretCase:
    server = request.getfixturevalue("password_valkey")
    secret = "Wrong-Pa55word-url-91bc"
    url = f"redis://someone:{secret}@127.0.0.1:{server.port}/0"
    return SecretCase(Cache(type="redis", url=url, namespace=unique("sec")), [secret])


def _redis_unreachable(request: pytest.FixtureRequest) -> SecretCase:
    secret = "Pa55word-for-a-closed-port-2d4e"
    return SecretCase(Cache(type="redis", url=f"redis://:{secret}@127.0.0.1:{free_port()}/0",
                            namespace=unique("sec")), [secret])


def _s3_keys(request: pytest.FixtureRequest) -> SecretCase:
    server = request.getfixturevalue("auth_moto")
    key_id, secret = "AKIAFAKEKEYID7F3A91BC", "wJalrXUtnFEMI-K7MDENG-bPxRfiCY-secret-5e6f"
    settings = {**blob_servers.moto_settings(server, "no-such-bucket"),
                "s3_aws_access_key_id": key_id, "s3_aws_secret_access_key": secret}
    return SecretCase(Cache(type="s3", **settings), [key_id, secret])


def _azure_connection_string(request: pytest.FixtureRequest) -> SecretCase:
    server = request.getfixturevalue("azurite_server")
    key = "V3Jvbmcta2V5LWluLWEtY29ubmVjdGlvbi1zdHJpbmc="
    return SecretCase(Cache(
        type="azure_blob", azure_blob_container=unique("az").lower(),
        azure_connection_string=blob_servers.azurite_connection_string(server, key=key),
    ), [key])


def _azure_account_key(request: pytest.FixtureRequest) -> SecretCase:
    server = request.getfixturevalue("azurite_server")
    key = "V3Jvbmcta2V5LWFzLWFuLWFjY291bnQta2V5LXNldHRpbmc="
    return SecretCase(Cache(
        type="azure_blob", azure_blob_container=unique("az").lower(),
        azure_account_url=f"http://127.0.0.1:{server.port}/{blob_servers.AZURITE_ACCOUNT}",
        azure_account_key=key,
    ), [key])


def _qdrant_api_key(request: pytest.FixtureRequest) -> SecretCase:
    pytest.importorskip("qdrant_client")
    from asynccache.semantic import HashEmbedder

    secret = "qdrant-api-key-secret-8c1d"
    return SecretCase(Cache(type="qdrant-semantic",
                            qdrant_api_base=f"http://127.0.0.1:{free_port()}",
                            qdrant_api_key=secret, embedding=HashEmbedder(16)), [secret])


def _service_account(tmp_path: Any, private_key: str) -> str:
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "asynccache-test",
        "private_key_id": "0123456789abcdef-private-key-id",
        "private_key": private_key,
        "client_email": "cache@asynccache-test.iam.gserviceaccount.com",
        # Never contacted (the emulator skips tokens); local just in case.
        "token_uri": f"http://127.0.0.1:{free_port()}/token",
    }))
    return str(path)


def _gcs_service_account(request: pytest.FixtureRequest) -> SecretCase:
    server = request.getfixturevalue("fake_gcs_server")
    tmp_path = request.getfixturevalue("tmp_path")
    secret = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC-gcs-private-key-4b7e"
    path = _service_account(tmp_path, f"-----BEGIN PRIVATE KEY-----\n{secret}\n"
                                      "-----END PRIVATE KEY-----\n")
    return SecretCase(Cache(type="gcs", gcs_bucket_name="no-such-bucket-" + unique("g"),
                            gcs_api_root=f"http://127.0.0.1:{server.port}",
                            gcs_path_service_account=path),
                      [secret, "0123456789abcdef-private-key-id"])


def _gcs_broken_service_account(request: pytest.FixtureRequest) -> SecretCase:
    server = request.getfixturevalue("fake_gcs_server")
    tmp_path = request.getfixturevalue("tmp_path")
    secret = "gcs-half-written-key-material-6a2f"
    path = tmp_path / "broken.json"
    path.write_text('{"type": "service_account", "private_key": "' + secret)  # not JSON
    return SecretCase(Cache(type="gcs", gcs_bucket_name="bucket-" + unique("g"),
                            gcs_api_root=f"http://127.0.0.1:{server.port}",
                            gcs_path_service_account=str(path)), [secret])


CASES: dict[str, Callable[[pytest.FixtureRequest], SecretCase]] = {
    "redis-password": _redis_password,
    "redis-url-password": _redis_url,
    "redis-url-unreachable": _redis_unreachable,
    "s3-access-keys": _s3_keys,
    "azure-connection-string": _azure_connection_string,
    "azure-account-key": _azure_account_key,
    "qdrant-api-key": _qdrant_api_key,
    "gcs-service-account": _gcs_service_account,
    "gcs-broken-service-account": _gcs_broken_service_account,
}


@pytest.fixture(params=sorted(CASES))
async def case(request: pytest.FixtureRequest):
    built = CASES[request.param](request)
    yield built
    await built.cache.aclose()


def _exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _log_text(records: list[logging.LogRecord]) -> str:
    parts = []
    for record in records:
        parts.append(record.getMessage())
        parts.append(repr(record.args))
        if record.exc_info and record.exc_info[1] is not None:
            parts.append(_exception_text(record.exc_info[1]))
    return "\n".join(parts)


def _assert_hidden(secrets: list[str], where: str, text: str) -> None:
    for secret in secrets:
        assert secret not in text, f"secret {secret[:6]}... shown in {where}"


async def _failing_calls(cache: Cache) -> None:
    for i in range(5):
        assert await cache.async_get_cache(f"k{i}") is None
        assert await cache.async_set_cache(f"k{i}", {"i": i}) is False
    assert await cache.async_batch_get_cache(["a", "b"]) == [None, None]
    assert await cache.async_set_cache_pipeline({"a": 1, "b": 2}) == [False, False]
    await cache.async_delete_cache("a")
    await cache.async_clear()
    assert await cache.async_ping() is False


async def test_secrets_never_appear_in_repr_errors_logs_or_stats(case, caplog):
    caplog.set_level(logging.DEBUG, logger="asynccache")
    caplog.set_level(logging.WARNING)
    cache, secrets = case.cache, case.secrets
    _assert_hidden(secrets, "repr()", repr(cache))
    _assert_hidden(secrets, "backend.describe()", str(cache.backend.describe()))
    with pytest.raises(CacheError) as raised:
        await cache.async_test_connection()
    _assert_hidden(secrets, "test_connection() error", _exception_text(raised.value))
    await _failing_calls(cache)
    assert cache.stats()["errors"] + cache.stats()["timeouts"] > 0
    _assert_hidden(secrets, "stats()", str(cache.stats()))
    _assert_hidden(secrets, "log records", _log_text(caplog.records))
    assert caplog.records  # the failures were logged, without the secret
    _assert_hidden(secrets, "repr() after failures", repr(cache))


async def test_settings_mask_secret_arguments(case):
    settings = case.cache.settings()
    _assert_hidden(case.secrets, "settings()", str(settings))


@pytest.mark.parametrize("url", [
    "redis://user:{secret}@127.0.0.1:6390/0", "rediss://:{secret}@127.0.0.1:6390",
])
def test_settings_mask_a_password_inside_a_url(url):
    secret = "Pa55word-inside-url-0e9d"
    cache = Cache(type="redis", url=url.format(secret=secret))
    settings = cache.settings()
    _assert_hidden([secret], "settings()", str(settings))
    assert "127.0.0.1:6390" in settings["url"]  # the rest of the url is still shown


async def test_a_correct_redis_password_works_and_stays_hidden(password_valkey, caplog):
    caplog.set_level(logging.DEBUG, logger="asynccache")
    cache = Cache(type="redis", port=password_valkey.port, password=REDIS_SERVER_PASSWORD,
                  namespace=unique("ok"))
    try:
        assert (await cache.async_test_connection())["status"] == "healthy"
        assert await cache.async_set_cache("k", "v") is True
        assert await cache.async_get_cache("k") == "v"
        text = repr(cache) + str(cache.stats()) + str(cache.settings()) + _log_text(
            caplog.records)
        _assert_hidden([REDIS_SERVER_PASSWORD], "a working cache", text)
    finally:
        await cache.aclose()
