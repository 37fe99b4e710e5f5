"""What cache hits saved: tokens, money and upstream time, per model and per namespace.

Every answer served from the cache through the LLM paths (``cached`` calls, streams,
per-input embeddings, the LiteLLM adapter) counts what its upstream call would have
cost, read from the stored answer:

* tokens from the stored response's ``usage`` (OpenAI ``prompt_tokens`` /
  ``completion_tokens``, cached-prompt details; Anthropic and Responses-API
  ``input_tokens`` / ``output_tokens``);
* the price from an offline price table: the ``genai-prices`` package (extra ``cost``),
  else LiteLLM's bundled cost map when LiteLLM is already imported. Nothing is fetched
  from the network and no price is guessed: a model neither table knows counts its
  tokens and is reported with ``"price": "unknown"`` and ``cost_usd: None``;
* the upstream latency the wrapper measured when the answer was stored.

Nothing here runs on the plain ``get`` path: only LLM hits are counted.

>>> ledger = SavingsLedger()
>>> ledger.add("eu", "my-own-model", prompt=10, completion=5, cached_prompt=0, seconds=0.8)
>>> ledger.snapshot()["models"]["my-own-model"]["price"]
'unknown'
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = [
    "FIELDS", "PERSIST_INTERVAL", "STORED_MODELS", "STORED_PREFIX", "SavingsLedger",
    "count_saved", "enable_persistence", "ledger_of", "persist", "price_usd", "snapshot_of",
    "stored_savings", "upstream_clock", "usage_of",
]

#: Fields of one row of the ledger, in the order ``stats()`` shows them.
FIELDS = ("hits", "prompt_tokens", "completion_tokens", "cached_prompt_tokens",
          "upstream_seconds", "priced_hits", "cost_usd")


def upstream_clock() -> float:
    """The clock an upstream call is timed with: the running loop's, which is a monotonic
    clock on a real loop and simulated time on a simulated one (the demo's), so the time
    a hit saves is the call's own duration either way."""
    return asyncio.get_running_loop().time()


@dataclass
class _Row:
    hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    upstream_seconds: float = 0.0
    priced_hits: int = 0
    cost_usd: Decimal = Decimal(0)

    def add(self, other: _Row) -> None:
        for name in FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, Any]:
        known = self.priced_hits == self.hits
        return {
            "hits": self.hits,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "upstream_seconds": round(self.upstream_seconds, 3),
            # Partly priced totals are lower bounds: say so rather than round them away.
            "cost_usd": float(round(self.cost_usd, 8)) if self.priced_hits else None,
            "unpriced_hits": self.hits - self.priced_hits,
            "price": "known" if known and self.hits else (
                "unknown" if not self.priced_hits else "partly known"),
        }


# -- prices -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=8192)
def price_usd(model: str, prompt: int, completion: int, cached_prompt: int = 0
              ) -> tuple[Decimal, str] | None:
    """``(price in USD, source)`` of one call, or ``None`` when no table knows ``model``.

    ``cached_prompt`` of the ``prompt`` tokens were read from the provider's prompt cache
    (cheaper on most providers).
    """
    found = _genai_price(model, prompt, completion, cached_prompt)
    if found is None:
        found = _litellm_price(model, prompt, completion)
    return found


def _genai_price(model: str, prompt: int, completion: int,
                 cached_prompt: int) -> tuple[Decimal, str] | None:
    try:
        import genai_prices
    except ImportError:
        return None
    usage = genai_prices.Usage(input_tokens=prompt, output_tokens=completion,
                               cache_read_tokens=cached_prompt or None)
    provider, _, bare = model.partition("/")
    attempts: list[tuple[str, str | None]] = [(bare, provider)] if bare else []
    attempts.append((model, None))
    for model_ref, provider_id in attempts:
        try:
            result = genai_prices.calc_price(usage, model_ref, provider_id=provider_id)
        except LookupError:
            continue
        except Exception:
            return None
        return Decimal(result.total_price), f"genai-prices {genai_prices.__version__}"
    return None


def _litellm_price(model: str, prompt: int, completion: int) -> tuple[Decimal, str] | None:
    # Only when the application already imported LiteLLM: importing it here would fetch
    # its cost map from the network.
    litellm = sys.modules.get("litellm")
    if litellm is None or model not in getattr(litellm, "model_cost", {}):
        return None
    try:
        prompt_cost, completion_cost = litellm.cost_per_token(
            model=model, prompt_tokens=prompt, completion_tokens=completion)
    except Exception:
        return None
    return Decimal(str(prompt_cost)) + Decimal(str(completion_cost)), "litellm cost map"


# -- reading a stored answer ------------------------------------------------------------


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_of(data: Any) -> tuple[int, int, int] | None:
    """``(prompt, completion, cached prompt)`` tokens of a response, or ``None``."""
    usage = data.get("usage") if isinstance(data, Mapping) else None
    if not isinstance(usage, Mapping):
        return None
    prompt = _int(usage.get("prompt_tokens")) or _int(usage.get("input_tokens"))
    completion = _int(usage.get("completion_tokens")) or _int(usage.get("output_tokens"))
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    cached = _int(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
    cached = cached or _int(usage.get("cache_read_input_tokens"))
    if not (prompt or completion):
        return None
    return prompt, completion, min(cached, prompt)


class SavingsLedger:
    """Thread-safe totals of what hits saved, by namespace and model."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[tuple[str, str], _Row] = {}
        self._sources: set[str] = set()
        #: Set by :func:`enable_persistence`: deltas not yet added to the stored totals.
        self.pending: dict[tuple[str, str], _Row] | None = None
        self.persisted_at = 0.0

    def add(self, namespace: str | None, model: str | None, *, prompt: int, completion: int,
            cached_prompt: int = 0, seconds: float | None = None) -> None:
        """Count one hit whose upstream call would have used these tokens and seconds."""
        name = model if isinstance(model, str) and model else "(unknown model)"
        priced = price_usd(name, prompt, completion, cached_prompt) if model else None
        row = _Row(hits=1, prompt_tokens=prompt, completion_tokens=completion,
                   cached_prompt_tokens=cached_prompt,
                   upstream_seconds=seconds if isinstance(seconds, int | float) and seconds > 0
                   else 0.0,
                   priced_hits=1 if priced else 0, cost_usd=priced[0] if priced else Decimal(0))
        key = ("" if namespace is None else namespace, name)
        with self._lock:
            self._rows.setdefault(key, _Row()).add(row)
            if self.pending is not None:
                self.pending.setdefault(key, _Row()).add(row)
            if priced:
                self._sources.add(priced[1])

    def take_pending(self) -> dict[tuple[str, str], _Row]:
        """The deltas not yet persisted (and forget them)."""
        with self._lock:
            taken, self.pending = self.pending or {}, ({} if self.pending is not None else None)
            return taken

    def give_back(self, rows: Mapping[tuple[str, str], _Row]) -> None:
        """Put deltas whose persisting failed back, to be retried."""
        with self._lock:
            if self.pending is None:
                return
            for key, row in rows.items():
                self.pending.setdefault(key, _Row()).add(row)

    def snapshot(self) -> dict[str, Any]:
        """Totals, then ``models`` and ``namespaces`` breakdowns (see :class:`_Row`)."""
        with self._lock:
            rows = {key: dataclasses.replace(row) for key, row in self._rows.items()}
            sources = sorted(self._sources)
        total = _Row()
        models: dict[str, _Row] = {}
        namespaces: dict[str, _Row] = {}
        for (namespace, model), row in sorted(rows.items()):
            total.add(row)
            models.setdefault(model, _Row()).add(row)
            namespaces.setdefault(namespace, _Row()).add(row)
        return {**total.as_dict(), "price_sources": sources,
                "models": {name: row.as_dict() for name, row in models.items()},
                "namespaces": {name: row.as_dict() for name, row in namespaces.items()}}

    def rows(self) -> list[tuple[str, str, dict[str, Any]]]:
        """``(namespace, model, figures)`` for every pair seen (what exporters publish)."""
        with self._lock:
            items = sorted(self._rows.items())
            return [(ns, model, row.as_dict()) for (ns, model), row in items]

    def reset(self) -> None:
        with self._lock:
            self._rows.clear()
            self._sources.clear()


_ledger_lock = threading.Lock()


#: Stored counters: ``<prefix><model>:<field>``, and the list of models of a namespace.
STORED_PREFIX = "asynccache-saved:"
STORED_MODELS = "asynccache-saved-models"
#: Seconds between two writes of the stored totals from the hit path.
PERSIST_INTERVAL = 10.0
_persisting: set[Any] = set()


def enable_persistence(cache: Any) -> None:
    """Keep ``cache``'s savings in the cache itself too, so every process's hits add up
    and ``asynccache stats`` can read them (written every 10 s and on flush/close)."""
    ledger = ledger_of(cache)
    with ledger._lock:
        if ledger.pending is None:
            ledger.pending = {}


async def persist(cache: Any) -> None:
    """Add this process's new savings to the totals stored in ``cache`` (atomic
    increments on Redis; a failed write is kept and retried next time)."""
    ledger = ledger_of(cache)
    ledger.persisted_at = time.monotonic()
    rows = ledger.take_pending()
    failed: dict[tuple[str, str], _Row] = {}
    by_namespace: dict[str, set[str]] = {}
    for (namespace, model), row in rows.items():
        ns = namespace or None
        for field in FIELDS:
            amount = getattr(row, field)
            if not amount:
                continue
            done = await cache.async_increment(f"{STORED_PREFIX}{model}:{field}",
                                               float(amount), ttl=None, namespace=ns)
            if done is None:
                failed.setdefault((namespace, model), _Row()).add(_Row(**{field: amount}))
        by_namespace.setdefault(namespace, set()).add(model)
    for namespace, models in by_namespace.items():
        ns = namespace or None
        known = await cache.async_get_cache(STORED_MODELS, namespace=ns)
        known = list(known) if isinstance(known, list) else []
        if not models <= set(known):
            await cache.async_set_cache(STORED_MODELS, sorted(set(known) | models), ttl=None,
                                        namespace=ns)
    if failed:
        ledger.give_back(failed)


def _maybe_persist(cache: Any, ledger: SavingsLedger) -> None:
    if ledger.pending is None or time.monotonic() - ledger.persisted_at < PERSIST_INTERVAL:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    ledger.persisted_at = time.monotonic()
    task = loop.create_task(persist(cache))
    _persisting.add(task)  # keep a reference until it is done
    task.add_done_callback(_persisting.discard)


async def stored_savings(cache: Any, namespace: str | None = None) -> dict[str, Any]:
    """The savings totals stored in ``cache`` for ``namespace``, by model (see
    :func:`enable_persistence`); the same shape as ``stats()["saved"]``."""
    models = await cache.async_get_cache(STORED_MODELS, namespace=namespace)
    models = [m for m in models if isinstance(m, str)] if isinstance(models, list) else []
    keys = [f"{STORED_PREFIX}{model}:{field}" for model in models for field in FIELDS]
    values = await cache.async_batch_get_cache(keys, namespace=namespace) if keys else []
    total = _Row()
    rows: dict[str, dict[str, Any]] = {}
    for index, model in enumerate(models):
        found = values[index * len(FIELDS):(index + 1) * len(FIELDS)]
        figures = {field: (value if isinstance(value, int | float) else 0)
                   for field, value in zip(FIELDS, found, strict=True)}
        row = _Row(**{field: (Decimal(str(value)) if field == "cost_usd" else
                              value if field == "upstream_seconds" else int(value))
                      for field, value in figures.items()})  # type: ignore[arg-type]
        total.add(row)
        rows[model] = row.as_dict()
    return {**total.as_dict(), "models": rows}


def ledger_of(cache: Any) -> SavingsLedger:
    """The ledger of ``cache`` (created on first use)."""
    ledger = getattr(cache, "_savings", None)
    if ledger is None:
        with _ledger_lock:
            ledger = getattr(cache, "_savings", None)
            if ledger is None:
                ledger = SavingsLedger()
                cache._savings = ledger
    return ledger


def snapshot_of(cache: Any) -> dict[str, Any]:
    """What ``stats()["saved"]`` shows for ``cache``."""
    return ledger_of(cache).snapshot()


def count_saved(cache: Any, data: Any, *, namespace: str | None, model: Any = None,
                seconds: Any = None, usage: tuple[int, int, int] | None = None) -> None:
    """Count one hit answered with response ``data`` (usage and model read from it).

    Never raises: a response without usage counts a hit with zero tokens.
    """
    try:
        if usage is None:
            usage = usage_of(data) or (0, 0, 0)
        if isinstance(data, Mapping) and isinstance(data.get("model"), str) and data["model"]:
            model = data["model"]
        prompt, completion, cached = usage
        ledger = ledger_of(cache)
        ledger.add(namespace, model if isinstance(model, str) else None,
                   prompt=prompt, completion=completion, cached_prompt=cached,
                   seconds=seconds if isinstance(seconds, int | float) else None)
        _maybe_persist(cache, ledger)
    except Exception:  # accounting must never break a hit
        import logging

        logging.getLogger("asynccache.savings").debug("counting a saving failed", exc_info=True)
