"""Shared settings helpers: the "not given" sentinel, TTL validation and env parsing."""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Mapping
from typing import Any, Final

from .exceptions import ConfigurationError


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


def split_backend_settings(settings: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate a backend's connection settings from the settings every cache shares."""
    import inspect

    from .base import BaseCache  # base imports this module

    common_names = set(inspect.signature(BaseCache.__init__).parameters) - {"self", "backend"}
    common = {k: v for k, v in settings.items() if k in common_names}
    backend = {k: v for k, v in settings.items() if k not in common_names}
    return common, backend
