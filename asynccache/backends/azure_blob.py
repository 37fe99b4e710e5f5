"""Azure Blob Storage on ``azure.storage.blob.aio``: native async, real TTL.

Credentials, in order: ``azure_connection_string``; ``azure_account_url`` with
``azure_account_key``, ``azure_sas_token`` or any ``azure_credential`` object; else
``azure.identity.aio.DefaultAzureCredential`` when azure-identity is installed. One
container client per event loop, created on first use; nothing touches the network in the
constructor. The container is created on the first write that finds it missing (turn off
with ``azure_create_container=False``). Azure has no per-blob expiry and its lifecycle
policies are set on the storage account (Azure portal/CLI), not through the blob API, so
:meth:`AzureBlobBackend.install_lifecycle_rule` is not available: reads delete expired
blobs, and an account lifecycle rule on the ``azure_path`` prefix is the safety net.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, ClassVar
from urllib.parse import urlparse

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.storage.blob.aio import ContainerClient

from ..base import BaseCache
from ..bridge import LoopLocal
from ..config import split_settings
from ..exceptions import ConfigurationError
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
    "AzureBlobBackend", "AzureBlobCache",
]


def _error_code(exc: BaseException) -> str:
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


def _account_name(url: str) -> str | None:
    parsed = urlparse(url)
    host = parsed.hostname or ""
    if "." in host and not host.replace(".", "").isdigit():
        return host.split(".", 1)[0]
    segments = [s for s in parsed.path.split("/") if s]  # emulator style: host/account
    return segments[0] if segments else None


class AzureBlobBackend(BlobBackend):
    """An Azure Blob container as a cache store; blobs under ``azure_path``."""

    name: ClassVar[str] = "azure_blob"
    #: Azure metadata names must be C# identifiers (no hyphens).
    expiry_metadata: ClassVar[str] = "asynccache_expires_at"

    def __init__(
        self,
        azure_blob_container: str,
        azure_account_url: str | None = None,
        *,
        azure_connection_string: str | None = None,
        azure_account_key: str | None = None,
        azure_account_name: str | None = None,
        azure_sas_token: str | None = None,
        azure_credential: Any = None,
        azure_path: str | None = None,
        azure_api_version: str | None = None,
        azure_create_container: bool = True,
        azure_retry_total: int = 3,
        azure_ssl_ca_certs: str | os.PathLike[str] | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        list_page_size: int = DEFAULT_LIST_PAGE_SIZE,
    ) -> None:
        require_name(azure_blob_container, "azure_blob_container")
        if azure_connection_string is None and azure_account_url is None:
            raise ConfigurationError(
                "Azure Blob needs azure_connection_string or azure_account_url")
        if azure_connection_string is not None and azure_account_url is not None:
            raise ConfigurationError(
                "pass azure_connection_string or azure_account_url, not both")
        given = [n for n, v in (("azure_account_key", azure_account_key),
                                ("azure_sas_token", azure_sas_token),
                                ("azure_credential", azure_credential)) if v is not None]
        if len(given) > 1:
            raise ConfigurationError(f"pass only one of {', '.join(given)}")
        if azure_connection_string is not None and given:
            raise ConfigurationError(f"{given[0]} cannot be combined with azure_connection_string"
                                     " (the connection string holds the credential)")
        super().__init__(path=azure_path, path_setting="azure_path",
                         max_concurrency=max_concurrency, list_page_size=list_page_size)
        self.container = azure_blob_container
        self.account_url = azure_account_url
        self.api_version = azure_api_version
        self.create_container = bool(azure_create_container)
        self._connection_string = azure_connection_string
        self._credential: Any = azure_credential
        self._default_credential = False
        if azure_account_key is not None:
            assert azure_account_url is not None
            account = azure_account_name or _account_name(azure_account_url)
            if not account:
                raise ConfigurationError(
                    "cannot tell the account name from azure_account_url; pass azure_account_name")
            self._credential = {"account_name": account, "account_key": azure_account_key}
        elif azure_sas_token is not None:
            self._credential = azure_sas_token.lstrip("?")
        elif azure_connection_string is None and azure_credential is None:
            if importlib.util.find_spec("azure.identity") is None:
                raise ConfigurationError(
                    "Azure Blob with azure_account_url needs a credential: pass "
                    "azure_account_key, azure_sas_token or azure_credential, or install "
                    "azure-identity to use DefaultAzureCredential")
            self._default_credential = True
        self._client_options: dict[str, Any] = {"retry_total": azure_retry_total}
        if azure_ssl_ca_certs is not None:
            # A private CA (Azurite over HTTPS, a TLS proxy); verification stays on.
            self._client_options["connection_verify"] = os.fspath(azure_ssl_ca_certs)
        if azure_api_version is not None:
            self._client_options["api_version"] = azure_api_version
        self._clients: LoopLocal[tuple[ContainerClient, Any]] = LoopLocal(self._open, self._shut)

    # -- clients ------------------------------------------------------------------------

    async def _open(self) -> tuple[ContainerClient, Any]:
        owned_credential = None
        if self._connection_string is not None:
            client = ContainerClient.from_connection_string(
                self._connection_string, self.container, **self._client_options)
        else:
            credential = self._credential
            if self._default_credential:
                from azure.identity.aio import DefaultAzureCredential

                credential = owned_credential = DefaultAzureCredential()
            assert self.account_url is not None
            client = ContainerClient(self.account_url, self.container, credential=credential,
                                     **self._client_options)
        return client, owned_credential

    @staticmethod
    async def _shut(pair: tuple[ContainerClient, Any]) -> None:
        client, credential = pair
        await client.close()
        if credential is not None:
            await credential.close()

    async def _client(self) -> ContainerClient:
        return (await self._clients.get())[0]

    # -- primitives ---------------------------------------------------------------------

    async def _get_object(self, name: str) -> StoredObject | None:
        client = await self._client()
        try:
            downloader = await client.download_blob(name)
            data = await downloader.readall()
        except ResourceNotFoundError:
            return None
        properties = downloader.properties
        return StoredObject(bytes(data), dict(properties.metadata or {}), properties.etag)

    async def _head_object(self, name: str) -> ObjectHead | None:
        client = await self._client()
        try:
            properties = await client.get_blob_client(name).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return ObjectHead(dict(properties.metadata or {}), properties.etag)

    async def _put_object(self, name: str, data: bytes, metadata: dict[str, str]) -> None:
        client = await self._client()
        try:
            await client.upload_blob(name, data, overwrite=True, metadata=metadata)
        except ResourceNotFoundError as exc:
            if not self.create_container or _error_code(exc) != "ContainerNotFound":
                raise
            await self._ensure_container(client)
            await client.upload_blob(name, data, overwrite=True, metadata=metadata)

    async def _ensure_container(self, client: ContainerClient) -> None:
        try:
            await client.create_container()
        except ResourceExistsError:
            pass  # another writer created it first

    async def _delete_object(self, name: str, version: str | None = None) -> bool:
        client = await self._client()
        try:
            if version is None:
                await client.delete_blob(name)
            else:
                await client.delete_blob(name, etag=version,
                                         match_condition=MatchConditions.IfNotModified)
        except (ResourceNotFoundError, ResourceModifiedError):
            return False
        return True

    async def _list_page(self, prefix: str, token: str | None) -> tuple[list[str], str | None]:
        client = await self._client()
        pages: Any = client.list_blobs(name_starts_with=prefix,
                                  results_per_page=self.list_page_size).by_page(
                                      continuation_token=token)
        names: list[str] = []
        try:
            page = await pages.__anext__()
        except StopAsyncIteration:
            return names, None
        except ResourceNotFoundError as exc:
            if _error_code(exc) == "ContainerNotFound":
                return names, None  # nothing stored yet
            raise
        async for blob in page:
            names.append(blob.name)
        return names, pages.continuation_token or None

    async def _check_store(self) -> None:
        what = f"container {self.container!r}"
        try:
            client = await self._client()
            try:
                await client.get_container_properties()
            except ResourceNotFoundError:
                if not self.create_container:
                    raise
                await self._ensure_container(client)
        except ResourceNotFoundError as exc:
            raise connection_error(
                "Azure Blob", what, "does not exist (create it, or pass "
                "azure_create_container=True to create it on first use)", exc) from exc
        except ClientAuthenticationError as exc:
            raise connection_error(
                "Azure Blob", what, f"authentication failed ({_error_code(exc) or 'HTTP 403'}): "
                "check the account key, SAS token or credential", exc) from exc
        except HttpResponseError as exc:
            status = exc.status_code
            if status in (429, 503) or _error_code(exc) in {"ServerBusy", "OperationTimedOut"}:
                raise connection_error("Azure Blob", what, f"throttled (HTTP {status}): slow "
                                       "down or retry later", exc) from exc
            if status in (401, 403):
                raise connection_error(
                    "Azure Blob", what, f"access denied ({_error_code(exc) or status}): check "
                    "the account key, SAS token or credential and its permissions", exc) from exc
            raise connection_error("Azure Blob", what, f"error HTTP {status} "
                                   f"{_error_code(exc)}", exc) from exc
        except ServiceRequestError as exc:
            reason = "cannot reach the account endpoint"
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                reason += (" (its TLS certificate does not verify: CERTIFICATE_VERIFY_FAILED; "
                           "pass azure_ssl_ca_certs for a private CA)")
            raise connection_error("Azure Blob", what, reason, exc) from exc
        except AzureError as exc:
            raise connection_error("Azure Blob", what, "unusable", exc) from exc

    def describe(self) -> dict[str, Any]:
        if self._connection_string is not None:
            auth = "connection_string"
        elif self._default_credential:
            auth = "DefaultAzureCredential"
        elif isinstance(self._credential, dict):
            auth = "account_key"
        elif isinstance(self._credential, str):
            auth = "sas_token"
        else:
            auth = type(self._credential).__name__
        return {"container": self.container, "account_url": self.account_url, "auth": auth,
                "api_version": self.api_version, **super().describe()}


class AzureBlobCache(BaseCache):
    """Cache on Azure Blob Storage, native async, with real TTL.

    >>> cache = AzureBlobCache(
    ...     azure_blob_container="llm-cache",
    ...     azure_account_url="https://acct.blob.core.windows.net")  # doctest: +SKIP
    >>> await cache.async_get_cache("k")                            # doctest: +SKIP
    """

    def __init__(self, azure_blob_container: str, azure_account_url: str | None = None,
                 **settings: Any) -> None:
        backend, cache = split_settings("AzureBlobCache", settings, AzureBlobBackend)
        super().__init__(AzureBlobBackend(azure_blob_container, azure_account_url, **backend),
                         **cache)
