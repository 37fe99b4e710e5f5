"""Counters kept by every cache, readable with ``cache.stats()``."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

#: Counter names, in the order ``stats()`` reports them.
COUNTERS = (
    "hits", "misses", "sets", "set_failures", "deletes", "errors", "timeouts",
    "corrupt_entries", "expired", "skipped_open_circuit", "bytes_read", "bytes_written",
    "queued", "flushed", "flush_retries", "dropped", "given_up",
)
_PER_NAMESPACE = ("hits", "misses", "sets")


class CacheStats:
    """Thread-safe counters, overall and per namespace (hits, misses, sets)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: Counter[str] = Counter()
        self._namespaces: dict[str, Counter[str]] = {}

    def add(self, name: str, amount: int = 1, namespace: str | None = None) -> None:
        with self._lock:
            self._totals[name] += amount
            if name in _PER_NAMESPACE:
                label = "" if namespace is None else namespace
                bucket = self._namespaces.get(label)
                if bucket is None:
                    bucket = self._namespaces[label] = Counter()
                bucket[name] += amount

    def __getitem__(self, name: str) -> int:
        return self._totals[name]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            totals: dict[str, Any] = {name: self._totals[name] for name in COUNTERS}
            lookups = totals["hits"] + totals["misses"]
            totals["hit_rate"] = round(totals["hits"] / lookups, 4) if lookups else 0.0
            namespaces = {
                label: {name: bucket[name] for name in _PER_NAMESPACE}
                for label, bucket in self._namespaces.items()
            }
        return {**totals, "namespaces": namespaces}

    def reset(self) -> None:
        with self._lock:
            self._totals.clear()
            self._namespaces.clear()
