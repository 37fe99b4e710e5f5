"""How LLM responses are stored and rebuilt, and how a result says it came from the cache.

Stored entries are plain JSON so every backend can hold them::

    {"asynccache": 1, "kind": "response", "type": "openai.types.chat...:ChatCompletion",
     "data": {...model_dump...}}

``type`` is the import path of the pydantic class the upstream call returned (``None`` for
a dict). On a hit the class is rebuilt with ``model_validate`` only if its module is
already imported and it is a pydantic model: cache contents never make asynccache import
code. Otherwise the wrapper falls back to the type it saw returned earlier, then to a dict.

Hit metadata (:class:`CacheInfo`) never changes what a response serialises to: pydantic
results carry it in a side table read by :func:`cache_info` (and in ``_hidden_params``
when the class has one, as LiteLLM's responses do); dict results come back as
:class:`CachedDict`, a ``dict`` subclass with a ``cache_info`` attribute and no extra keys.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "STORE_VERSION", "CacheInfo", "CachedDict", "attach_info", "cache_info", "from_payload",
    "is_empty", "is_pydantic", "is_pydantic_class", "rebuild", "resolve_type", "to_data",
    "to_payload", "type_path",
]

STORE_VERSION = 1
#: Payload field: seconds the upstream call took when the answer was stored (what a
#: hit saves in time).
UPSTREAM_SECONDS = "upstream_seconds"


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """Where a wrapped call's result came from.

    * ``cache_hit``: answered from the cache (for embeddings: every input was cached);
    * ``cache_key``: the request key (without namespace prefix);
    * ``age``: seconds since the entry was stored (hits only);
    * ``backend``: the backend's short name;
    * ``similarity``: cosine similarity of a semantic hit (``None`` for exact hits);
    * ``coalesced``: the call waited for an identical in-flight call (single-flight)
      instead of calling upstream itself;
    * ``items_hit`` / ``items_total``: embeddings only, how many inputs were cached.
    """

    cache_hit: bool
    cache_key: str | None
    age: float | None = None
    backend: str | None = None
    similarity: float | None = None
    coalesced: bool = False
    items_hit: int | None = None
    items_total: int | None = None


class CachedDict(dict[str, Any]):
    """A dict result served by asynccache: equal to and serialised as the plain dict."""

    cache_info: CacheInfo | None = None


_lock = threading.Lock()
_side_table: dict[int, tuple[weakref.ref[Any], CacheInfo]] = {}


def _forget(ident: int) -> Any:
    def callback(_ref: weakref.ref[Any]) -> None:
        with _lock:
            entry = _side_table.get(ident)
            if entry is not None and entry[0] is _ref:
                del _side_table[ident]

    return callback


def attach_info(result: Any, info: CacheInfo) -> Any:
    """Attach ``info`` to ``result`` without changing its content; return the result to use."""
    if type(result) is dict:
        result = CachedDict(result)
    if isinstance(result, CachedDict):
        result.cache_info = info
        return result
    hidden = getattr(result, "_hidden_params", None)
    if isinstance(hidden, dict):
        try:
            # A fresh dict: some classes share one default dict between instances.
            result._hidden_params = {**hidden, "cache_hit": info.cache_hit,
                                     "cache_key": info.cache_key,
                                     "asynccache": dataclasses.asdict(info)}
        except Exception:
            pass  # metadata is best effort: the side table below still has it
    try:
        ref = weakref.ref(result, _forget(id(result)))
    except TypeError:
        return result  # not weak-referenceable (ints, tuples...): no metadata
    with _lock:
        _side_table[id(result)] = (ref, info)
    return result


def cache_info(result: Any) -> CacheInfo | None:
    """The :class:`CacheInfo` of a result returned by a ``cached`` wrapper, or ``None``.

    >>> resp = await acompletion(model="gpt-4o", messages=msgs)   # doctest: +SKIP
    >>> cache_info(resp).cache_hit                                 # doctest: +SKIP
    True
    """
    direct = getattr(result, "cache_info", None)
    if isinstance(direct, CacheInfo):
        return direct
    with _lock:
        entry = _side_table.get(id(result))
    if entry is not None and entry[0]() is result:
        return entry[1]
    return None


# -- (de)serialising responses ------------------------------------------------------------

def type_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_type(path: object) -> type | None:
    """The pydantic class named by ``path`` if its module is already loaded, else None."""
    if not isinstance(path, str) or ":" not in path:
        return None
    module_name, _, qualname = path.partition(":")
    module = sys.modules.get(module_name)
    if module is None:
        return None
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, type) and is_pydantic_class(obj) else None


def is_pydantic_class(cls: type) -> bool:
    return hasattr(cls, "model_validate") and hasattr(cls, "model_fields")


def is_pydantic(value: Any) -> bool:
    return hasattr(value, "model_dump") and is_pydantic_class(type(value))


def to_data(value: Any) -> Any:
    """A JSON-ready copy of a response (pydantic models are dumped)."""
    if is_pydantic(value):
        return value.model_dump(mode="json", exclude_unset=True)
    return value


def to_payload(value: Any, kind: str = "response") -> dict[str, Any]:
    """The stored form of a response."""
    cls = type(value)
    return {
        "asynccache": STORE_VERSION,
        "kind": kind,
        "type": type_path(cls) if is_pydantic(value) else None,
        "data": to_data(value),
    }


def from_payload(stored: Any, kind: str = "response") -> dict[str, Any] | None:
    """The stored payload if it is one of ours of ``kind``, else ``None`` (a miss)."""
    if (isinstance(stored, Mapping) and stored.get("asynccache") == STORE_VERSION
            and stored.get("kind") == kind and "data" in stored):
        return dict(stored)
    return None


def rebuild(data: Any, cls: type | None) -> Any:
    """``data`` as an instance of ``cls`` (a pydantic class) or as a plain copy."""
    if cls is not None:
        try:
            return cls.model_validate(data)  # type: ignore[attr-defined]
        except Exception:
            return _copy(data)
    return _copy(data)


def _copy(data: Any) -> Any:
    # Each caller gets its own object, so mutating one result never changes another.
    if isinstance(data, dict):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_copy(v) for v in data]
    return data


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def is_empty(value: Any) -> bool:
    """Whether a response carries nothing worth caching.

    ``None``; no ``choices`` (or every choice with empty content, no tool calls, no
    function call and no refusal); embeddings with empty ``data``; Anthropic-style
    messages with empty ``content``; Responses-API results with empty ``output``.
    """
    if value is None:
        return True
    data = to_data(value) if is_pydantic(value) else value
    if not isinstance(data, Mapping):
        return False
    if "choices" in data:
        choices = data.get("choices") or []
        return not any(_choice_has_content(choice) for choice in choices)
    for name in ("data", "content", "output"):
        if name in data:
            return not data.get(name)
    return False


def _choice_has_content(choice: Any) -> bool:
    if not isinstance(choice, Mapping):
        return True
    message = choice.get("message")
    if isinstance(message, Mapping):
        return any(message.get(name) for name in (
            "content", "tool_calls", "function_call", "refusal", "reasoning_content", "audio",
        ))
    if "text" in choice:  # text completions
        return bool(choice.get("text"))
    return True
