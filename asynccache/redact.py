"""Keep secrets out of reprs, logs, exceptions and stats."""

from __future__ import annotations

import re

__all__ = [
    "mask", "redact",
]

_PATTERNS = [
    # user:password@ in URLs (redis://:pw@host, rediss://user:pw@host)
    (re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@"),
     r"\g<scheme>\g<user>:***@"),
    # key=value pairs in connection strings and query strings
    (re.compile(
        r"(?i)(?P<name>AccountKey|SharedAccessSignature|sig|password|passwd|secret|token|"
        r"access_key|secret_access_key|api_key|apikey|credential)(?P<sep>\s*[=:]\s*)"
        r"(?P<value>[^;&\s,'\"]+)"),
     r"\g<name>\g<sep>***"),
]


def redact(text: str) -> str:
    """``text`` with passwords, keys and tokens replaced by ``***``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def mask(value: object) -> str | None:
    """How a secret setting is shown: ``"***"`` when set, ``None`` when not.

    >>> mask("hunter2"), mask(None)
    ('***', None)
    """
    return None if value is None else "***"
