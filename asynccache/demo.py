"""``asynccache demo``: a simulated LLM workload through the embedded in-memory cache.

A built-in fake model answers like a chat completion API, with latency
(``asyncio.sleep`` of 50-300 ms per call, the same for the same request in both runs).
The workload runs on an event loop with a simulated clock: whenever every task waits,
the clock jumps to the next timer. So the demo takes well under a second, and the same
seed gives the same counts (hits, merged calls) and the same times on every run and
every machine, where real sleeps would let a loaded machine reorder close finishes.
The workload repeats popular questions more often than rare ones (a Zipf-like mix, as
in real traffic) and varies the wording, language and temperature. It runs twice with
the same requests: once straight to the model, once through :class:`~asynccache.Cache`,
and prints calls, hits, misses, hit rate and both wall times. No server needed.

>>> from asynccache.demo import run_demo, format_report
>>> report = asyncio.run(run_demo(calls=40, seed=1))       # doctest: +SKIP
>>> print(format_report(report))                           # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import selectors
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .exceptions import ConfigurationError
from .facade import Cache
from .sampling import is_sampling

__all__ = [
    "QUESTIONS", "SYSTEM_PROMPT", "DemoReport", "FakeModel", "build_workload", "format_report",
    "run_demo",
]

SYSTEM_PROMPT = "You are a concise, friendly assistant for an online bookshop."

#: Questions users ask, most popular first (the workload draws them with Zipf weights).
QUESTIONS = (
    "What are your opening hours?",
    "How long does delivery take to Lyon?",
    "Can I return a book I bought as a gift?",
    "Do you ship to Canada?",
    "Quels sont vos délais de livraison ?",
    "Recommend a science-fiction novel for a teenager.",
    "Is 'The Left Hand of Darkness' in stock?",
    "How do I change my delivery address?",
    "¿Tienen libros en español?",
    "What payment methods do you accept?",
    "Summarise the plot of 'Dune' in two sentences.",
    "请推荐一本关于历史的书。",
    "Can I pre-order the next volume of 'The Expanse'?",
    "Do you have gift cards?",
    "Wie lange dauert der Versand nach Berlin?",
    "What is your privacy policy?",
    "Recommend a cookbook for vegetarian beginners.",
    "Do you buy second-hand books?",
    "How do I reset my password?",
    "Can I pick up my order in the shop?",
    "Are e-books DRM free?",
    "Translate 'good morning' into Japanese.",
    "What's the difference between hardback and paperback editions?",
    "Do you organise author signings?",
    "Which books won the Booker Prize last year?",
)


@dataclass
class DemoReport:
    """Figures of one demo run (both passes over the same requests)."""

    calls: int
    distinct_requests: int
    concurrency: int
    seed: int
    min_latency: float
    max_latency: float
    seconds_without_cache: float
    seconds_with_cache: float
    model_calls_without_cache: int
    model_calls_with_cache: int
    hits: int
    coalesced: int
    misses: int
    answers_match: bool
    via: str
    cache_stats: dict[str, Any] = field(default_factory=dict)
    sampling: str = "cache"
    sampled_calls: int = 0
    sampled_hits: int = 0

    @property
    def hit_rate(self) -> float:
        """Share of calls answered without calling the model."""
        return (self.hits + self.coalesced) / self.calls if self.calls else 0.0

    @property
    def speedup(self) -> float:
        """Wall time without the cache over wall time with it."""
        if self.seconds_with_cache <= 0:
            return float("inf")
        return self.seconds_without_cache / self.seconds_with_cache


class FakeModel:
    """A simulated chat completion API: deterministic answers, real (sleep) latency.

    The latency of a request is drawn from ``[min_latency, max_latency]`` by a hash of
    the request and ``seed``, so the same request is as slow in every pass.
    """

    def __init__(self, *, seed: int = 0, min_latency: float = 0.05,
                 max_latency: float = 0.3) -> None:
        if min_latency < 0 or max_latency < min_latency:
            raise ConfigurationError(
                f"need 0 <= min_latency <= max_latency, got {min_latency!r}, {max_latency!r}"
            )
        self.seed = seed
        self.min_latency = min_latency
        self.max_latency = max_latency
        self.calls = 0

    def _digest(self, model: str, messages: list[dict[str, Any]], temperature: float) -> bytes:
        text = f"{self.seed}|{model}|{temperature}|" + "|".join(
            f"{m['role']}:{m['content']}" for m in messages
        )
        return hashlib.sha256(text.encode()).digest()

    def latency(self, model: str, messages: list[dict[str, Any]], temperature: float) -> float:
        """How long this request takes (seconds)."""
        fraction = int.from_bytes(self._digest(model, messages, temperature)[:8], "big") / 2**64
        return self.min_latency + fraction * (self.max_latency - self.min_latency)

    async def acompletion(self, *, model: str, messages: list[dict[str, Any]],
                          temperature: float = 1.0, **_: Any) -> dict[str, Any]:
        """Answer like ``chat.completions.create`` after a realistic delay."""
        self.calls += 1
        await asyncio.sleep(self.latency(model, messages, temperature))
        return self.answer(model, messages, temperature)

    def answer(self, model: str, messages: list[dict[str, Any]],
               temperature: float) -> dict[str, Any]:
        """The (deterministic) completion for a request, about 1-2 KB of JSON."""
        digest = self._digest(model, messages, temperature).hex()
        question = messages[-1]["content"]
        content = (f"Voici la réponse à « {question} » — thank you for asking! "
                   f"[{digest[:12]}] ") * 8
        return {
            "id": "chatcmpl-" + digest[:24],
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 20 + len(question) // 4,
                      "completion_tokens": len(content) // 4,
                      "total_tokens": 20 + len(question) // 4 + len(content) // 4},
        }


def build_workload(calls: int, seed: int) -> list[dict[str, Any]]:
    """``calls`` chat requests: popular questions repeat, wording and temperature vary."""
    if calls <= 0:
        raise ConfigurationError(f"calls must be > 0, got {calls!r}")
    rng = random.Random(seed)
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(QUESTIONS))]
    requests: list[dict[str, Any]] = []
    for _ in range(calls):
        question = rng.choices(QUESTIONS, weights)[0]
        roll = rng.random()
        if roll < 0.1:
            question = question.lower()  # same meaning, other wording: an exact-key miss
        temperature = 0.7 if rng.random() < 0.15 else 0.0
        requests.append({
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                         {"role": "user", "content": question}],
            "temperature": temperature,
            # Credentials and transport settings never change the cache key.
            "api_key": "sk-demo-" + uuid.UUID(int=rng.getrandbits(128)).hex[:8],
            "timeout": 30,
        })
    return requests


async def _run_all(requests: list[dict[str, Any]], concurrency: int,
                   call: Callable[[dict[str, Any]], Awaitable[Any]]) -> tuple[float, list[Any]]:
    results: list[Any] = [None] * len(requests)
    semaphore = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with semaphore:
            results[index] = await call(requests[index])

    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(one(i) for i in range(len(requests))))
    return loop.time() - started, results


class _SkipAheadSelector(selectors.BaseSelector):
    """A selector that, instead of sleeping until the next timer, moves the clock there."""

    def __init__(self, clock: list[float]) -> None:
        self._inner = selectors.DefaultSelector()
        self._clock = clock

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._inner.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: only real I/O can wake the loop
            return self._inner.select(None)
        self._clock[0] += timeout
        return []

    def get_map(self) -> Any:
        return self._inner.get_map()

    def close(self) -> None:
        self._inner.close()


class _SimulatedTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on a simulated clock (see the module docstring)."""

    def __init__(self) -> None:
        self._simulated = [0.0]
        super().__init__(_SkipAheadSelector(self._simulated))

    def time(self) -> float:
        return self._simulated[0]


def _wrapper_factory() -> Callable[..., Any] | None:
    try:
        from .integrations.wrappers import cached
    except ImportError:
        return None
    return cached


async def run_demo(calls: int = 120, seed: int = 7, *, concurrency: int = 8,
                   min_latency: float = 0.05, max_latency: float = 0.3,
                   use_wrapper: bool = True, sampling: str = "cache") -> DemoReport:
    """Run the workload without, then with, the cache; return the figures.

    With ``use_wrapper`` (and :mod:`asynccache.integrations.wrappers` available) the
    model goes through ``cached(...)``, which also merges identical in-flight calls;
    otherwise through :meth:`Cache.async_lookup` / :meth:`Cache.async_store`.
    ``sampling`` is the cache's policy for the requests sent with ``temperature=0.7``
    (see :mod:`asynccache.sampling`; the wrapper applies it).
    """
    if concurrency <= 0:
        raise ConfigurationError(f"concurrency must be > 0, got {concurrency!r}")
    return await asyncio.to_thread(_simulate, calls, seed, concurrency, min_latency,
                                   max_latency, use_wrapper, sampling)


def _simulate(calls: int, seed: int, concurrency: int, min_latency: float,
              max_latency: float, use_wrapper: bool, sampling: str) -> DemoReport:
    loop = _SimulatedTimeLoop()
    try:
        return loop.run_until_complete(_both_passes(calls, seed, concurrency, min_latency,
                                                    max_latency, use_wrapper, sampling))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _both_passes(calls: int, seed: int, concurrency: int, min_latency: float,
                       max_latency: float, use_wrapper: bool, sampling: str) -> DemoReport:
    requests = build_workload(calls, seed)
    cache = Cache(ttl=3600, sampling=sampling)
    distinct = len({cache.get_cache_key(**r) for r in requests})

    direct = FakeModel(seed=seed, min_latency=min_latency, max_latency=max_latency)
    seconds_without, _ = await _run_all(requests, concurrency,
                                        lambda r: direct.acompletion(**r))

    model = FakeModel(seed=seed, min_latency=min_latency, max_latency=max_latency)
    hits = coalesced = sampled_hits = 0
    cached = _wrapper_factory() if use_wrapper else None
    if cached is not None:
        from .integrations.responses import cache_info

        via = "cached() wrapper"
        wrapped = cached(model.acompletion, cache=cache)

        async def through_cache(request: dict[str, Any]) -> Any:
            nonlocal hits, coalesced, sampled_hits
            result = await wrapped(**request)
            info = cache_info(result)
            if info is not None and info.cache_hit:
                hits += 1
                sampled_hits += is_sampling(request)
            elif info is not None and info.coalesced:
                coalesced += 1
            return result
    else:
        via = "Cache.async_lookup / async_store"

        async def through_cache(request: dict[str, Any]) -> Any:
            nonlocal hits
            hit = await cache.async_lookup(request)
            if hit is not None:
                hits += 1
                return hit.value
            result = await model.acompletion(**request)
            await cache.async_store(request, result)
            return result

    try:
        seconds_with, answers = await _run_all(requests, concurrency, through_cache)
        answers_match = all(
            _content(answer) == _content(model.answer(r["model"], r["messages"],
                                                      r["temperature"]))
            for answer, r in zip(answers, requests, strict=True)
            if not is_sampling(r) or sampling == "cache"
        )
        stats = cache.stats()
    finally:
        await cache.aclose()
    return DemoReport(
        calls=calls, distinct_requests=distinct, concurrency=concurrency, seed=seed,
        min_latency=min_latency, max_latency=max_latency,
        seconds_without_cache=seconds_without, seconds_with_cache=seconds_with,
        model_calls_without_cache=direct.calls, model_calls_with_cache=model.calls,
        hits=hits, coalesced=coalesced, misses=calls - hits - coalesced,
        answers_match=answers_match, via=via, cache_stats=stats, sampling=sampling,
        sampled_calls=sum(is_sampling(r) for r in requests), sampled_hits=sampled_hits,
    )


def _content(answer: Any) -> Any:
    if isinstance(answer, dict):
        return answer["choices"][0]["message"]["content"]
    return answer.choices[0].message.content  # pragma: no cover - pydantic responses


def format_report(report: DemoReport) -> str:
    """The demo's result as a plain-text table (no extra dependency)."""
    rows = [
        ("calls", str(report.calls), str(report.calls)),
        ("model calls", str(report.model_calls_without_cache),
         str(report.model_calls_with_cache)),
        ("cache hits", "-", str(report.hits)),
        ("merged in flight", "-", str(report.coalesced)),
        ("misses", str(report.calls), str(report.misses)),
        ("hit rate", "0.0%", f"{report.hit_rate:.1%}"),
        ("time (simulated)", f"{report.seconds_without_cache:.2f} s",
         f"{report.seconds_with_cache:.2f} s"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [
        "asynccache demo: simulated LLM workload on the embedded in-memory cache",
        f"{report.calls} calls, {report.distinct_requests} distinct requests, model latency "
        f"{report.min_latency * 1000:.0f}-{report.max_latency * 1000:.0f} ms, "
        f"concurrency {report.concurrency}, seed {report.seed}, via {report.via}",
        "",
        f"{'':<{width}}  {'without cache':>14}  {'with cache':>12}",
    ]
    lines += [f"{name:<{width}}  {a:>14}  {b:>12}" for name, a, b in rows]
    lines.append(f"{'speed-up':<{width}}  {'':>14}  {report.speedup:>11.1f}x")
    get = report.cache_stats.get("latency", {}).get("get")
    if get:
        lines.append("")
        lines.append(f"cache get latency (cache.stats()): p50 {get['p50_ms']:.3f} ms, "
                     f"p99 {get['p99_ms']:.3f} ms over {get['count']} timed reads")
    lines += _savings_lines(report.cache_stats.get("saved") or {})
    lines.append(_sampling_line(report))
    lines.append("every answer from the cache matched the model's: "
                 + ("yes" if report.answers_match else "NO"))
    return "\n".join(lines)


def _savings_lines(saved: dict[str, Any]) -> list[str]:
    if not saved.get("hits"):
        return []
    cost = saved.get("cost_usd")
    price = (f"${cost:.4f} at list prices ({', '.join(saved.get('price_sources') or [])})"
             if cost is not None else "price unknown for this model")
    if cost is not None and saved.get("unpriced_hits"):
        price += f", plus {saved['unpriced_hits']} hits of models with no known price"
    return ["", f"saved by {saved['hits']} cache hits (cache.stats()['saved']): "
                f"{saved['total_tokens']:,} tokens, {price}, "
                f"{saved['upstream_seconds']:.1f} s of model time"]


def _sampling_line(report: DemoReport) -> str:
    calls, hits = report.sampled_calls, report.sampled_hits
    if report.sampling == "cache":
        return (f"sampling policy 'cache' (the default): {calls} calls asked for "
                f"temperature 0.7 and {hits} were answered from the cache like any other "
                "(--sampling pool keeps several distinct samples instead)")
    if report.sampling == "skip":
        return (f"sampling policy 'skip': the {calls} calls with temperature 0.7 all went "
                "to the model and none were stored")
    return (f"sampling policy 'pool': {calls} calls with temperature 0.7, {hits} served from "
            "pools of distinct samples (5 per request), the rest filled the pools")
