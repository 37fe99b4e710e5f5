"""Cache keys: a SHA-256 over the canonical request, and the stored-key format.

Pure functions, no I/O. This module is the one place that knows what a stored key looks
like (``<encoded namespace>:<key>``, see :func:`stored_key`); backends, the semantic
stores and the single-flight lease build and read stored keys only through it.

The key covers every argument that can change the answer (model, messages / input /
prompt, temperature, tools, response_format, seed, provider-specific parameters...) and
leaves out credentials, transport and telemetry settings (:data:`EXCLUDED_PARAMS`).
Keyword order and dict order never change it; ``temperature=1`` and ``temperature=1.0``
give the same key.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import orjson

from .exceptions import ConfigurationError

__all__ = [
    "EXCLUDED_PARAMS", "canonical_request", "encode_namespace", "group_model", "lease_key",
    "namespace_prefix", "request_key", "split_stored_key", "stored_key", "stored_key_prefix",
    "stored_key_prefixes",
    "validate_key",
]

KEY_FORMAT_VERSION = "1"
_VERSION_PREFIX = KEY_FORMAT_VERSION.encode()
_sha256 = hashlib.sha256

#: Arguments that never change the answer: credentials, endpoints, retries, timeouts,
#: streaming transport and telemetry. Streamed and non-streamed requests share an entry.
EXCLUDED_PARAMS: frozenset[str] = frozenset(
    {
        "api_key", "api_base", "base_url", "api_version", "organization", "project",
        "azure_ad_token", "azure_ad_token_provider", "aws_access_key_id",
        "aws_secret_access_key", "aws_session_token", "aws_region_name", "vertex_credentials",
        "vertex_project", "vertex_location", "timeout", "request_timeout", "max_retries",
        "num_retries", "metadata", "stream", "stream_options", "extra_headers", "headers",
        "client", "http_client", "user", "cache", "caching", "cache_key", "litellm_call_id",
        "litellm_logging_obj", "logger_fn", "proxy_server_request", "callbacks",
    }
)


def _canonical_default(obj: Any) -> Any:
    """orjson fallback for argument values that are not plain JSON."""
    if isinstance(obj, type) and hasattr(obj, "model_json_schema"):
        return {"__schema__": obj.model_json_schema()}  # response_format=MyPydanticModel
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json", exclude_none=True)
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, bytes | bytearray | memoryview):
        return {"__sha256__": hashlib.sha256(bytes(obj)).hexdigest()}
    if isinstance(obj, io.BytesIO):
        return {"__sha256__": hashlib.sha256(obj.getvalue()).hexdigest()}
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    name = getattr(obj, "name", None)
    if hasattr(obj, "read") and isinstance(name, str):
        # An open audio file for a transcription: identify it by path, size and mtime
        # rather than consuming the stream the upstream call still has to read.
        stat = os.stat(name)
        return {"__file__": name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    raise TypeError(
        f"cannot build a cache key from a {type(obj).__name__} argument; "
        "pass JSON-like values or a custom key function"
    )


#: Argument types that can never be an integral float (checked before the call).
_NOT_FLOATS = frozenset({str, int, bool, list, dict})
_CANONICAL_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
#: For requests with non-string dict keys (a ``logit_bias`` keyed by token id), which
#: orjson then writes as strings. Only on those: the option makes every dump 0.35 us
#: slower, and a dict of string keys comes out the same bytes either way.
_CANONICAL_OPTIONS_ANY_KEYS = _CANONICAL_OPTIONS | orjson.OPT_NON_STR_KEYS
_dumps = orjson.dumps


def _normalise_number(value: Any) -> Any:
    # Only within the integer range orjson can write: a huge integral float (1.8e19)
    # would otherwise become an int too large to serialise and break key building.
    if isinstance(value, float) and value.is_integer() and -(2**63) <= value < 2**64:
        return int(value)
    return value


def group_model(model: Any, caching_groups: Sequence[Iterable[str]] | None) -> Any:
    """The name a model is cached under: the first member of its caching group."""
    if not caching_groups or not isinstance(model, str):
        return model
    for group in caching_groups:
        members = list(group)
        if model in members:
            return members[0]
    return model


def canonical_request(
    call_kwargs: Mapping[str, Any],
    *,
    caching_groups: Sequence[Iterable[str]] | None = None,
    excluded: frozenset[str] = EXCLUDED_PARAMS,
) -> bytes:
    """The canonical JSON bytes of a request: sorted, without excluded parameters."""
    canonical = {
        name: value if type(value) in _NOT_FLOATS else _normalise_number(value)
        for name, value in call_kwargs.items()
        if name not in excluded and value is not None
    }
    if caching_groups and "model" in canonical:
        canonical["model"] = group_model(canonical["model"], caching_groups)
    try:
        try:
            return _dumps(canonical, default=_canonical_default, option=_CANONICAL_OPTIONS)
        except TypeError:
            return _dumps(canonical, default=_canonical_default,
                          option=_CANONICAL_OPTIONS_ANY_KEYS)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise ConfigurationError(f"cannot build a cache key for this request: {exc}") from exc


def request_key(
    call_kwargs: Mapping[str, Any],
    *,
    caching_groups: Sequence[Iterable[str]] | None = None,
    excluded: frozenset[str] = EXCLUDED_PARAMS,
) -> str:
    """SHA-256 hex digest of :func:`canonical_request`.

    >>> request_key({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}) == \\
    ...     request_key({"messages": [{"content": "hi", "role": "user"}], "model": "gpt-4o"})
    True
    """
    canonical = canonical_request(call_kwargs, caching_groups=caching_groups, excluded=excluded)
    return _sha256(_VERSION_PREFIX + canonical).hexdigest()


def validate_key(key: object) -> str:
    """Check a user-supplied key; raise ``ConfigurationError`` naming the problem."""
    if type(key) is str and key.isascii() and key:
        return key  # every hex digest and most keys: nothing to check further
    if not isinstance(key, str):
        raise ConfigurationError(f"cache key must be a str, got {type(key).__name__}: {key!r:.80}")
    if not key:
        raise ConfigurationError("cache key must not be empty")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigurationError(
            f"cache key {key[:80]!r} is not valid UTF-8 text (it holds lone surrogates)"
        ) from exc
    return key


def encode_namespace(namespace: str) -> str:
    """Namespace as it appears in stored keys: percent-encoded, so it holds no ``:``.

    Because an encoded namespace never contains the ``:`` separator, the prefix
    ``"a:"`` can never match entries of namespace ``"a:b"``: clearing one namespace leaves
    every other one intact, and glob characters cannot widen a Redis ``SCAN`` pattern.
    """
    if not isinstance(namespace, str) or not namespace:
        raise ConfigurationError(f"namespace must be a non-empty str, got {namespace!r:.80}")
    return quote(namespace, safe="", errors="surrogatepass")


@functools.lru_cache(maxsize=4096)
def namespace_prefix(namespace: str | None) -> str:
    """The stored-key prefix of a namespace (empty for no namespace)."""
    return "" if namespace is None else encode_namespace(namespace) + ":"


#: What separates the encoded namespace from the key in a stored key.
SEPARATOR = ":"
_LEASE_MARK = "asynccache-lease:"


def stored_key(key: str, namespace: str | None) -> str:
    """The key a backend stores ``key`` of ``namespace`` under.

    A namespaced stored key is ``"<encoded namespace>:<key>"`` and an encoded namespace is
    never empty and holds no ``:``. A namespace-less key that holds a colon (``"a:b"``)
    gets a leading ``":"``, so it can never meet key ``"b"`` of namespace ``"a"``.

    >>> stored_key("b", "a"), stored_key("a:b", None), stored_key("b", None)
    ('a:b', ':a:b', 'b')
    """
    if namespace is None and type(key) is str and key.isascii() and key:
        # validate_key's fast case inlined: a hex digest stored as it is (the hot path).
        return SEPARATOR + key if SEPARATOR in key else key
    key = validate_key(key)
    if namespace is None:
        return SEPARATOR + key if SEPARATOR in key else key
    return namespace_prefix(namespace) + key


def split_stored_key(stored: str) -> tuple[str | None, str]:
    """``(encoded namespace or None, key)`` of a stored key or stored-key prefix.

    The inverse of :func:`stored_key`; a namespace prefix ``"ns:"`` gives ``("ns", "")``.

    >>> split_stored_key("a:b"), split_stored_key(":a:b"), split_stored_key("b")
    (('a', 'b'), (None, 'a:b'), (None, 'b'))
    """
    head, colon, rest = stored.partition(SEPARATOR)
    if not colon or not head:
        return None, rest if colon else stored
    return head, rest


def lease_key(key: str, namespace: str | None) -> str:
    """The stored key of the single-flight lease that guards ``key`` of ``namespace``."""
    return stored_key(_LEASE_MARK + validate_key(key), namespace)


def stored_key_prefix(stored_key: str) -> str:
    """The namespace prefix a stored key starts with (``""`` when it has no namespace).

    The prefix half of :func:`split_stored_key`, kept fast for batches. A key starts with
    a namespace prefix exactly when this is that prefix, so a store can clear a namespace
    with an exact-match filter on it.

    >>> stored_key_prefix("prod:abc"), stored_key_prefix(":a:b"), stored_key_prefix("abc")
    ('prod:', '', '')
    """
    end = stored_key.find(":")
    return stored_key[: end + 1] if end > 0 else ""


def stored_key_prefixes(stored_keys: Iterable[str]) -> list[str]:
    """:func:`stored_key_prefix` of every key of a batch (one call per batch, not per key)."""
    prefixes = []
    for stored_key in stored_keys:
        end = stored_key.find(":")
        prefixes.append(stored_key[: end + 1] if end > 0 else "")
    return prefixes
