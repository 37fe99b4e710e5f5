"""Requests meant to vary: cache them, skip them, or keep a pool of distinct samples.

A request *samples* when it sets ``temperature > 0``, ``top_p < 1`` or ``n > 1`` and
no ``seed``. Caching such a request the usual way answers every repetition with the
first sample, which is what a chat front end wants and what an evaluation run that
draws several samples does not. ``Cache(sampling=...)`` picks the policy:

* ``"cache"`` (the default): sampled requests are cached like any other;
* ``"skip"``: they always go upstream and are never stored;
* ``"pool"``: each request keeps up to ``pool_size`` answers. A call made while the
  pool is not full goes upstream and adds its answer(s); once full, calls are answered
  from the pool in turn (``serve="round_robin"``, per process) or at random
  (``serve="random"``). A request with ``n=3`` takes 3 distinct answers from the pool
  when it holds that many, and adds all 3 of its choices when it goes upstream.

A request that does not set ``temperature`` is not treated as sampling (providers
differ in their defaults); set it explicitly to opt in.

>>> is_sampling({"model": "m", "temperature": 0.7})
True
>>> is_sampling({"model": "m", "temperature": 0.7, "seed": 1})
False
>>> parse_sampling({"mode": "pool", "pool_size": 3})
SamplingPolicy(mode='pool', pool_size=3, serve='round_robin')
"""

from __future__ import annotations

import random
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .exceptions import ConfigurationError

__all__ = [
    "DEFAULT_SAMPLING", "MODES", "POOL_KIND", "POOL_SUFFIX", "SERVE", "PoolServer",
    "SamplingPolicy", "add_answers", "is_full", "is_sampling", "merge_choices", "new_pool",
    "parse_sampling", "pool_request", "samples_wanted", "split_choices",
]

MODES = ("cache", "skip", "pool")
SERVE = ("round_robin", "random")
POOL_KIND = "sample-pool"
#: Suffix of the key a request's pool is stored under (the request's key without ``n``).
POOL_SUFFIX = ":pool"


@dataclass(frozen=True)
class SamplingPolicy:
    """What the wrappers do with requests meant to vary (see the module docstring)."""

    mode: str = "cache"
    pool_size: int = 5
    serve: str = "round_robin"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigurationError(
                f"sampling mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if isinstance(self.pool_size, bool) or not isinstance(self.pool_size, int) or (
                self.pool_size < 1):
            raise ConfigurationError(
                f"sampling pool_size must be a positive int, got {self.pool_size!r}")
        if self.serve not in SERVE:
            raise ConfigurationError(
                f"sampling serve must be one of {', '.join(SERVE)}, got {self.serve!r}")

    def handles(self, call_kwargs: Mapping[str, Any]) -> bool:
        """Whether this call takes the skip or pool path instead of the plain cache."""
        return self.mode != "cache" and is_sampling(call_kwargs)


DEFAULT_SAMPLING = SamplingPolicy()


def parse_sampling(value: object) -> SamplingPolicy:
    """A :class:`SamplingPolicy` from ``None``, a mode name, a dict or a policy."""
    if value is None:
        return DEFAULT_SAMPLING
    if isinstance(value, SamplingPolicy):
        return value
    if isinstance(value, str):
        return SamplingPolicy(mode=value)
    if isinstance(value, Mapping):
        unknown = set(value) - {"mode", "pool_size", "serve"}
        if unknown:
            raise ConfigurationError(
                f"unknown sampling setting(s) {sorted(unknown)}; known: mode, pool_size, serve")
        return SamplingPolicy(**value)
    raise ConfigurationError(
        f"sampling must be 'cache', 'skip', 'pool', a dict or a SamplingPolicy, got {value!r}")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def is_sampling(call_kwargs: Mapping[str, Any]) -> bool:
    """Whether a request is meant to vary: temperature > 0, top_p < 1 or n > 1, no seed."""
    if call_kwargs.get("seed") is not None:
        return False
    temperature = _number(call_kwargs.get("temperature"))
    top_p = _number(call_kwargs.get("top_p"))
    n = _number(call_kwargs.get("n"))
    return bool((temperature is not None and temperature > 0)
                or (top_p is not None and top_p < 1) or (n is not None and n > 1))


def samples_wanted(call_kwargs: Mapping[str, Any]) -> int:
    """How many choices the call asks for (``n``, default 1)."""
    n = call_kwargs.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1


def pool_request(call_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The request a pool belongs to: the call without ``n`` (n=1 and n=3 share a pool)."""
    return {name: value for name, value in call_kwargs.items() if name != "n"}


# -- answers in and out of a pool -------------------------------------------------------


def _share(total: Any, count: int, position: int) -> Any:
    if not isinstance(total, int) or isinstance(total, bool):
        return total
    quotient, remainder = divmod(total, count)
    return quotient + (1 if position < remainder else 0)


def split_choices(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One single-choice response per choice of ``data``, usage shared out evenly."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        return []
    count = len(choices)
    usage = data.get("usage") if isinstance(data.get("usage"), Mapping) else None
    answers = []
    for position, choice in enumerate(choices):
        answer = {**data, "choices": [{**choice, "index": 0}]}
        if usage is not None:
            answer["usage"] = {name: _share(value, count, position)
                               for name, value in usage.items()}
        answers.append(answer)
    return answers


def merge_choices(answers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One response holding the choices of ``answers`` in order, usage summed."""
    merged = dict(answers[0])
    merged["choices"] = [{**answer["choices"][0], "index": index}
                         for index, answer in enumerate(answers)]
    usages: list[Mapping[str, Any]] = [a["usage"] for a in answers
                                       if isinstance(a.get("usage"), Mapping)]
    if usages:
        # Sum the token counts; nested details (dicts) are left out of a merged answer.
        merged["usage"] = {
            name: sum(u.get(name) or 0 for u in usages) for name in usages[0]
            if all(isinstance(u.get(name), int | type(None)) for u in usages)
        }
    return merged


def _fingerprint(answer: Mapping[str, Any]) -> bytes:
    choice = answer["choices"][0]
    return orjson.dumps({k: choice.get(k) for k in ("message", "text")},
                        option=orjson.OPT_SORT_KEYS)


def new_pool(stored: Any) -> dict[str, Any]:
    """The pool stored under a pool key (an empty one if ``stored`` is not a pool)."""
    if (isinstance(stored, Mapping) and stored.get("kind") == POOL_KIND
            and isinstance(stored.get("answers"), list)):
        return {"kind": POOL_KIND, "type": stored.get("type"),
                "draws": int(stored.get("draws") or 0), "answers": list(stored["answers"]),
                "upstream_seconds": stored.get("upstream_seconds")}
    return {"kind": POOL_KIND, "type": None, "draws": 0, "answers": [],
            "upstream_seconds": None}


def add_answers(pool: dict[str, Any], answers: Sequence[Mapping[str, Any]], size: int,
                stored_type: str | None, seconds: float | None) -> dict[str, Any]:
    """``pool`` with the distinct new ``answers`` added, up to ``size`` answers."""
    seen = {_fingerprint(answer) for answer in pool["answers"]}
    for answer in answers:
        if len(pool["answers"]) >= size:
            break
        pool["draws"] += 1
        fingerprint = _fingerprint(answer)
        if fingerprint not in seen:
            seen.add(fingerprint)
            pool["answers"].append(dict(answer))
    pool["type"] = pool["type"] or stored_type
    if seconds is not None:
        pool["upstream_seconds"] = seconds
    return pool


def is_full(pool: Mapping[str, Any], size: int) -> bool:
    """A pool is full once ``size`` samples were drawn (duplicates count as draws)."""
    return bool(pool["answers"]) and (len(pool["answers"]) >= size or pool["draws"] >= size)


class PoolServer:
    """Picks answers out of full pools: round robin per pool (per process) or random."""

    def __init__(self, serve: str = "round_robin", *, seed: int | None = None,
                 remembered: int = 10_000) -> None:
        self.serve = serve
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._next: OrderedDict[str, int] = OrderedDict()
        self._remembered = remembered

    def pick(self, pool_key: str, answers: Sequence[Any], wanted: int) -> list[Any]:
        """``wanted`` distinct answers (``wanted <= len(answers)``)."""
        if self.serve == "random":
            with self._lock:
                return self._random.sample(list(answers), wanted)
        with self._lock:
            start = self._next.pop(pool_key, 0) % len(answers)
            self._next[pool_key] = start + wanted
            if len(self._next) > self._remembered:
                self._next.popitem(last=False)
        return [answers[(start + offset) % len(answers)] for offset in range(wanted)]
