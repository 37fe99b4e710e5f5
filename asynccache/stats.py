"""Counters and latency histograms kept by every cache, readable with ``cache.stats()``.

Counters (hits, misses, sets, errors, bytes...) are kept overall and, for hits, misses
and sets, per namespace. Every backend operation's duration (``get``, ``set``,
``delete``, ``clear``, ...) goes into a histogram with fixed logarithmic buckets, so
recording is O(log buckets) with no allocation, and p50/p99 are estimated from the
buckets (within one bucket's width, about 33 %).

The read and write hot paths count into a :class:`Tally`: plain integer slots owned by
one thread and one namespace, written without a lock (only the owning thread writes
them, so no update is lost) and summed under the lock when :meth:`CacheStats.snapshot`
is read. In-process backends time one call in :data:`SAMPLE_EVERY` (the first one
included): their histograms are samples of the call durations, while every counter
still counts every call.

>>> stats = CacheStats()
>>> stats.add("hits", namespace="eu")
>>> stats.observe("get", 0.0004)
>>> snap = stats.snapshot()
>>> snap["hits"], snap["namespaces"]["eu"]["hits"], snap["latency"]["get"]["count"]
(1, 1, 1)
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import Counter
from dataclasses import dataclass
from threading import get_ident
from typing import Any

from .exceptions import ConfigurationError

__all__ = [
    "COUNTERS", "LATENCY_BUCKETS", "CacheStats", "HistogramSnapshot",
]

#: Counter names, in the order ``stats()`` reports them.
COUNTERS = (
    "hits", "misses", "sets", "set_failures", "deletes", "errors", "timeouts",
    "corrupt_entries", "expired", "skipped_open_circuit", "bytes_read", "bytes_written",
    "queued", "flushed", "flush_retries", "dropped", "given_up",
)
_PER_NAMESPACE = ("hits", "misses", "sets")
#: In-process backends time one call in this many (see the module docstring).
SAMPLE_EVERY = 64


class Tally:
    """Hot-path counters of one thread for one namespace (see the module docstring)."""

    __slots__ = ("bytes_read", "bytes_written", "corrupt_entries", "expired", "hits",
                 "misses", "set_failures", "sets")

    def __init__(self) -> None:
        self.hits = self.misses = self.bytes_read = self.corrupt_entries = self.expired = 0
        self.sets = self.set_failures = self.bytes_written = 0

#: Upper bounds (seconds) of the latency buckets: 1 µs to 100 s, 8 per decade (x1.33).
#: One more bucket past the last bound catches anything slower.
LATENCY_BUCKETS: tuple[float, ...] = tuple(10 ** (exp / 8) * 1e-6 for exp in range(0, 8 * 8 + 1))


@dataclass(frozen=True)
class HistogramSnapshot:
    """A copy of one operation's histogram.

    ``counts[i]`` is the number of observations in bucket ``i`` (not cumulative);
    bucket ``i`` holds durations ``<= bounds[i]`` and above ``bounds[i - 1]``; the last
    count (``len(bounds)``) holds everything slower than ``bounds[-1]``.
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    count: int
    sum: float
    min: float
    max: float

    def quantile(self, q: float) -> float:
        """Estimated duration (seconds) under which a fraction ``q`` of observations fall.

        Interpolated geometrically inside the bucket that holds the rank, and clamped
        to the observed min and max, so a single observation returns itself.
        """
        if not 0 <= q <= 1:
            raise ConfigurationError(f"quantile must be between 0 and 1, got {q!r}")
        if self.count == 0:
            return 0.0
        rank = q * self.count
        seen = 0
        for index, in_bucket in enumerate(self.counts):
            if not in_bucket:
                continue
            if seen + in_bucket >= rank:
                low = self.bounds[index - 1] if index > 0 else self.min
                high = self.bounds[index] if index < len(self.bounds) else self.max
                low, high = max(low, self.min), min(high, self.max)
                if low <= 0 or high <= low:
                    return min(max(high, self.min), self.max)
                fraction = (rank - seen) / in_bucket
                estimate = low * (high / low) ** fraction
                return min(max(estimate, self.min), self.max)
            seen += in_bucket
        return self.max

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` pairs, ending with ``(inf, count)``."""
        pairs: list[tuple[float, int]] = []
        running = 0
        for bound, in_bucket in zip(self.bounds, self.counts, strict=False):
            running += in_bucket
            pairs.append((bound, running))
        pairs.append((math.inf, self.count))
        return pairs

    def summary(self) -> dict[str, Any]:
        """Count, mean, p50, p99 and max in milliseconds (what ``stats()`` shows)."""
        if self.count == 0:
            return {"count": 0, "mean_ms": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        return {
            "count": self.count,
            "mean_ms": round(self.sum / self.count * 1000, 4),
            "p50_ms": round(self.quantile(0.5) * 1000, 4),
            "p99_ms": round(self.quantile(0.99) * 1000, 4),
            "max_ms": round(self.max * 1000, 4),
        }


class _Histogram:
    """Mutable fixed-bucket histogram; callers hold the stats lock."""

    __slots__ = ("count", "counts", "max", "min", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.count += 1
        self.sum += seconds
        if seconds < self.min:
            self.min = seconds
        if seconds > self.max:
            self.max = seconds

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(LATENCY_BUCKETS, tuple(self.counts), self.count, self.sum,
                                 0.0 if self.count == 0 else self.min, self.max)


class CacheStats:
    """Thread-safe counters (overall and per namespace) and per-operation latency histograms.

    ``BaseCache`` owns one and ``cache.stats()`` returns :meth:`snapshot` merged with
    the backend's state. :mod:`asynccache.metrics` exports the same figures to
    Prometheus and OpenTelemetry.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: Counter[str] = Counter()
        self._namespaces: dict[str, Counter[str]] = {}
        self._latency: dict[str, _Histogram] = {}
        self._tallies: dict[tuple[int, str | None], Tally] = {}
        # Each thread's own tallies by namespace: the lock-free lookup of the hot path.
        self._local = threading.local()

    def tally(self, namespace: str | None) -> Tally:
        """The calling thread's :class:`Tally` for ``namespace``: add to its slots freely.

        Only the calling thread may write the returned tally; take a fresh one per
        operation rather than keeping it (a reset replaces them).
        """
        try:
            return self._local.tallies[namespace]
        except (AttributeError, KeyError):
            return self._register_tally(namespace)

    def _register_tally(self, namespace: str | None) -> Tally:
        with self._lock:
            found = self._tallies.setdefault((get_ident(), namespace), Tally())
            local = self._local
            if not hasattr(local, "tallies"):
                local.tallies = {}
            local.tallies[namespace] = found
        return found

    def _merged(self) -> tuple[Counter[str], dict[str, Counter[str]]]:
        """Totals and per-namespace counters with every tally added (lock held)."""
        totals = Counter(self._totals)
        namespaces = {label: Counter(bucket) for label, bucket in self._namespaces.items()}
        for (_, namespace), tally in list(self._tallies.items()):
            label = "" if namespace is None else namespace
            for name in Tally.__slots__:
                amount = getattr(tally, name)
                if amount:
                    totals[name] += amount
                    if name in _PER_NAMESPACE:
                        bucket = namespaces.get(label)
                        if bucket is None:
                            bucket = namespaces[label] = Counter()
                        bucket[name] += amount
        return totals, namespaces

    def add(self, name: str, amount: int = 1, namespace: str | None = None) -> None:
        """Add ``amount`` to counter ``name`` (and to ``namespace``'s, for hits/misses/sets)."""
        with self._lock:
            self._totals[name] += amount
            if name in _PER_NAMESPACE:
                label = "" if namespace is None else namespace
                bucket = self._namespaces.get(label)
                if bucket is None:
                    bucket = self._namespaces[label] = Counter()
                bucket[name] += amount

    def record_reads(self, hits: int, misses: int, bytes_read: int, corrupt: int = 0,
                     expired: int = 0, namespace: str | None = None) -> None:
        """Count one batch of lookups under a single lock acquisition (the read hot path)."""
        with self._lock:
            totals = self._totals
            if hits:
                totals["hits"] += hits
                totals["bytes_read"] += bytes_read
            if misses:
                totals["misses"] += misses
            if corrupt:
                totals["corrupt_entries"] += corrupt
            if expired:
                totals["expired"] += expired
            label = "" if namespace is None else namespace
            bucket = self._namespaces.get(label)
            if bucket is None:
                bucket = self._namespaces[label] = Counter()
            if hits:
                bucket["hits"] += hits
            if misses:
                bucket["misses"] += misses

    def observe(self, operation: str, seconds: float) -> None:
        """Record how long one backend operation took (``seconds``, wall clock).

        Negative or NaN durations (a clock that went backwards) are recorded as 0.
        """
        if not seconds > 0:
            seconds = 0.0
        with self._lock:
            histogram = self._latency.get(operation)
            if histogram is None:
                histogram = self._latency[operation] = _Histogram()
            histogram.add(seconds)

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._merged()[0][name]

    def histograms(self) -> dict[str, HistogramSnapshot]:
        """A copy of every operation's latency histogram, by operation name."""
        with self._lock:
            return {op: histogram.snapshot() for op, histogram in self._latency.items()}

    def latency(self, operation: str) -> HistogramSnapshot | None:
        """A copy of one operation's histogram, or ``None`` if it never ran."""
        with self._lock:
            histogram = self._latency.get(operation)
            return None if histogram is None else histogram.snapshot()

    def snapshot(self) -> dict[str, Any]:
        """Every counter, ``hit_rate``, per-namespace counters and latency summaries.

        ``latency`` maps an operation (``get``, ``set``...) to count, mean, p50, p99
        and max in milliseconds.
        """
        with self._lock:
            merged, by_namespace = self._merged()
            totals: dict[str, Any] = {name: merged[name] for name in COUNTERS}
            lookups = totals["hits"] + totals["misses"]
            totals["hit_rate"] = round(totals["hits"] / lookups, 4) if lookups else 0.0
            namespaces: dict[str, Any] = {}
            for label, bucket in by_namespace.items():
                ns: dict[str, Any] = {name: bucket[name] for name in _PER_NAMESPACE}
                ns_lookups = ns["hits"] + ns["misses"]
                ns["hit_rate"] = round(ns["hits"] / ns_lookups, 4) if ns_lookups else 0.0
                namespaces[label] = ns
            histograms = [(op, h.snapshot()) for op, h in self._latency.items()]
        latency = {op: snap.summary() for op, snap in histograms}
        return {**totals, "namespaces": namespaces, "latency": latency}

    def reset(self) -> None:
        """Set every counter and histogram back to zero."""
        with self._lock:
            self._totals.clear()
            self._namespaces.clear()
            self._latency.clear()
            # A fresh map: a hot path that took its tally just before the reset counts
            # into the old one, which is dropped (that operation raced the reset).
            self._tallies = {}
            self._local = threading.local()
