"""Requests kept alongside answers, and why a request missed.

A cache normally stores answers under a SHA-256 of the request, so a miss says nothing
about *why* it missed. When requests are stored too (always in cassettes, opt-in with
``Cache(record_requests=True)`` elsewhere), a miss can be explained: the nearest recorded
request and exactly which fields differ (the model, one message's text, a parameter).

What is recorded is the request as the key sees it (:func:`~asynccache.keys.canonical_request`:
credentials, endpoints and transport settings already left out), then scrubbed of
anything that looks like a secret (:func:`scrub`), so recorded requests can be committed.

>>> old = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi there"}]}
>>> new = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi there!"}]}
>>> [d.path for d in request_differences(old, new)]
['messages[0].content', 'model']
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import re
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import orjson

from .config import NOT_GIVEN, NotGiven
from .exceptions import CacheError, ConfigurationError, ReplayMissError
from .keys import EXCLUDED_PARAMS, canonical_request

__all__ = [
    "ABSENT", "MASK", "SECRET_FIELDS", "Difference", "MissExplanation", "RecordedRequest",
    "RequestLog", "RequestStore", "check_replay_miss", "explain", "nearest_request",
    "recordable_request", "remember_requests", "request_differences", "request_store", "scrub",
    "scrub_text",
]

logger = logging.getLogger("asynccache.recording")


class RecordingCache(Protocol):
    """What request recording uses of a cache (every :class:`~asynccache.BaseCache` has it).

    Declared here rather than imported, so this module stays below the cache template.
    """

    namespace: str | None
    backend: Any
    request_store: Any

    def _stored_key(self, key: str, namespace: str | None) -> str: ...

    def get_cache_key(self, *args: Any, **call_kwargs: Any) -> str: ...

    async def async_get_cache(self, key: str, *, namespace: Any = ...,
                              max_age: float | None = ...) -> Any: ...

    async def async_set_cache(self, key: str, value: Any, *, ttl: Any = ...,
                              namespace: Any = ...) -> bool: ...

    async def async_get_entry(self, key: str, *, namespace: Any = ...,
                              max_age: float | None = ...) -> Any: ...

#: Shown instead of a secret.
MASK = "***"

#: Field names whose values are never written, wherever they appear (lower-cased,
#: ``-`` read as ``_``). Names match exactly: ``usage.prompt_tokens`` and a logprob's
#: ``token`` are answers, not secrets.
SECRET_FIELDS = frozenset({
    "api_key", "apikey", "x_api_key", "api_token", "authorization", "proxy_authorization",
    "access_token", "refresh_token", "id_token", "auth_token", "bearer_token",
    "password", "passwd", "secret", "client_secret", "aws_access_key_id",
    "aws_secret_access_key", "aws_session_token", "azure_ad_token", "cookie", "set_cookie",
    "x_goog_api_key", "openai_api_key", "anthropic_api_key", "private_key",
})

_SECRET_TEXT = [
    # Provider keys: OpenAI (sk-..., sk-proj-...), Anthropic (sk-ant-...), Google (AIza...),
    # GitHub, Slack, AWS access key ids, Hugging Face.
    re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-]{16,}"),
    re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"),
    re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"\bhf_[A-Za-z0-9]{30,}"),
]
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}")
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/@\s:]*:[^@/\s]+@")
_URL_TOKEN = re.compile(
    r"(?i)(?P<name>[?&;](?:api[_-]?key|key|access[_-]?token|token|auth|sig|signature|"
    r"x-amz-signature|x-amz-security-token|x-goog-signature|code|client_secret|password|"
    r"sas|se|sp|sv)=)[^&#\s\"']+"
)


def scrub_text(text: str) -> str:
    """``text`` with provider keys, bearer tokens and URL credentials replaced by ``***``.

    >>> scrub_text("GET https://api.example.com/v1?key=abc123&q=1 with sk-proj-0123456789abcdefXYZ")
    'GET https://api.example.com/v1?key=***&q=1 with ***'
    """
    for pattern in _SECRET_TEXT:
        text = pattern.sub(MASK, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)
    text = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    return _URL_TOKEN.sub(lambda m: m.group("name") + MASK, text)


def _is_secret_field(name: object) -> bool:
    return isinstance(name, str) and name.lower().replace("-", "_") in SECRET_FIELDS


def scrub(value: Any) -> Any:
    """A copy of ``value`` with secret fields masked and secret-looking text replaced.

    Used on everything a cassette or a request log writes: requests and answers alike.
    """
    if isinstance(value, Mapping):
        return {key: (MASK if _is_secret_field(key) and item not in (None, "") else scrub(item))
                for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    if isinstance(value, str):
        return scrub_text(value)
    return value


def recordable_request(call_kwargs: Mapping[str, Any], *,
                       excluded: frozenset[str] = EXCLUDED_PARAMS) -> dict[str, Any]:
    """The request as it is recorded: canonical (what the key covers), then scrubbed."""
    canonical = orjson.loads(canonical_request(call_kwargs, excluded=excluded))
    scrubbed: dict[str, Any] = scrub(canonical)
    return scrubbed


# -- differences ----------------------------------------------------------------------


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


#: A field one of the two requests does not have.
ABSENT: Any = _Missing()


def _flatten(value: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for key in sorted(value, key=str):
            _flatten(value[key], f"{path}.{key}" if path else str(key), out)
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            _flatten(item, f"{path}[{index}]", out)
    else:
        out[path] = value


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Difference:
    """One field that differs between a recorded request and the one asked for."""

    path: str
    recorded: Any
    requested: Any

    def describe(self) -> str:
        """One or two lines: the field, both values and, for texts, where they part."""
        line = (f"{self.path}: recorded {_short(self.recorded)}, "
                f"requested {_short(self.requested)}")
        if (isinstance(self.recorded, str) and isinstance(self.requested, str)
                and max(len(self.recorded), len(self.requested)) > 40):
            old, new = self.recorded, self.requested
            at = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b),
                      min(len(old), len(new)))
            start = max(0, at - 20)
            line += (f"\n      first difference at character {at}: "
                     f"{old[start:at + 30]!r} vs {new[start:at + 30]!r}")
        return line


def request_differences(recorded: Mapping[str, Any],
                        requested: Mapping[str, Any]) -> list[Difference]:
    """Every leaf field that differs, by path (``messages[1].content``), sorted by path."""
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    _flatten(recorded, "", old)
    _flatten(requested, "", new)
    found = []
    for path in sorted(old.keys() | new.keys()):
        a, b = old.get(path, ABSENT), new.get(path, ABSENT)
        if a is ABSENT or b is ABSENT or a != b or type(a) is not type(b):
            found.append(Difference(path, a, b))
    return found


@dataclass(frozen=True)
class RecordedRequest:
    """A stored request: its key (as stored, with namespace prefix) and its fields."""

    key: str
    request: Mapping[str, Any]


@dataclass(frozen=True)
class MissExplanation:
    """Why a request has no stored answer: the nearest recorded request and the differences.

    ``str()`` gives the text a failing test or ``asynccache explain`` prints.
    """

    key: str
    request: Mapping[str, Any]
    found: bool
    recorded: int
    nearest: RecordedRequest | None = None
    differences: Sequence[Difference] = field(default_factory=tuple)
    source: str = "the cache"
    hint: str = ""

    def __str__(self) -> str:
        if self.found:
            return f"request {self.key[:16]}... has a stored answer in {self.source}"
        lines = [f"no recorded answer for this request in {self.source}; "
                 f"{self.recorded} recorded request{'s' if self.recorded != 1 else ''}"]
        model = self.request.get("model")
        if model is not None:
            lines[0] += f"; requested model {model!r}"
        if self.nearest is None:
            lines.append("nothing recorded to compare with")
        elif not self.differences:
            lines.append(f"nearest recorded request {self.nearest.key[-16:]} has the same "
                         "fields: it was stored under another namespace or key function")
        else:
            count = len(self.differences)
            lines.append(f"nearest recorded request (key ...{self.nearest.key[-12:]}) differs "
                         f"in {count} field{'s' if count != 1 else ''}:")
            lines += [f"  - {d.describe()}" for d in self.differences[:12]]
            if count > 12:
                lines.append(f"  ... and {count - 12} more")
        if self.hint:
            lines.append(self.hint)
        return "\n".join(lines)


def _closeness(recorded: Mapping[str, Any], requested: Mapping[str, Any],
               differences: Sequence[Difference]) -> tuple[int, float]:
    text_a = orjson.dumps(recorded, option=orjson.OPT_SORT_KEYS).decode()
    text_b = orjson.dumps(requested, option=orjson.OPT_SORT_KEYS).decode()
    return len(differences), -difflib.SequenceMatcher(None, text_a, text_b).quick_ratio()


def nearest_request(request: Mapping[str, Any], candidates: Iterable[RecordedRequest]
                    ) -> tuple[RecordedRequest | None, list[Difference]]:
    """The recorded request with the fewest differing fields (then the most similar text)."""
    best: tuple[tuple[int, float], RecordedRequest, list[Difference]] | None = None
    for candidate in candidates:
        differences = request_differences(candidate.request, request)
        score = _closeness(candidate.request, request, differences)
        if best is None or score < best[0]:
            best = (score, candidate, differences)
    if best is None:
        return None, []
    return best[1], best[2]


# -- where requests are stored --------------------------------------------------------


@runtime_checkable
class RequestStore(Protocol):
    """Keeps requests next to answers (cassettes, or :class:`RequestLog` on any backend).

    ``replay_only``: a miss must not reach upstream (it raises :class:`ReplayMissError`).
    ``description``: where the requests live, for explanations.
    """

    replay_only: bool
    description: str

    async def record_requests(self, namespace: str | None,
                              items: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Remember each ``(stored key, recordable request)`` of ``namespace``."""

    async def recorded_requests(self, namespace: str | None) -> list[RecordedRequest]:
        """The requests recorded in ``namespace``."""


class RequestLog:
    """Requests stored in the cache itself, for backends that are not cassettes.

    Each namespace keeps its ``limit`` most recent requests in one entry
    (``asynccache-request-log``), rewritten on every store. Writers in one process are
    serialised; two processes storing at the same moment can drop one request from the
    log (never an answer): explanations are best effort, answers are not.
    """

    ENTRY = "asynccache-request-log"
    replay_only = False

    def __init__(self, cache: RecordingCache, limit: int = 256) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise ConfigurationError(
                f"record_requests must be True, False or a positive int, got {limit!r}")
        self._cache = weakref.ref(cache)
        self.limit = limit
        self.description = f"the request log of the {cache.backend.name!r} cache"
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary())

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        return lock

    def _owner(self) -> RecordingCache:
        cache = self._cache()
        if cache is None:
            raise CacheError("the cache of this request log was garbage-collected")
        return cache

    async def _read(self, namespace: str | None) -> list[list[Any]]:
        stored = await self._owner().async_get_cache(self.ENTRY, namespace=namespace)
        entries = stored.get("requests") if isinstance(stored, dict) else None
        return [item for item in entries or [] if isinstance(item, list) and len(item) == 2]

    async def record_requests(self, namespace: str | None,
                              items: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        keys = {key for key, _ in items}
        async with self._lock():
            kept = [item for item in await self._read(namespace) if item[0] not in keys]
            kept += [[key, dict(request)] for key, request in items]
            await self._owner().async_set_cache(
                self.ENTRY, {"requests": kept[-self.limit:]}, ttl=None, namespace=namespace)

    async def recorded_requests(self, namespace: str | None) -> list[RecordedRequest]:
        return [RecordedRequest(key, request) for key, request in await self._read(namespace)
                if isinstance(request, dict)]


def request_store(cache: Any) -> RequestStore | None:
    """The :class:`RequestStore` of ``cache``, or ``None`` when requests are not stored."""
    store = getattr(cache, "request_store", None)
    return store if isinstance(store, RequestStore) else None


def _resolve(cache: RecordingCache, namespace: str | NotGiven | None) -> str | None:
    return cache.namespace if namespace is NOT_GIVEN else namespace


async def remember_requests(cache: RecordingCache,
                            items: Sequence[tuple[str, Mapping[str, Any]]],
                            namespace: str | NotGiven | None = NOT_GIVEN) -> None:
    """Store each ``(key, call kwargs)`` request next to its answer, when the cache keeps them.

    Never raises: a request that cannot be recorded costs an explanation, not the call.
    """
    store = request_store(cache)
    if store is None or not items:
        return
    try:
        ns = _resolve(cache, namespace)
        excluded = getattr(cache, "excluded_params", EXCLUDED_PARAMS)
        records = [(cache._stored_key(key, ns), recordable_request(kwargs, excluded=excluded))
                   for key, kwargs in items]
        await store.record_requests(ns, records)
    except Exception:
        logger.warning("asynccache: recording a request failed (the answer is stored)",
                       exc_info=True)


async def explain(cache: RecordingCache, call_kwargs: Mapping[str, Any], *, key: str | None = None,
                  namespace: str | NotGiven | None = NOT_GIVEN) -> MissExplanation:
    """Explain why ``call_kwargs`` does or does not have an answer in ``cache``."""
    store = request_store(cache)
    ns = _resolve(cache, namespace)
    if key is None:
        key = cache.get_cache_key(**call_kwargs)
    excluded = getattr(cache, "excluded_params", EXCLUDED_PARAMS)
    request = recordable_request(call_kwargs, excluded=excluded)
    if store is None:
        raise ConfigurationError(
            "this cache does not store requests, so it cannot explain a miss: create it with "
            "Cache(..., record_requests=True) or use a cassette (Cache(type='cassette'))")
    found = await cache.async_get_entry(key, namespace=ns) is not None
    candidates = await store.recorded_requests(ns)
    stored_key = cache._stored_key(key, ns)
    candidates = [c for c in candidates if c.key != stored_key]
    nearest, differences = (None, []) if found else nearest_request(request, candidates)
    return MissExplanation(key=key, request=request, found=found, recorded=len(candidates),
                           nearest=nearest, differences=differences,
                           source=store.description)


async def check_replay_miss(cache: RecordingCache, call_kwargs: Mapping[str, Any] | None, key: str,
                            namespace: str | NotGiven | None = NOT_GIVEN) -> None:
    """After a miss: raise :class:`ReplayMissError` when the cache must not go upstream."""
    store = request_store(cache)
    if store is None or not store.replay_only:
        return
    if call_kwargs is None:
        candidates = await store.recorded_requests(_resolve(cache, namespace))
        explanation = MissExplanation(key=key, request={}, found=False,
                                      recorded=len(candidates), source=store.description,
                                      hint=_replay_hint())
    else:
        explanation = await explain(cache, call_kwargs, key=key, namespace=namespace)
        explanation = MissExplanation(**{**explanation.__dict__, "hint": _replay_hint()})
    raise ReplayMissError(explanation)


def _replay_hint() -> str:
    return ("to record it: pytest --llm-cache-mode=new_episodes (keeps the other recordings) "
            "or --llm-cache-mode=record (records the cassette again); outside pytest, "
            "record_mode='new_episodes'")
