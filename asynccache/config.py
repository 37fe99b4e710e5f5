"""Settings: the "not given" sentinel, the cache settings object, TTL checks, env parsing.

:class:`CacheSettings` declares every setting a cache has whatever its backend
(namespace, TTL, timeouts, write-behind, breaker, LLM-call settings); backend settings are
declared once, by the backend's constructor (Redis connection settings by
:class:`asynccache.backends.redis_settings.RedisSettings`). :func:`split_settings` sorts the keyword
arguments a user wrote between the two, and a name nobody declares raises a
:class:`~asynccache.exceptions.ConfigurationError` suggesting the closest known one.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import inspect
import math
import os
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Final

from .exceptions import ConfigurationError
from .protection import DEFAULT_COMPRESSION_MIN_SIZE

__all__ = [
    "NOT_GIVEN", "CacheSettings", "NotGiven", "env_settings", "positive_setting", "resolve_ttl",
    "split_settings", "unknown_setting", "validate_ttl",
]


class _NotGiven(enum.Enum):
    """Type of :data:`NOT_GIVEN`: "the caller said nothing", distinct from ``None``."""

    NOT_GIVEN = "NOT_GIVEN"

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> bool:
        return False


#: Marks an argument the caller did not pass. ``ttl=None`` means "never expire";
#: leaving ``ttl`` out means "use the cache's default TTL".
NOT_GIVEN: Final = _NotGiven.NOT_GIVEN
NotGiven = _NotGiven

TTL = float | None


def validate_ttl(ttl: object, name: str = "ttl") -> float | None:
    """Return ``ttl`` as seconds (or ``None`` for no expiry); raise on anything else."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise ConfigurationError(
            f"{name} must be a number of seconds or None, got {type(ttl).__name__} {ttl!r}"
        )
    if math.isnan(ttl) or ttl <= 0:
        raise ConfigurationError(f"{name} must be > 0 seconds (or None for no expiry), got {ttl!r}")
    if math.isinf(ttl):
        return None
    return float(ttl)


def resolve_ttl(ttl: float | NotGiven | None, default: float | None) -> float | None:
    """The TTL to use for one write: the caller's, else the cache default."""
    if ttl is NOT_GIVEN:
        return default
    if (type(ttl) is int or type(ttl) is float) and 0 < ttl < math.inf:
        return float(ttl)  # the common case, checked without a call
    return validate_ttl(ttl)


def env_settings(prefix: str, names: Mapping[str, type], environ: Mapping[str, str] | None = None
                 ) -> dict[str, Any]:
    """Read ``{PREFIX}{NAME}`` environment variables into typed settings.

    ``names`` maps a setting name to its type (``str``, ``int``, ``float``, ``bool``).
    Unset variables are left out, so explicit arguments can override what is read.
    """
    env = os.environ if environ is None else environ
    found: dict[str, Any] = {}
    for name, kind in names.items():
        raw = env.get(prefix + name.upper())
        if raw is None or raw == "":
            continue
        try:
            if kind is bool:
                lowered = raw.strip().lower()
                if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                    raise ValueError(raw)
                found[name] = lowered in {"1", "true", "yes", "on"}
            else:
                found[name] = kind(raw)
        except ValueError as exc:
            raise ConfigurationError(
                f"environment variable {prefix}{name.upper()}={raw!r} "
                f"is not a valid {kind.__name__}"
            ) from exc
    return found


def positive_setting(name: str, value: Any, kind: type = float, allow_none: bool = False) -> Any:
    """Return ``value`` if it is a positive number of ``kind``; raise naming ``name``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 or (
        kind is int and not isinstance(value, int)
    ):
        raise ConfigurationError(
            f"{name} must be a positive {kind.__name__}{' or None' if allow_none else ''}, "
            f"got {value!r}"
        )
    return value


# -- cache settings -----------------------------------------------------------------------

DEFAULT_MAX_ITEM_SIZE = 16 * 1024 * 1024
DEFAULT_TIMEOUT = 5.0


@dataclasses.dataclass(frozen=True)
class CacheSettings:
    """Settings every cache has, whatever its backend.

    Storage:

    * ``namespace``: prefix every key (``clear`` of one namespace leaves others intact);
    * ``ttl``: default TTL in seconds for writes that do not pass one (``None``: never);
    * ``max_item_size``: largest encoded entry in bytes (larger values raise);
    * ``timeout``: seconds before a remote operation counts as failed (``None``: none);
    * ``coalesce_reads``: merge concurrent single gets into one batch get (default: on
      for remote backends);
    * ``write_behind`` / ``flush_size`` / ``flush_interval`` / ``max_queue_size`` /
      ``queue_overflow`` / ``flush_retries``: the write-behind queue (see
      :class:`~asynccache.flush.FlushQueue`); passing ``flush_size`` turns it on;
    * ``breaker_threshold`` / ``breaker_cooldown``: the circuit breaker (consecutive
      failures before it opens; longest pause between its background probes, 0.25 s);
    * ``encryption_keys``: encrypt values at rest with AES-GCM (the first key encrypts,
      all decrypt); ``compression`` (``"zstd"``, ``"zlib"``, ``"auto"``) with
      ``compression_min_size``: compress larger values (see :mod:`asynccache.protection`);
    * ``clock``: seconds since the epoch (inject one in tests).

    LLM calls (:meth:`~asynccache.base.BaseCache.async_lookup`, ``cached``):

    * ``mode``: ``"default_on"`` (cache unless ``cache={"no-cache": True}``) or
      ``"default_off"`` (cache only calls with ``cache={"use-cache": True}``);
    * ``supported_call_types``: which call types the wrappers cache (default: all);
    * ``caching_groups``: models that share entries, e.g. ``[("gpt-4o", "gpt-4o-2024-08-06")]``;
    * ``key_function``: replaces :meth:`~asynccache.base.BaseCache.get_cache_key`;
    * ``excluded_params``: call arguments left out of keys (default:
      :data:`asynccache.keys.EXCLUDED_PARAMS`);
    * ``sampling``: what to do with requests meant to vary (temperature > 0, top_p < 1,
      n > 1, no seed): ``"cache"`` (default), ``"skip"`` or ``"pool"``, or a dict /
      :class:`~asynccache.sampling.SamplingPolicy` (``pool_size``, ``serve``);
    * ``persist_savings``: also add what hits saved (see :mod:`asynccache.savings`) to
      totals stored in the cache itself, every 10 s and on flush/close, so the hits of
      every process add up and ``asynccache stats`` shows them;
    * ``record_requests``: also store each request (scrubbed of secrets) so
      ``explain_miss`` can say why a request missed (``True`` keeps the 256 most
      recent per namespace, an int another number; cassettes always keep them).

    >>> CacheSettings(ttl=60).ttl
    60
    """

    namespace: str | None = None
    ttl: float | None = None
    max_item_size: int = DEFAULT_MAX_ITEM_SIZE
    timeout: float | None = DEFAULT_TIMEOUT
    coalesce_reads: bool | None = None
    write_behind: bool | None = None
    flush_size: int | None = None
    flush_interval: float = 0.05
    max_queue_size: int = 10_000
    queue_overflow: str = "wait"
    flush_retries: int = 8
    breaker_threshold: int = 5
    breaker_cooldown: float = 0.25
    encryption_keys: Sequence[bytes | str] | None = dataclasses.field(default=None, repr=False)
    compression: str | None = None
    compression_min_size: int = DEFAULT_COMPRESSION_MIN_SIZE
    clock: Callable[[], float] = time.time
    mode: str = "default_on"
    supported_call_types: Sequence[str] | None = None
    caching_groups: Sequence[Iterable[str]] | None = None
    key_function: Callable[..., str] | None = None
    excluded_params: Iterable[str] | None = None
    sampling: Any = None
    persist_savings: bool = False
    record_requests: bool | int = False

    @classmethod
    def names(cls) -> frozenset[str]:
        """Every setting name (aliases excluded)."""
        return _CACHE_SETTING_NAMES

    @classmethod
    def build(cls, options: Mapping[str, Any], owner: str,
              base: CacheSettings | None = None) -> CacheSettings:
        """Settings from keyword arguments (aliases accepted) over ``base``.

        An unknown name raises naming the closest known one.
        """
        fields: dict[str, Any] = {}
        for name, value in options.items():
            target = SETTING_ALIASES.get(name, name)
            if target not in _CACHE_SETTING_NAMES:
                raise unknown_setting(owner, name, _CACHE_SETTING_NAMES)
            fields[target] = value
        return dataclasses.replace(base or _DEFAULTS, **fields)


_CACHE_SETTING_NAMES = frozenset(field.name for field in dataclasses.fields(CacheSettings))
_DEFAULTS = CacheSettings()

#: Names LiteLLM users already write, mapped to ours.
SETTING_ALIASES: Mapping[str, str] = {
    "default_in_memory_ttl": "ttl",
    "default_in_redis_ttl": "ttl",
    "default_ttl": "ttl",
    "redis_flush_size": "flush_size",
    "redis_flush_interval": "flush_interval",
    "max_size_in_memory": "max_entries",
}


def unknown_setting(owner: str, name: str, known: Collection[str]) -> ConfigurationError:
    """The error for a setting nobody declares: the closest known names, else all of them."""
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    if close:
        hint = "did you mean " + " or ".join(repr(c) for c in close) + "?"
    else:
        hint = "known settings: " + ", ".join(sorted(known))
    return ConfigurationError(f"{owner} got an unknown setting {name!r}; {hint}")


def declared_settings(factory: Callable[..., Any]) -> tuple[frozenset[str], bool]:
    """The keyword names ``factory`` declares, and whether it takes ``**extra`` too."""
    names: set[str] = set()
    extra = False
    for parameter in inspect.signature(factory).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            extra = True
        elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
            names.add(parameter.name)
    return frozenset(names), extra


def split_settings(
    owner: str, settings: Mapping[str, Any], backend_factory: Callable[..., Any],
    extra_names: Collection[str] = (),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(backend settings, cache settings)`` of the keyword arguments a user wrote.

    Backend settings are the names ``backend_factory`` declares (plus ``extra_names`` it
    takes through ``**options``); cache settings those of :class:`CacheSettings` (and
    :data:`SETTING_ALIASES`). Anything else raises naming the closest known setting.
    """
    declared, _ = declared_settings(backend_factory)
    backend_names = declared | frozenset(extra_names)
    backend: dict[str, Any] = {}
    cache: dict[str, Any] = {}
    for name, value in settings.items():
        target = SETTING_ALIASES.get(name, name)
        if target in _CACHE_SETTING_NAMES or target == "cache_settings":
            cache[target] = value
        elif target in backend_names:
            backend[target] = value
        else:
            raise unknown_setting(owner, name, backend_names | _CACHE_SETTING_NAMES)
    return backend, cache
