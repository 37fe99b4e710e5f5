"""Export cache stats to Prometheus and OpenTelemetry (optional dependencies).

Both read the figures ``cache.stats()`` already keeps (counters, per-namespace
counters, latency histograms), only when scraped or collected: nothing is added to the
hot path.

>>> from asynccache import Cache
>>> from asynccache.metrics import PrometheusExporter
>>> cache = Cache()
>>> exporter = PrometheusExporter(cache)                  # doctest: +SKIP
>>> exporter.start_http_server(9464)                      # doctest: +SKIP

``prometheus_client`` and ``opentelemetry-api`` are imported on first use; without them
:class:`~asynccache.exceptions.MissingExtraError` says what to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .exceptions import ConfigurationError, MissingExtraError
from .savings import ledger_of
from .stats import COUNTERS, CacheStats, HistogramSnapshot

if TYPE_CHECKING:
    from .base import BaseCache

__all__ = [
    "OpenTelemetryMetrics", "PrometheusExporter", "enable_opentelemetry", "named_caches",
]

#: Counters that are sizes in bytes (OpenTelemetry unit ``By``).
_BYTE_COUNTERS = frozenset({"bytes_read", "bytes_written"})
#: Per-namespace counters.
_NAMESPACE_COUNTERS = ("hits", "misses", "sets")
#: Export every 4th latency bound: 2 buckets per decade keeps series counts small.
_EXPORT_EVERY = 4


def _require(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"this needs the {package!r} package, which is not installed: pip install {package}"
        ) from exc


def named_caches(caches: BaseCache | Iterable[BaseCache] | Mapping[str, BaseCache]
                 ) -> dict[str, BaseCache]:
    """Label each cache: mapping keys as given, else ``backend`` or ``backend:namespace``.

    Duplicate labels get ``#2``, ``#3``... so two caches never share a series.
    """
    from .base import BaseCache

    if isinstance(caches, BaseCache):
        items: list[tuple[str | None, BaseCache]] = [(None, caches)]
    elif isinstance(caches, Mapping):
        items = [(str(name), cache) for name, cache in caches.items()]
    else:
        items = [(None, cache) for cache in caches]
    named: dict[str, BaseCache] = {}
    for name, cache in items:
        if not isinstance(cache, BaseCache):
            raise ConfigurationError(
                f"expected an asynccache cache, got {type(cache).__name__}"
            )
        label = name
        if label is None:
            label = cache.backend.name + (f":{cache.namespace}" if cache.namespace else "")
        unique, n = label, 1
        while unique in named:
            n += 1
            unique = f"{label}#{n}"
        named[unique] = cache
    if not named:
        raise ConfigurationError("no cache given")
    return named


#: What LLM hits saved, per namespace and model: (figure, description).
_SAVED = (
    ("hits", "LLM calls answered from the cache"),
    ("unpriced_hits", "LLM hits whose model no offline price table knows"),
    ("upstream_seconds", "upstream time hits saved (as measured when stored)"),
    ("cost_usd", "USD hits saved (priced hits only; no price is guessed)"),
    ("tokens", "tokens hits saved"),
)
_SAVED_TOKENS = ("prompt", "completion", "cached_prompt")


def _saved_observations(cache: BaseCache, name: str
                        ) -> list[tuple[float, dict[str, str]]]:
    """``(value, {namespace, model[, kind]})`` pairs of one saved figure of one cache."""
    found: list[tuple[float, dict[str, str]]] = []
    for namespace, model, row in ledger_of(cache).rows():
        labels = {"namespace": namespace, "model": model}
        if name == "tokens":
            found += [(float(row[f"{kind}_tokens"]), {**labels, "kind": kind})
                      for kind in _SAVED_TOKENS]
        elif row.get(name) is not None:
            found.append((float(row[name]), labels))
    return found


def _histograms(cache: BaseCache) -> dict[str, HistogramSnapshot]:
    # BaseCache keeps its CacheStats private; the exporters live in the same package.
    stats = getattr(cache, "_stats", None)
    return stats.histograms() if isinstance(stats, CacheStats) else {}


class PrometheusExporter:
    """A Prometheus collector over one or more caches (needs ``prometheus_client``).

    Series (``prefix`` defaults to ``asynccache``), labelled ``cache`` and ``backend``:

    * ``asynccache_<counter>_total`` for every counter of ``stats()`` (hits, misses,
      sets, errors, timeouts, ``bytes_read``...);
    * ``asynccache_namespace_{hits,misses,sets}_total`` with a ``namespace`` label;
    * ``asynccache_operation_seconds`` histogram with an ``operation`` label;
    * ``asynccache_hit_ratio`` gauge;
    * what LLM hits saved, labelled ``namespace`` and ``model``:
      ``asynccache_saved_hits_total``, ``asynccache_saved_unpriced_hits_total``,
      ``asynccache_saved_tokens_total`` (label ``kind``: prompt, completion,
      cached_prompt), ``asynccache_saved_cost_usd_total`` (priced models only) and
      ``asynccache_saved_upstream_seconds_total``.

    >>> exporter = PrometheusExporter({"answers": cache})        # doctest: +SKIP
    >>> exporter.start_http_server(9464)                         # doctest: +SKIP
    >>> exporter.unregister()                                    # doctest: +SKIP

    ``registry`` defaults to ``prometheus_client.REGISTRY``; pass ``None`` to keep the
    collector unregistered (call :meth:`collect` yourself).
    """

    def __init__(self, caches: BaseCache | Iterable[BaseCache] | Mapping[str, BaseCache],
                 *, registry: Any = "default", prefix: str = "asynccache") -> None:
        self._client = _require("prometheus_client", "prometheus-client")
        self._core = _require("prometheus_client.core", "prometheus-client")
        self.caches = named_caches(caches)
        self.prefix = prefix
        self.registry = self._client.REGISTRY if registry == "default" else registry
        if self.registry is not None:
            self.registry.register(self)

    def describe(self) -> list[Any]:
        """No fixed description: series depend on the caches' current namespaces."""
        return []

    def collect(self) -> Iterator[Any]:
        """Build the metric families from each cache's current stats."""
        core, p = self._core, self.prefix
        labels = ["cache", "backend"]
        counters = {
            name: core.CounterMetricFamily(
                f"{p}_{name}",
                f"asynccache counter {name!r} (see cache.stats())", labels=labels,
            )
            for name in COUNTERS
        }
        per_ns = {
            name: core.CounterMetricFamily(
                f"{p}_namespace_{name}", f"{name} per namespace",
                labels=[*labels, "namespace"],
            )
            for name in _NAMESPACE_COUNTERS
        }
        ratio = core.GaugeMetricFamily(f"{p}_hit_ratio", "hits / (hits + misses)",
                                       labels=labels)
        latency = core.HistogramMetricFamily(
            f"{p}_operation_seconds", "duration of backend operations",
            labels=[*labels, "operation"],
        )
        for label, cache in self.caches.items():
            snap = cache.stats()
            backend = str(snap.get("backend", cache.backend.name))
            for name, family in counters.items():
                family.add_metric([label, backend], float(snap.get(name, 0)))
            for namespace, values in snap.get("namespaces", {}).items():
                for name, family in per_ns.items():
                    family.add_metric([label, backend, namespace], float(values.get(name, 0)))
            ratio.add_metric([label, backend], float(snap.get("hit_rate", 0.0)))
            for operation, histogram in sorted(_histograms(cache).items()):
                pairs = histogram.cumulative()
                buckets = [
                    (_le(bound), float(count)) for i, (bound, count) in enumerate(pairs[:-1])
                    if i % _EXPORT_EVERY == 0
                ]
                buckets.append(("+Inf", float(histogram.count)))
                latency.add_metric([label, backend, operation], buckets, histogram.sum)
        yield from counters.values()
        yield from per_ns.values()
        yield ratio
        yield latency
        yield from self._saved_families()

    def _saved_families(self) -> Iterator[Any]:
        core, p = self._core, self.prefix
        labels = ["cache", "backend", "namespace", "model"]
        for name, description in _SAVED:
            family = core.CounterMetricFamily(
                f"{p}_saved_{name}", description,
                labels=[*labels, "kind"] if name == "tokens" else labels)
            for label, cache in self.caches.items():
                for value, attributes in _saved_observations(cache, name):
                    family.add_metric([label, cache.backend.name, *attributes.values()], value)
            yield family

    def start_http_server(self, port: int, addr: str = "127.0.0.1") -> Any:
        """Serve ``/metrics`` on ``addr:port`` (loopback by default); returns the server."""
        registry = self.registry if self.registry is not None else self._client.REGISTRY
        return self._client.start_http_server(port, addr=addr, registry=registry)

    def unregister(self) -> None:
        """Remove the collector from its registry."""
        if self.registry is not None:
            self.registry.unregister(self)


def _le(bound: float) -> str:
    return f"{bound:.6g}"


class OpenTelemetryMetrics:
    """The observable instruments created by :func:`enable_opentelemetry`."""

    def __init__(self, caches: dict[str, BaseCache], instruments: list[Any]) -> None:
        self.caches = caches
        self.instruments = instruments

    def observations(self, kind: str) -> list[tuple[float, dict[str, str]]]:
        """What the instrument ``kind`` reports now: ``(value, attributes)`` pairs.

        ``kind`` is a counter name (``"hits"``...), ``"namespace_hits"`` (and misses,
        sets), ``"operation_count"``, ``"operation_duration_sum"``,
        ``"operation_p50"`` or ``"operation_p99"`` (milliseconds), or what LLM hits
        saved: ``"saved_hits"``, ``"saved_unpriced_hits"``, ``"saved_tokens"``,
        ``"saved_cost_usd"``, ``"saved_upstream_seconds"``.
        """
        found: list[tuple[float, dict[str, str]]] = []
        for label, cache in self.caches.items():
            base = {"cache": label, "backend": cache.backend.name}
            if kind.startswith("saved_"):
                found += [(value, {**base, **attributes}) for value, attributes
                          in _saved_observations(cache, kind.removeprefix("saved_"))]
            elif kind in COUNTERS:
                found.append((float(cache.stats().get(kind, 0)), base))
            elif kind.startswith("namespace_"):
                name = kind.removeprefix("namespace_")
                for namespace, values in cache.stats().get("namespaces", {}).items():
                    found.append((float(values.get(name, 0)), {**base, "namespace": namespace}))
            elif kind.startswith("operation_"):
                for operation, histogram in sorted(_histograms(cache).items()):
                    attributes = {**base, "operation": operation}
                    if kind == "operation_count":
                        value = float(histogram.count)
                    elif kind == "operation_duration_sum":
                        value = histogram.sum
                    elif kind == "operation_p50":
                        value = histogram.quantile(0.5) * 1000
                    else:
                        value = histogram.quantile(0.99) * 1000
                    found.append((value, attributes))
        return found


def enable_opentelemetry(
    caches: BaseCache | Iterable[BaseCache] | Mapping[str, BaseCache],
    *, meter: Any = None, meter_provider: Any = None,
) -> OpenTelemetryMetrics:
    """Publish the caches' stats as OpenTelemetry observable instruments.

    Needs ``opentelemetry-api`` (and an SDK with an exporter configured by you to send
    them anywhere). Instruments: ``asynccache.<counter>`` observable counters (hits,
    misses, sets, errors, ``bytes_read``...), ``asynccache.namespace.{hits,misses,sets}``,
    ``asynccache.operation.count`` / ``asynccache.operation.duration`` (sum, seconds)
    counters and ``asynccache.operation.p50`` / ``.p99`` gauges (ms), with attributes
    ``cache``, ``backend``, ``namespace``, ``operation``; and what LLM hits saved:
    ``asynccache.saved.hits``, ``asynccache.saved.unpriced_hits``,
    ``asynccache.saved.tokens`` (attribute ``kind``), ``asynccache.saved.cost`` (unit
    ``USD``) and ``asynccache.saved.upstream_time`` (``s``), with ``namespace`` and
    ``model``.

    >>> from opentelemetry import metrics                    # doctest: +SKIP
    >>> enable_opentelemetry(cache)                          # doctest: +SKIP
    """
    api = _require("opentelemetry.metrics", "opentelemetry-api")
    if meter is None:
        from . import __version__

        provider = meter_provider if meter_provider is not None else api.get_meter_provider()
        meter = provider.get_meter("asynccache", __version__)
    named = named_caches(caches)
    handle = OpenTelemetryMetrics(named, [])

    def callback(kind: str) -> Any:
        def observe(options: Any) -> list[Any]:
            return [api.Observation(value, attributes)
                    for value, attributes in handle.observations(kind)]
        return observe

    instruments = handle.instruments
    for name in COUNTERS:
        instruments.append(meter.create_observable_counter(
            f"asynccache.{name}", callbacks=[callback(name)],
            unit="By" if name in _BYTE_COUNTERS else "1", description=f"asynccache {name}",
        ))
    for name in _NAMESPACE_COUNTERS:
        instruments.append(meter.create_observable_counter(
            f"asynccache.namespace.{name}", callbacks=[callback(f"namespace_{name}")],
            unit="1", description=f"{name} per namespace",
        ))
    instruments.append(meter.create_observable_counter(
        "asynccache.operation.count", callbacks=[callback("operation_count")], unit="1",
        description="backend operations",
    ))
    instruments.append(meter.create_observable_counter(
        "asynccache.operation.duration", callbacks=[callback("operation_duration_sum")],
        unit="s", description="total time spent in backend operations",
    ))
    for name, unit, description in (
        ("hits", "1", "LLM calls answered from the cache"),
        ("unpriced_hits", "1", "LLM hits whose model no offline price table knows"),
        ("tokens", "1", "tokens LLM hits saved"),
        ("cost_usd", "USD", "USD LLM hits saved (priced models only)"),
        ("upstream_seconds", "s", "upstream time LLM hits saved"),
    ):
        instrument = {"cost_usd": "cost", "upstream_seconds": "upstream_time"}.get(name, name)
        instruments.append(meter.create_observable_counter(
            f"asynccache.saved.{instrument}", callbacks=[callback(f"saved_{name}")],
            unit=unit, description=description,
        ))
    for q in ("p50", "p99"):
        instruments.append(meter.create_observable_gauge(
            f"asynccache.operation.{q}", callbacks=[callback(f"operation_{q}")], unit="ms",
            description=f"estimated {q} duration of backend operations",
        ))
    return handle
