"""Google Cloud Storage on gcloud-aio-storage: native async, real TTL.

One aiohttp session and one ``Storage`` client per event loop, created on first use and
closed by ``aclose()``. Credentials come from ``gcs_path_service_account`` (a
service-account JSON file, read off the event loop) or Google's default credentials. The
emulator is used when ``STORAGE_EMULATOR_HOST=http://host:port`` is set or
``gcs_api_root`` is given; tokens are then skipped.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import ssl
from pathlib import Path
from typing import Any, ClassVar, cast

import aiohttp
from gcloud.aio.storage import Storage

from ..base import BaseCache
from ..bridge import LoopLocal
from ..config import split_settings
from ..exceptions import CacheConnectionError, ConfigurationError
from ._blob import (
    DEFAULT_LIST_PAGE_SIZE,
    DEFAULT_MAX_CONCURRENCY,
    BlobBackend,
    ObjectHead,
    StoredObject,
    connection_error,
    require_name,
)

__all__ = [
    "GCSBackend", "GCSCache", "lifecycle_rules",
]

_META_HEADER = "x-goog-meta-"
_DEFAULT_API_ROOT = "https://storage.googleapis.com"


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status", None) if isinstance(exc, aiohttp.ClientResponseError) else None


def lifecycle_rules(existing: list[dict[str, Any]], path: str, days: int
                    ) -> list[dict[str, Any]]:
    """A bucket's lifecycle rules with asynccache's delete-by-age rule for ``path`` set."""
    condition: dict[str, Any] = {"age": days}
    if path:
        condition["matchesPrefix"] = [path]
    kept = [
        rule for rule in existing
        if not (rule.get("action", {}).get("type") == "Delete"
                and rule.get("condition", {}).get("matchesPrefix") == condition.get(
                    "matchesPrefix")
                and set(rule.get("condition", {})) <= {"age", "matchesPrefix"})
    ]
    return [*kept, {"action": {"type": "Delete"}, "condition": condition}]


class GCSBackend(BlobBackend):
    """GCS bucket as a cache store; objects under ``gcs_path``.

    ``gcs_timeout`` is the per-request timeout in seconds given to the client library.
    """

    name: ClassVar[str] = "gcs"

    def __init__(
        self,
        gcs_bucket_name: str,
        gcs_path: str | None = None,
        gcs_path_service_account: str | None = None,
        *,
        gcs_api_root: str | None = None,
        gcs_timeout: int = 30,
        gcs_ssl_ca_certs: str | os.PathLike[str] | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        list_page_size: int = DEFAULT_LIST_PAGE_SIZE,
    ) -> None:
        require_name(gcs_bucket_name, "gcs_bucket_name")
        if gcs_path_service_account is not None and not isinstance(
                gcs_path_service_account, str | os.PathLike):
            raise ConfigurationError("gcs_path_service_account must be a path to a JSON file")
        super().__init__(path=gcs_path, path_setting="gcs_path", max_concurrency=max_concurrency,
                         list_page_size=min(list_page_size, 1000))
        self.bucket = gcs_bucket_name
        self.service_account = (None if gcs_path_service_account is None
                                else Path(gcs_path_service_account))
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        self.api_root = gcs_api_root or emulator
        self.emulated = self.api_root is not None
        self.timeout = gcs_timeout
        # A private CA (a TLS-terminating proxy or an emulator serving HTTPS); the system
        # trust store otherwise. Verification is never turned off here.
        self.ssl_ca_certs = None if gcs_ssl_ca_certs is None else os.fspath(gcs_ssl_ca_certs)
        self._clients: LoopLocal[Storage] = LoopLocal(self._open, self._shut)

    # -- clients ------------------------------------------------------------------------

    async def _open(self) -> Storage:
        service_file: io.StringIO | None = None
        if self.service_account is not None:
            # Read the key file off the loop; the token is then fetched with aiohttp.
            where = str(self.service_account)
            try:
                text = await asyncio.to_thread(self.service_account.read_text)
            except OSError as exc:
                raise CacheConnectionError(
                    f"GCS service-account file {where!r} cannot be read: {exc.strerror}") from exc
            try:
                parsed = json.loads(text)
            except ValueError as exc:
                raise CacheConnectionError(
                    f"GCS service-account file {where!r} is not valid JSON") from exc
            if not isinstance(parsed, dict) or "type" not in parsed:
                raise CacheConnectionError(
                    f"GCS service-account file {where!r} is not a Google credentials file "
                    "(no \"type\" field)")
            service_file = io.StringIO(text)
        tls: ssl.SSLContext | bool = True
        if self.ssl_ca_certs is not None:
            tls = ssl.create_default_context(cafile=self.ssl_ca_certs)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.max_concurrency, ssl=tls),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        )
        try:
            # Storage() builds its token object, which may look for default credentials
            # on disk: do that on a worker thread, once per loop.
            def build() -> Storage:
                return Storage(service_file=service_file, session=cast(Any, session),
                               api_root=self.api_root)

            return await asyncio.to_thread(build)
        except BaseException:
            await session.close()
            raise

    @staticmethod
    async def _shut(storage: Storage) -> None:
        await storage.close()
        # A session handed to Storage is shared, so Storage.close() leaves it open.
        await storage.session.session.close()

    # -- primitives ---------------------------------------------------------------------

    async def _get_object(self, name: str) -> StoredObject | None:
        storage = await self._clients.get()
        try:
            stream = await storage.download_stream(self.bucket, name, timeout=self.timeout)
        except aiohttp.ClientResponseError as exc:
            if exc.status == 404:
                return None
            raise
        async with stream as response:
            data = await response.read()
            headers = response.headers
        metadata = {
            key[len(_META_HEADER):].lower(): value
            for key, value in headers.items() if key.lower().startswith(_META_HEADER)
        }
        return StoredObject(data, metadata, headers.get("x-goog-generation"))

    async def _head_object(self, name: str) -> ObjectHead | None:
        storage = await self._clients.get()
        try:
            resource = await storage.download_metadata(self.bucket, name, timeout=self.timeout)
        except aiohttp.ClientResponseError as exc:
            if exc.status == 404:
                return None
            raise
        metadata = {str(k): str(v) for k, v in (resource.get("metadata") or {}).items()}
        generation = resource.get("generation")
        return ObjectHead(metadata, None if generation is None else str(generation))

    async def _put_object(self, name: str, data: bytes, metadata: dict[str, str]) -> None:
        storage = await self._clients.get()
        await storage.upload(self.bucket, name, data, content_type="application/json",
                             metadata={"metadata": metadata}, timeout=self.timeout)

    async def _delete_object(self, name: str, version: str | None = None) -> bool:
        storage = await self._clients.get()
        params = None
        if version is not None:
            # ifGenerationMatch makes the delete conditional on GCS; the emulator ignores
            # it, so compare the generation first as well (one extra request, only when
            # cleaning up an expired object).
            head = await self._head_object(name)
            if head is None or head.version != version:
                return False
            params = {"ifGenerationMatch": version}
        try:
            await storage.delete(self.bucket, name, params=params, timeout=self.timeout)
        except aiohttp.ClientResponseError as exc:
            if exc.status in (404, 412):
                return False  # gone, or rewritten since we read it
            raise
        return True

    async def _list_page(self, prefix: str, token: str | None) -> tuple[list[str], str | None]:
        storage = await self._clients.get()
        params = {"prefix": prefix, "maxResults": str(self.list_page_size),
                  "fields": "items(name),nextPageToken"}
        if token:
            params["pageToken"] = token
        page = await storage.list_objects(self.bucket, params=params, timeout=self.timeout)
        names = [str(item["name"]) for item in page.get("items") or []]
        return names, page.get("nextPageToken") or None

    async def _check_store(self) -> None:
        what = f"bucket {self.bucket!r}"
        try:
            storage = await self._clients.get()
            await storage.get_bucket_metadata(self.bucket, timeout=self.timeout)
        except CacheConnectionError:
            raise
        except aiohttp.ClientResponseError as exc:
            status = exc.status
            if status == 404:
                raise connection_error("GCS", what, "does not exist (create it first)",
                                       exc) from exc
            if status in (400, 401, 403):
                raise connection_error(
                    "GCS", what, f"access denied (HTTP {status}): check the service account "
                    "and its permissions", exc) from exc
            if status in (429, 503):
                raise connection_error("GCS", what, f"throttled (HTTP {status}): slow down or "
                                       "retry later", exc) from exc
            raise connection_error("GCS", what, f"error HTTP {status}", exc) from exc
        except (aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
            # Token fetches fail here too (bad key file, unreachable token endpoint).
            raise connection_error(
                "GCS", what, f"cannot connect or authenticate to "
                f"{self.api_root or _DEFAULT_API_ROOT}: {type(exc).__name__}", exc) from exc

    async def install_lifecycle_rule(self, days: int) -> None:
        """Add a GCS lifecycle rule deleting objects under the path ``days`` after writing.

        Other rules on the bucket are kept (a rule with the same prefix is replaced).
        """
        if isinstance(days, bool) or not isinstance(days, int) or days <= 0:
            raise ConfigurationError(f"days must be a positive int, got {days!r}")
        storage = await self._clients.get()
        bucket = await storage.get_bucket_metadata(self.bucket, timeout=self.timeout)
        rules = lifecycle_rules((bucket.get("lifecycle") or {}).get("rule", []), self.path, days)
        headers = {"Content-Type": "application/json"}
        if not self.emulated:
            headers["Authorization"] = f"Bearer {await storage.token.get()}"
        root = self.api_root or _DEFAULT_API_ROOT
        session = storage.session.session
        async with session.patch(f"{root}/storage/v1/b/{self.bucket}",
                                 json={"lifecycle": {"rule": rules}},
                                 headers=headers) as response:
            response.raise_for_status()

    def describe(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "api_root": self.api_root or _DEFAULT_API_ROOT,
                "service_account_file": None if self.service_account is None
                else str(self.service_account), **super().describe()}


class GCSCache(BaseCache):
    """Cache on Google Cloud Storage, native async, with real TTL.

    >>> cache = GCSCache(gcs_bucket_name="llm-cache", gcs_path="cache/",
    ...                  gcs_path_service_account="sa.json", ttl=86400)  # doctest: +SKIP
    >>> await cache.async_get_cache("k")                                 # doctest: +SKIP
    """

    def __init__(self, gcs_bucket_name: str, **settings: Any) -> None:
        backend, cache = split_settings("GCSCache", settings, GCSBackend)
        super().__init__(GCSBackend(gcs_bucket_name, **backend), **cache)
