"""Timing primitives shared by every benchmark: warm-up, repeats, medians, loop lag.

A contender is an async callable that performs ``ops`` operations per call. ``measure``
runs it ``warmup`` times untimed, then ``repeats`` times timed, and reports ops/s from
the median run with the min-max spread.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Result:
    """One contender's figures in one scenario."""

    scenario: str
    library: str
    ops: int
    median_s: float
    min_s: float
    max_s: float
    loop_lag_p99_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.median_s if self.median_s > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ops_per_s": self.ops_per_s}


class LoopLagProbe:
    """A ticker task that records how late each wake-up was (event-loop lag).

    With ``count_final_stall``, the wake-up still pending when the probe stops counts too:
    a contender that never yields (a blocking call inside ``async def``) then shows its
    whole run as one stall instead of no figure at all.
    """

    def __init__(self, interval: float = 0.001, *, count_final_stall: bool = False) -> None:
        self.interval = interval
        self.count_final_stall = count_final_stall
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._expected = 0.0

    async def _tick(self) -> None:
        while True:
            self._expected = time.perf_counter() + self.interval
            await asyncio.sleep(self.interval)
            self.lags.append(max(0.0, time.perf_counter() - self._expected))

    async def __aenter__(self) -> LoopLagProbe:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        if self.count_final_stall and self._expected:
            stalled = time.perf_counter() - self._expected
            if stalled > 0:
                self.lags.append(stalled)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    def p99_ms(self) -> float | None:
        if not self.lags:
            return None
        ordered = sorted(self.lags)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


async def measure(
    scenario: str,
    library: str,
    run: Callable[[], Awaitable[Any]],
    ops: int,
    *,
    repeats: int = 5,
    warmup: int = 1,
    probe_loop: bool = False,
    count_final_stall: bool = False,
    probe: LoopLagProbe | None = None,
) -> Result:
    """Time ``run`` (which does ``ops`` operations) and return its :class:`Result`.

    ``probe_loop`` records the event loop's lag during the timed runs (see
    :class:`LoopLagProbe` for ``count_final_stall``); a ``probe`` passed in is used
    instead and keeps its samples across calls (the lag is then over all of them).
    """
    # Every row starts from the same heap: what earlier rows left is collected, and what
    # is still alive (the peers' imports, caches filled for other rows) is moved out of the
    # collector's reach, so a full collection it would trigger is not charged to this row.
    gc.collect()
    gc.freeze()
    for _ in range(warmup):
        await run()
    durations: list[float] = []
    if probe is None and probe_loop:
        probe = LoopLagProbe(count_final_stall=count_final_stall)
    if probe is not None:
        await probe.__aenter__()
        await asyncio.sleep(0)  # let the ticker arm its first wake-up
    try:
        for _ in range(repeats):
            started = time.perf_counter()
            await run()
            durations.append(time.perf_counter() - started)
    finally:
        if probe is not None:
            await probe.__aexit__(None, None, None)
    return Result(scenario, library, ops, statistics.median(durations), min(durations),
                  max(durations), probe.p99_ms() if probe is not None else None)


async def measure_in_turns(
    scenario: str,
    contenders: Sequence[tuple[str, Callable[[], Awaitable[Any]], bool]],
    ops: int,
    *,
    repeats: int = 5,
    count_final_stall: bool = False,
) -> list[Result]:
    """:func:`measure` for several ``(library, run, probe_loop)`` contenders taking turns:
    one timed run each per round, ``repeats`` rounds.

    On a shared machine the load changes from second to second; taking turns exposes every
    contender to the same conditions, so the ratios within the scenario hold better than
    with each one's runs back to back. A row's time is its median round, its loop lag the
    p99 over all its rounds.
    """
    rounds: dict[str, list[Result]] = {library: [] for library, _, _ in contenders}
    probes = {library: LoopLagProbe(count_final_stall=count_final_stall)
              for library, _, probe_loop in contenders if probe_loop}
    for turn in range(repeats):
        for library, run, _ in contenders:
            rounds[library].append(await measure(
                scenario, library, run, ops, repeats=1, warmup=1 if turn == 0 else 0,
                probe=probes.get(library)))
    merged = []
    for library, _, _ in contenders:
        done = rounds[library]
        probe = probes.get(library)
        merged.append(Result(scenario, library, ops, statistics.median(r.median_s for r in done),
                             min(r.min_s for r in done), max(r.max_s for r in done),
                             None if probe is None else probe.p99_ms()))
    return merged


def ratio(result: Result, baseline: Result) -> float:
    """How many times faster ``result`` is than ``baseline`` (ops/s over ops/s)."""
    return result.ops_per_s / baseline.ops_per_s


def target_lines(results: list[Result], targets: list[tuple[Any, ...]]) -> list[str]:
    """One line per target, met or not: ``(scenario, ours, baseline, minimum ratio)``, or
    ``(scenario, ours, baseline, baseline's scenario, minimum ratio)`` when the baseline
    is measured in another scenario (raw single gets against 64 concurrent tasks)."""
    lines = []
    for target_spec in targets:
        scenario, mine, base_label, *rest = target_spec
        base_scenario, target = rest if len(rest) == 2 else (scenario, rest[0])
        ours = next((r for r in results if r.scenario == scenario and r.library == mine), None)
        base = next((r for r in results
                     if r.scenario == base_scenario and r.library == base_label), None)
        if ours is None or base is None:
            continue
        got = ratio(ours, base)
        against = base_label if base_scenario == scenario else f"{base_label} {base_scenario}"
        lines.append(f"target {scenario}: {got:.2f}x {against} (>= {target}x) "
                     f"{'met' if got >= target else 'NOT met'}")
    return lines
