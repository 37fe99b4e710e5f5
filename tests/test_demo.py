"""``asynccache demo``: the simulated workload, its figures and its table."""

from __future__ import annotations

import pytest

from asynccache.demo import FakeModel, build_workload, format_report, run_demo

FAST = {"min_latency": 0.001, "max_latency": 0.004}


def test_workload_is_seeded_and_repeats_popular_requests():
    first, again, other = build_workload(50, 3), build_workload(50, 3), build_workload(50, 4)
    assert first == again
    assert first != other
    questions = [r["messages"][-1]["content"] for r in first]
    assert len(set(questions)) < len(questions)  # some repeat
    with pytest.raises(ValueError, match="calls"):
        build_workload(0, 1)


def test_fake_model_latency_is_per_request_and_in_range():
    model = FakeModel(seed=1, min_latency=0.05, max_latency=0.3)
    messages = [{"role": "user", "content": "hi"}]
    latency = model.latency("m", messages, 0.0)
    assert 0.05 <= latency <= 0.3
    assert model.latency("m", messages, 0.0) == latency
    assert model.latency("m", [{"role": "user", "content": "hello"}], 0.0) != latency
    with pytest.raises(ValueError, match="min_latency"):
        FakeModel(min_latency=0.3, max_latency=0.1)


@pytest.mark.parametrize("use_wrapper", [True, False])
async def test_demo_hits_and_table(use_wrapper):
    report = await run_demo(40, 5, concurrency=4, use_wrapper=use_wrapper, **FAST)
    assert report.calls == 40
    assert report.hits + report.coalesced + report.misses == 40
    assert report.hit_rate > 0
    assert report.model_calls_without_cache == 40
    assert report.model_calls_with_cache == report.misses
    assert report.model_calls_with_cache >= report.distinct_requests
    assert report.answers_match
    assert report.cache_stats["hits"] >= report.hits
    if report.via.startswith("cached"):
        # Single-flight: each distinct request reaches the model exactly once.
        assert report.model_calls_with_cache == report.distinct_requests
    else:
        assert report.coalesced == 0
    table = format_report(report)
    for label in ("calls", "cache hits", "misses", "hit rate", "time (simulated)", "speed-up"):
        assert label in table
    assert f"{report.hit_rate:.1%}" in table


async def test_demo_rejects_bad_concurrency():
    with pytest.raises(ValueError, match="concurrency"):
        await run_demo(5, 1, concurrency=0, **FAST)


async def test_same_seed_gives_the_same_counts_and_times_on_every_run():
    """Regression: real sleeps on a loaded machine gave 72/14, 73/13, 74/12 hits/merged."""
    runs = [await run_demo(120, 7) for _ in range(3)]
    figures = {(r.hits, r.coalesced, r.misses, r.model_calls_with_cache,
                r.seconds_without_cache, r.seconds_with_cache) for r in runs}
    assert len(figures) == 1
    assert runs[0].coalesced > 0 and runs[0].hits > 0
    other = await run_demo(120, 8)
    assert (other.hits, other.coalesced) != (runs[0].hits, runs[0].coalesced) or (
        other.distinct_requests != runs[0].distinct_requests)


@pytest.mark.parametrize("sampling", ["cache", "skip", "pool"])
async def test_demo_reports_savings_and_the_sampling_policy(sampling):
    report = await run_demo(40, 5, concurrency=4, sampling=sampling, **FAST)
    assert report.sampled_calls == sum(r["temperature"] > 0 for r in build_workload(40, 5))
    saved = report.cache_stats["saved"]
    assert saved["hits"] == report.hits and saved["models"]["gpt-4o-mini"]["price"] == "known"
    table = format_report(report)
    assert f"saved by {report.hits} cache hits" in table and f"{saved['total_tokens']:,}" in table
    assert f"sampling policy '{sampling}'" in table
    if sampling == "skip":
        assert report.sampled_hits == 0
