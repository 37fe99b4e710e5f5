"""The benchmark harness's own logic (the figures themselves live in benchmarks/)."""

from __future__ import annotations

import asyncio

from benchmarks._measure import measure_in_turns


async def test_contenders_take_turns_and_each_gets_one_merged_row():
    order: list[str] = []

    def contender(name: str):
        async def run() -> None:
            order.append(name)
            await asyncio.sleep(0.003)  # long enough for the 1 ms lag ticker to fire
        return run

    rows = await measure_in_turns("turns", [("a", contender("a"), True),
                                            ("b", contender("b"), False)], ops=10, repeats=3)
    # One warm-up each in the first round, then one timed run each per round, in turn.
    assert order == ["a", "a", "b", "b", "a", "b", "a", "b"]
    assert [(r.scenario, r.library, r.ops) for r in rows] == [("turns", "a", 10),
                                                          ("turns", "b", 10)]
    assert all(r.min_s <= r.median_s <= r.max_s for r in rows)
    assert rows[0].loop_lag_p99_ms is not None  # probed
    assert rows[1].loop_lag_p99_ms is None  # not probed
