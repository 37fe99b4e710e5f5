"""Per-call cache controls, parsed once into a small immutable value.

The controls are the ones LiteLLM users pass as ``cache={...}``::

    {"no-cache": True}     skip the lookup (still store the fresh answer)
    {"no-store": True}     do not store the answer
    {"ttl": 600}           store for 600 s (None: never expire)
    {"s-maxage": 60}       accept only entries younger than 60 s
    {"namespace": "eu"}    read and write in namespace "eu"
    {"use-cache": True}    opt in when the cache runs in ``default_off`` mode
    {"similarity-threshold": 0.9}   semantic caches: per-call threshold (0-1)

``_`` may be used instead of ``-`` (``no_cache``). Anything else raises
:class:`~asynccache.exceptions.ConfigurationError` naming the offending control.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import NOT_GIVEN, NotGiven, validate_ttl
from .exceptions import ConfigurationError

__all__ = [
    "DEFAULT_CONTROLS", "CacheControls", "CacheMode", "parse_controls", "validate_threshold",
]


class CacheMode(str, enum.Enum):
    """Whether calls use the cache unless told not to (``default_on``) or only when asked."""

    default_on = "default_on"
    default_off = "default_off"


_BOOL_CONTROLS = {"no-cache": "no_cache", "no-store": "no_store", "use-cache": "use_cache"}
_KNOWN = sorted([*_BOOL_CONTROLS, "ttl", "s-maxage", "namespace", "similarity-threshold"])


@dataclass(frozen=True, slots=True)
class CacheControls:
    """Parsed per-call controls. Build with :func:`parse_controls`."""

    no_cache: bool = False
    no_store: bool = False
    use_cache: bool = False
    ttl: float | NotGiven | None = NOT_GIVEN
    s_maxage: float | None = None
    namespace: str | NotGiven | None = NOT_GIVEN
    similarity_threshold: float | None = None

    def reads(self, mode: CacheMode) -> bool:
        """Whether this call may be answered from the cache."""
        return self.enabled(mode) and not self.no_cache

    def writes(self, mode: CacheMode) -> bool:
        """Whether this call's answer may be stored."""
        return self.enabled(mode) and not self.no_store

    def enabled(self, mode: CacheMode) -> bool:
        return mode is CacheMode.default_on or self.use_cache


DEFAULT_CONTROLS = CacheControls()


def validate_threshold(value: object, name: str = "similarity_threshold") -> float:
    """A cosine-similarity threshold in [0, 1]; raise naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigurationError(
            f"{name} must be a cosine similarity between 0 and 1, got {value!r}"
        )
    return float(value)


def parse_controls(controls: Mapping[str, Any] | CacheControls | None) -> CacheControls:
    """Validate a ``cache={...}`` mapping; raise ``ConfigurationError`` naming what is wrong."""
    if controls is None:
        return DEFAULT_CONTROLS
    if isinstance(controls, CacheControls):
        return controls
    if not isinstance(controls, Mapping):
        raise ConfigurationError(
            f"cache controls must be a dict such as {{'ttl': 60}}, got {type(controls).__name__}"
        )
    fields: dict[str, Any] = {}
    for raw_name, value in controls.items():
        name = str(raw_name).replace("_", "-").lower()
        if name in _BOOL_CONTROLS:
            if not isinstance(value, bool):
                raise ConfigurationError(
                    f"cache control {raw_name!r} must be True or False, got {value!r}"
                )
            fields[_BOOL_CONTROLS[name]] = value
        elif name == "ttl":
            fields["ttl"] = validate_ttl(value, "cache control 'ttl'")
        elif name == "s-maxage":
            if isinstance(value, bool) or not isinstance(value, int | float) or (
                math.isnan(value) or value < 0
            ):
                raise ConfigurationError(
                    f"cache control 's-maxage' must be a number of seconds >= 0, got {value!r}"
                )
            fields["s_maxage"] = float(value)
        elif name == "similarity-threshold":
            fields["similarity_threshold"] = validate_threshold(
                value, "cache control 'similarity-threshold'"
            )
        elif name == "namespace":
            if value is not None and not isinstance(value, str):
                raise ConfigurationError(
                    f"cache control 'namespace' must be a string or None, got {value!r}"
                )
            fields["namespace"] = value
        else:
            raise ConfigurationError(
                f"unknown cache control {raw_name!r}; known controls: {', '.join(_KNOWN)}"
            )
    return CacheControls(**fields)
