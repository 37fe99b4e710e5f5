"""Amazon S3 (and S3-compatible stores) on aiobotocore: native async, real TTL.

One aiobotocore client per event loop, created on first use and closed by ``aclose()``.
Settings use LiteLLM's names (``s3_bucket_name``, ``s3_path``, ``s3_endpoint_url``...), so
an existing ``cache_params`` dict works unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, ClassVar

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
)

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
    "S3Backend", "S3Cache",
]

_MISSING = {"NoSuchKey", "404", "NotFound"}
_NO_BUCKET = {"NoSuchBucket"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
           "InvalidToken", "ExpiredToken", "AllAccessDisabled", "InvalidClientTokenId"}
_THROTTLED = {"SlowDown", "503", "Throttling", "ThrottlingException", "RequestLimitExceeded",
              "TooManyRequestsException", "RequestThrottled"}
_PRECONDITION = {"PreconditionFailed", "412"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _no_expect_continue(request: Any, **_: Any) -> None:
    # botocore asks for "Expect: 100-continue" on every upload, which costs a full round
    # trip before the body is sent; cache entries are small, so send them at once. The
    # header is not signed, so dropping it here is safe.
    if "Expect" in request.headers:
        del request.headers["Expect"]


class S3Backend(BlobBackend):
    """S3 bucket as a cache store; objects under ``s3_path``.

    ``s3_config`` is a dict of botocore ``Config`` options (or a ``Config``); asynccache
    sets ``max_pool_connections`` to ``max_concurrency`` and retries to 3 attempts in
    total (standard mode) unless you override them.
    """

    name: ClassVar[str] = "s3"

    def __init__(
        self,
        s3_bucket_name: str,
        s3_region_name: str | None = None,
        s3_api_version: str | None = None,
        s3_path: str | None = None,
        s3_use_ssl: bool = True,
        s3_verify: bool | str | None = None,
        s3_endpoint_url: str | None = None,
        s3_aws_access_key_id: str | None = None,
        s3_aws_secret_access_key: str | None = None,
        s3_aws_session_token: str | None = None,
        s3_config: Any = None,
        *,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        list_page_size: int = DEFAULT_LIST_PAGE_SIZE,
    ) -> None:
        require_name(s3_bucket_name, "s3_bucket_name")
        super().__init__(path=s3_path, path_setting="s3_path", max_concurrency=max_concurrency,
                         list_page_size=min(list_page_size, 1000))
        self.bucket = s3_bucket_name
        self.region = s3_region_name
        self.endpoint_url = s3_endpoint_url
        options: dict[str, Any] = {
            "max_pool_connections": self.max_concurrency,
            "retries": {"total_max_attempts": 3, "mode": "standard"},
            "connect_timeout": 5,
            "read_timeout": 30,
        }
        if "request_checksum_calculation" in Config.OPTION_DEFAULTS:
            # botocore >= 1.36 sends CRC checksums on every call by default, which costs
            # CPU per object and is rejected by several S3-compatible stores; cache
            # entries are small and their envelope is checked on every read.
            options["request_checksum_calculation"] = "when_required"
            options["response_checksum_validation"] = "when_required"
        user: Any = s3_config
        if s3_config is not None and not isinstance(s3_config, dict):
            user = getattr(s3_config, "_user_provided_options", None)
            if not isinstance(user, dict):
                raise ConfigurationError(
                    f"s3_config must be a dict of botocore Config options or a Config, "
                    f"got {type(s3_config).__name__}")
        if user:
            retries = user.get("retries")
            options.update(user)
            if isinstance(retries, dict):
                # {"max_attempts": 1} alone keeps the standard mode (with its short,
                # jittered backoff) instead of silently switching to legacy mode.
                options["retries"] = {"mode": "standard", **retries}
        try:
            config = AioConfig(**options)
        except (TypeError, BotoCoreError) as exc:
            raise ConfigurationError(f"s3_config is not a valid botocore Config: {exc}") from exc
        self._client_args: dict[str, Any] = {
            "region_name": s3_region_name,
            "api_version": s3_api_version,
            "use_ssl": s3_use_ssl,
            "verify": s3_verify,
            "endpoint_url": s3_endpoint_url,
            "aws_access_key_id": s3_aws_access_key_id,
            "aws_secret_access_key": s3_aws_secret_access_key,
            "aws_session_token": s3_aws_session_token,
            "config": config,
        }
        self._clients: LoopLocal[tuple[Any, Any]] = LoopLocal(self._open, self._shut)

    # -- clients ------------------------------------------------------------------------

    async def _open(self) -> tuple[Any, Any]:
        context = get_session().create_client("s3", **self._client_args)
        client = await context.__aenter__()
        client.meta.events.register("before-send.s3.PutObject", _no_expect_continue)
        return context, client

    @staticmethod
    async def _shut(pair: tuple[Any, Any]) -> None:
        await pair[0].__aexit__(None, None, None)

    async def _client(self) -> Any:
        return (await self._clients.get())[1]

    # -- primitives ---------------------------------------------------------------------

    async def _get_object(self, name: str) -> StoredObject | None:
        client = await self._client()
        try:
            response = await client.get_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise
        async with response["Body"] as body:
            data = await body.read()
        return StoredObject(data, response.get("Metadata") or {}, response.get("ETag"))

    async def _head_object(self, name: str) -> ObjectHead | None:
        client = await self._client()
        try:
            response = await client.head_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise
        return ObjectHead(response.get("Metadata") or {}, response.get("ETag"))

    async def _put_object(self, name: str, data: bytes, metadata: dict[str, str]) -> None:
        client = await self._client()
        await client.put_object(Bucket=self.bucket, Key=name, Body=data, Metadata=metadata,
                                ContentType="application/json")

    async def _delete_object(self, name: str, version: str | None = None) -> bool:
        client = await self._client()
        if version is None:
            # S3 answers 204 whether or not the object existed; a HEAD tells which.
            if await self._head_object(name) is None:
                return False
            await client.delete_object(Bucket=self.bucket, Key=name)
            return True
        try:
            await client.delete_object(Bucket=self.bucket, Key=name, IfMatch=version)
        except ParamValidationError:
            # botocore too old for conditional deletes: compare the ETag first instead.
            head = await self._head_object(name)
            if head is None or head.version != version:
                return False
            await client.delete_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _code(exc) in _PRECONDITION | _MISSING:
                return False  # rewritten (or gone) since we read it: leave it
            raise
        return True

    async def _delete_listed(self, names: Sequence[str]) -> int:
        client = await self._client()
        deleted = 0
        for start in range(0, len(names), 1000):
            chunk = names[start : start + 1000]
            response = await client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": name} for name in chunk], "Quiet": True},
            )
            deleted += len(chunk) - len(response.get("Errors") or [])
        return deleted

    async def _list_page(self, prefix: str, token: str | None) -> tuple[list[str], str | None]:
        client = await self._client()
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix,
                                "MaxKeys": self.list_page_size}
        if token:
            args["ContinuationToken"] = token
        response = await client.list_objects_v2(**args)
        names = [item["Key"] for item in response.get("Contents") or []]
        next_token = response.get("NextContinuationToken") if response.get("IsTruncated") else None
        return names, next_token

    async def _check_store(self) -> None:
        what = f"bucket {self.bucket!r}"
        try:
            client = await self._client()
            await client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = _code(exc)
            if code in _NO_BUCKET or code in {"404", "NotFound"}:
                raise connection_error("S3", what, "does not exist (create it first)", exc) from exc
            if code in _DENIED:
                raise connection_error(
                    "S3", what, f"access denied ({code}): check the credentials and the "
                    "bucket policy", exc) from exc
            if code in _THROTTLED or _status(exc) == 429:
                raise connection_error("S3", what, f"throttled ({code}): slow down or retry "
                                       "later", exc) from exc
            raise connection_error("S3", what, f"error {code or _status(exc)}", exc) from exc
        except NoCredentialsError as exc:
            raise connection_error("S3", what, "no AWS credentials found (pass "
                                   "s3_aws_access_key_id/s3_aws_secret_access_key or configure "
                                   "the AWS environment)", exc) from exc
        except EndpointConnectionError as exc:
            raise connection_error("S3", what, f"cannot reach the endpoint "
                                   f"{self.endpoint_url or 'of ' + str(self.region)}",
                                   exc) from exc
        except CacheConnectionError:
            raise
        except (BotoCoreError, OSError) as exc:
            raise connection_error("S3", what, f"unusable: {exc}", exc) from exc

    async def install_lifecycle_rule(self, days: int) -> None:
        """Add (or update) an S3 lifecycle rule expiring objects under the path after ``days``.

        Other rules on the bucket are kept; the rule is named ``asynccache-<hash of path>``.
        """
        if isinstance(days, bool) or not isinstance(days, int) or days <= 0:
            raise ConfigurationError(f"days must be a positive int, got {days!r}")
        client = await self._client()
        rule_id = "asynccache-" + hashlib.sha256(self.path.encode()).hexdigest()[:16]
        try:
            current = await client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
            rules = [r for r in current.get("Rules", []) if r.get("ID") != rule_id]
        except ClientError as exc:
            if _code(exc) != "NoSuchLifecycleConfiguration":
                raise
            rules = []
        rules.append({"ID": rule_id, "Filter": {"Prefix": self.path}, "Status": "Enabled",
                      "Expiration": {"Days": days}})
        await client.put_bucket_lifecycle_configuration(
            Bucket=self.bucket, LifecycleConfiguration={"Rules": rules})

    def describe(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "region": self.region, "endpoint_url": self.endpoint_url,
                **super().describe()}


class S3Cache(BaseCache):
    """Cache on S3 or an S3-compatible store, native async, with real TTL.

    >>> cache = S3Cache(s3_bucket_name="llm-cache", s3_path="cache/", ttl=86400)  # doctest: +SKIP
    >>> await cache.async_set_cache("k", {"answer": 42})                           # doctest: +SKIP
    """

    def __init__(self, s3_bucket_name: str, **settings: Any) -> None:
        backend, cache = split_settings("S3Cache", settings, S3Backend)
        super().__init__(S3Backend(s3_bucket_name, **backend), **cache)
