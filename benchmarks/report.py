"""Turn benchmark results into ratios, a terminal table, JSON, Markdown and a PNG chart.

Roles: a library whose name starts with ``asynccache`` is ours; ``extra["role"] ==
"limit"`` (or ``(limit)`` in the name) marks the raw limit (plain dict, raw client);
everything else is a peer. In each scenario the first asynccache row is the reference:

* ``asynccache_x`` on a peer or limit row: how many times faster the reference is
  (``benchmarks._measure.ratio(reference, row)``; below 1 means slower);
* ``of_limit`` on an asynccache row: its ops/s as a fraction of the limit's;
* ``of_best_peer`` on an asynccache row: its ops/s over the fastest peer's (above 1:
  asynccache is faster).

Footprint rows (``extra["bytes_per_entry"]``) compare memory instead: ``asynccache_x``
is the row's bytes per entry over the reference's (above 1: asynccache uses less), and
``of_limit`` / ``of_best_peer`` are the other row's bytes over asynccache's.

``python -m benchmarks.report benchmarks/results/latest.json [--markdown] [--png F]``
re-renders a saved run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._measure import Result, ratio

#: Library names (lower case) that are raw clients or plain structures: the limit.
LIMIT_PREFIXES = ("dict", "raw", "redis.asyncio", "sha256(")


def _asynccache_types() -> frozenset[str]:
    try:
        from asynccache.registry import cache_types
    except ImportError:  # pragma: no cover - the harness always has the package
        return frozenset()
    return frozenset(cache_types())


def role(result: Result) -> str:
    """``"asynccache"``, ``"limit"`` or ``"peer"``.

    ``extra["role"]`` decides when given (``"asynccache"``, ``"limit"``, ``"peer"``);
    otherwise a name starting with ``asynccache`` or equal to an asynccache cache type
    (``redis-semantic``...) is ours, a raw client or plain structure (``dict``,
    ``raw...``, ``redis.asyncio``, or ``(limit)`` in the name) is the limit.
    """
    name = result.library.lower()
    declared = result.extra.get("role")
    if name.startswith("asynccache") or name in _asynccache_types():
        return "asynccache"
    if declared in {"asynccache", "limit", "peer"}:
        return str(declared)
    if "(limit)" in name or name.startswith(LIMIT_PREFIXES):
        return "limit"
    return "peer"


def _by_scenario(results: Iterable[Result]) -> dict[str, list[Result]]:
    grouped: dict[str, list[Result]] = {}
    for result in results:
        grouped.setdefault(result.scenario, []).append(result)
    return grouped


def _is_footprint(result: Result) -> bool:
    return "bytes_per_entry" in result.extra


def _best(rows: Sequence[Result]) -> Result | None:
    """The fastest row (footprint: the one using the fewest bytes per entry)."""
    if not rows:
        return None
    if _is_footprint(rows[0]):
        return min(rows, key=lambda r: r.extra.get("bytes_per_entry") or float("inf"))
    return max(rows, key=lambda r: r.ops_per_s)


def _compare(ours: Result, other: Result) -> float | None:
    """How many times better ``ours`` is: ops/s over ops/s, or bytes over bytes (footprint)."""
    if _is_footprint(ours):
        mine = ours.extra.get("bytes_per_entry")
        return other.extra["bytes_per_entry"] / mine if mine else None
    return ratio(ours, other)


def compute_ratios(results: Sequence[Result]) -> list[dict[str, Any]]:
    """One row per result: its role and its ratio to the scenario's reference and limit."""
    rows: list[dict[str, Any]] = []
    for scenario, group in _by_scenario(results).items():
        ours = [r for r in group if role(r) == "asynccache"]
        reference = ours[0] if ours else None
        # An asynccache row marked as the limit (the await path in the sync-shim
        # scenario) is the limit there.
        limits = [r for r in group if r.extra.get("role") == "limit" or role(r) == "limit"]
        limit = limits[0] if limits else None
        peers = [r for r in group if role(r) == "peer" and r.extra.get("role") != "limit"]
        best_peer = _best(peers)
        for result in group:
            row: dict[str, Any] = {"scenario": scenario, "library": result.library,
                                   "role": role(result), "reference": None,
                                   "asynccache_x": None, "of_limit": None,
                                   "of_best_peer": None, "best_peer": None}
            if reference is not None and result is not reference:
                row["reference"] = reference.library
                if _is_footprint(result):
                    ours_bytes = reference.extra["bytes_per_entry"]
                    row["asynccache_x"] = (result.extra["bytes_per_entry"] / ours_bytes
                                           if ours_bytes else None)
                else:
                    row["asynccache_x"] = ratio(reference, result)
            if row["role"] == "asynccache" and limit is not None and result is not limit:
                if _is_footprint(result):
                    theirs = result.extra["bytes_per_entry"]
                    row["of_limit"] = limit.extra["bytes_per_entry"] / theirs if theirs else None
                else:
                    row["of_limit"] = ratio(result, limit)
            if row["role"] == "asynccache" and best_peer is not None:
                row["best_peer"] = best_peer.library
                row["of_best_peer"] = _compare(result, best_peer)
            rows.append(row)
    return rows


@dataclass(frozen=True)
class Target:
    """A goal from an issue, checked on one run's rows.

    ``metric`` says what is compared:

    * ``"ops"``: asynccache's ops/s over the rival's (``rival`` is a library-name prefix);
    * ``"bytes"``: asynccache's bytes per entry over the rival's;
    * ``"lag"``: asynccache's event-loop lag p99 in ms (no rival);
    * ``"p50_ms"``: asynccache's median latency in ms (``extra["p50_ms"]``, no rival).

    The target is met when the figure is at least ``minimum``, or at most ``minimum``
    when ``at_most`` is set.
    """

    scenario: str
    rival: str
    minimum: float
    source: str
    rival_scenario: str | None = None  # compare with another scenario's row when set
    ours: str = "asynccache"  # library-name prefix of the asynccache row to compare
    metric: str = "ops"
    at_most: bool = False


#: Targets set by the issues. Scenario and library names are those the bench modules
#: report; a target whose rows are missing is "not measured".
TARGETS: tuple[Target, ...] = (
    Target("memory get 2kb", "dict + orjson.loads", 0.8,
           "memory: get >= 0.8x dict + orjson.loads of exact-size bytes"),
    Target("memory set 2kb", "dict + orjson.dumps", 0.6,
           "memory: set >= 0.6x dict + orjson.dumps + exact-size copy"),
    Target("memory batch get", "dict + orjson.loads", 0.8,
           "memory: batch get >= 0.8x dict + orjson.loads per item"),
    Target("memory footprint", "dict + exact-size bytes", 1.1,
           "memory: bytes per entry <= 1.1x a dict of exact-size entry bytes",
           metric="bytes", at_most=True),
    Target("facade hit", "litellm cache.async_get_cache", 3.0,
           "lookup by request (key + get) >= 3x litellm Cache.async_get_cache"),
    Target("disk get 2kb (sequential)", "litellm diskcache", 0.5,
           "disk: sequential get >= 0.5x LiteLLM DiskCache"),
    Target("disk set 2kb (sequential)", "litellm diskcache", 1.0,
           "disk: sequential set >= 1x LiteLLM DiskCache"),
    Target("disk get 2kb x64 tasks", "litellm diskcache", 2.0,
           "disk: 64 concurrent tasks >= 2x LiteLLM DiskCache"),
    Target("disk set 2kb x64 tasks", "litellm diskcache", 2.0,
           "disk: 64 concurrent tasks >= 2x LiteLLM DiskCache"),
    Target("disk get 2kb (sequential)", "", 1.0, "disk: sequential get, loop-stall p99 < 1 ms",
           metric="lag", at_most=True),
    Target("disk set 2kb (sequential)", "", 1.0, "disk: sequential set, loop-stall p99 < 1 ms",
           metric="lag", at_most=True),
    Target("embedded semantic lookup", "", 2.0,
           "local-semantic: p50 <= 2 ms at 10,000 entries (filter included, no embedding)",
           metric="p50_ms", at_most=True),
    Target("sync redis get 2kb", "litellm rediscache.get_cache", 0.9,
           "sync: get_cache on Redis >= 0.9x LiteLLM's sync RedisCache",
           ours="asynccache get_cache"),
    Target("sync get 2kb", "asynccache await async_get_cache", 0.9,
           "sync: memory get_cache >= 0.9x the awaited get", ours="asynccache get_cache"),
    Target("get x64 tasks", "redis.asyncio", 4.0,
           "redis: 64-task GET >= 4x raw one-by-one GET (coalescing)"),
    Target("pipeline 1000 sets", "redis.asyncio", 1.0,
           "redis: pipelined set >= 1.0x raw pipeline"),
    Target("mget 1000", "raw+decode", 0.9,
           "redis: MGET >= 0.9x raw MGET + the same decode (orjson.loads per item)"),
    Target("s3 batch", "litellm", 5.0, "blob: >= 5x litellm S3Cache batch throughput",
           ours="asynccache c=64"),
    Target("s3+", "litellm", 5.0,
           "blob: >= 5x litellm S3Cache batch throughput (with S3-like latency)",
           ours="asynccache c=64"),
)


def _figure(target: Target, ours: Result | None, rival: Result | None) -> float | None:
    if ours is None:
        return None
    if target.metric == "lag":
        return ours.loop_lag_p99_ms
    if target.metric == "p50_ms":
        value = ours.extra.get("p50_ms")
        return None if value is None else float(value)
    if rival is None:
        return None
    if target.metric == "bytes":
        theirs = rival.extra.get("bytes_per_entry")
        return ours.extra["bytes_per_entry"] / theirs if theirs else None
    return ratio(ours, rival)


def check_targets(results: Sequence[Result]) -> list[dict[str, Any]]:
    """Each target with the measured figure and ``met`` / ``unmet`` / ``not measured``.

    A target's ``scenario`` matches every scenario that starts with it (``s3 batch``
    covers ``s3 batch get 100``...); each match is checked.
    """
    checked: list[dict[str, Any]] = []
    grouped = _by_scenario(results)
    for target in TARGETS:
        matches = [name for name in grouped if name.lower().startswith(target.scenario)]
        if not matches:
            checked.append({"target": target.source, "scenario": target.scenario,
                            "ratio": None, "minimum": target.minimum,
                            "at_most": target.at_most, "metric": target.metric,
                            "status": "not measured"})
            continue
        for name in matches:
            group = grouped[name]
            ours = next((r for r in group if r.library.lower().startswith(target.ours)),
                        None) or next((r for r in group if role(r) == "asynccache"), None)
            pool = grouped.get(target.rival_scenario or name, [])
            rival = next((r for r in pool if target.rival
                          and r.library.lower().startswith(target.rival)), None)
            value = _figure(target, ours, rival)
            if value is None:
                status = "not measured"
            elif target.at_most:
                status = "met" if value <= target.minimum else "unmet"
            else:
                status = "met" if value >= target.minimum else "unmet"
            checked.append({"target": target.source, "scenario": name, "ratio": value,
                            "minimum": target.minimum, "at_most": target.at_most,
                            "metric": target.metric, "status": status,
                            "ours": None if ours is None else ours.library,
                            "rival": None if rival is None else rival.library})
    return checked


def _fmt_rate(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:,.2f} M"
    if value >= 1e4:
        return f"{value / 1e3:,.1f} k"
    return f"{value:,.0f}"


def _fmt_x(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.3g}x" if value < 10 else f"{value:,.0f}x"


def ordered(results: Iterable[Result]) -> list[Result]:
    """Results grouped by scenario (first appearance order), run order inside each."""
    return [r for group in _by_scenario(results).values() for r in group]


def table_rows(results: Sequence[Result]) -> list[list[str]]:
    """The cells of the results table, grouped by scenario."""
    ratios = {(r["scenario"], r["library"]): r for r in compute_ratios(results)}
    rows: list[list[str]] = []
    for result in ordered(results):
        info = ratios[(result.scenario, result.library)]
        if _is_footprint(result):
            extra = result.extra
            rate = f"{extra['bytes_per_entry']:,.0f} B/entry"
            per_op = f"({extra.get('method', '?')})"
            if "rss_bytes_per_entry" in extra:
                spread = f"rss {extra['rss_bytes_per_entry']:,.0f} B"
            else:
                spread = f"payload {extra.get('payload_bytes', '?')} B"
        else:
            rate = _fmt_rate(result.ops_per_s)
            per_op = f"{result.median_s / result.ops * 1e6:,.2f}"
            low = result.ops / result.max_s if result.max_s else float("inf")
            high = result.ops / result.min_s if result.min_s else float("inf")
            spread = f"{_fmt_rate(low)}-{_fmt_rate(high)}"
        lag = "" if result.loop_lag_p99_ms is None else f"{result.loop_lag_p99_ms:.2f}"
        rows.append([result.scenario, result.library, info["role"], rate, per_op, spread, lag,
                     _fmt_x(info["asynccache_x"]), _fmt_x(info["of_limit"]),
                     _fmt_x(info["of_best_peer"])])
    return rows


HEADERS = ["scenario", "library", "role", "ops/s", "µs/op", "min-max ops/s",
           "loop lag p99 ms", "asynccache x", "of limit", "vs best peer"]


def rich_table(results: Sequence[Result]) -> Any:
    """A ``rich.table.Table`` of the results (asynccache rows in bold)."""
    from rich.table import Table

    table = Table(title="asynccache benchmarks", show_lines=False)
    for header in HEADERS:
        table.add_column(header, justify="left" if header in {"scenario", "library", "role"}
                         else "right", no_wrap=header != "scenario")
    previous = None
    for cells in table_rows(results):
        if previous is not None and cells[0] != previous:
            table.add_section()
        previous = cells[0]
        shown = [cells[0] if cells[0] != "" else "", *cells[1:]]
        table.add_row(*shown, style="bold" if cells[2] == "asynccache" else None)
    table.caption = ("asynccache x: how many times faster the scenario's first asynccache row "
                     "is (memory: how many times more bytes the row uses); of limit: fraction "
                     "of the raw limit's ops/s; vs best peer: over the fastest peer's ops/s")
    return table


def _target_figure(row: dict[str, Any]) -> str:
    unit = {"lag": " ms", "p50_ms": " ms"}.get(row["metric"], "x")
    sign = "<=" if row["at_most"] else ">="
    return f"{row['ratio']:.2f}{unit} (need {sign} {row['minimum']}{unit})"


def targets_markdown(results: Sequence[Result]) -> str:
    """The targets as a Markdown table: figure, bound, status and the rows compared."""
    lines = ["| target | scenario | asynccache row | compared with | figure | status |",
             "|---|---|---|---|---|---|"]
    for row in check_targets(results):
        if row["status"] == "not measured":
            continue
        lines.append(f"| {row['target']} | {row['scenario']} | {row.get('ours') or ''} | "
                     f"{row.get('rival') or ''} | {_target_figure(row)} | "
                     f"{row['status']} |".replace("\n", " "))
    return "\n".join(lines)


def targets_text(results: Sequence[Result]) -> list[str]:
    """One line per measured target (none when no target's scenario ran)."""
    lines = []
    for row in check_targets(results):
        if row["status"] == "not measured":
            continue
        lines.append(f"target {row['status'].upper():5s} {row['scenario']}: "
                     f"{_target_figure(row)} - {row['target']}")
    return lines


def markdown_table(results: Sequence[Result]) -> str:
    """The results as a Markdown table (for docs/benchmarks.md)."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for cells in table_rows(results):
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def plain_table(results: Sequence[Result]) -> str:
    """The results as fixed-width text (when rich is not installed)."""
    rows = [HEADERS, *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
                     for row in rows)


def to_json(results: Sequence[Result], *, notes: Sequence[str] = (),
            meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything a run produced, JSON-ready."""
    return {
        **(meta or {}),
        "results": [{**r.as_dict(), "role": role(r)} for r in results],
        "ratios": compute_ratios(results),
        "targets": check_targets(results),
        "notes": list(notes),
    }


def from_json(data: dict[str, Any]) -> list[Result]:
    """Results back from :func:`to_json`'s output."""
    fields = ("scenario", "library", "ops", "median_s", "min_s", "max_s", "loop_lag_p99_ms",
              "extra")
    return [Result(**{k: row[k] for k in fields if k in row}) for row in data["results"]]


def plot(results: Sequence[Result], path: Path) -> Path:
    """PNG chart: ops/s per scenario per library (log scale), memory per entry beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed = [r for r in results if not _is_footprint(r)]
    memory = [r for r in results if _is_footprint(r)]
    panels = [p for p in (speed, memory) if p]
    if not panels:
        raise ValueError("no results to plot")
    # asynccache in red, the limit in grey, each peer in its own colour across panels.
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
               "#17becf"]
    peers = list(dict.fromkeys(r.library for r in results if role(r) == "peer"))
    colours = {lib: palette[i % len(palette)] for i, lib in enumerate(peers)}
    for r in results:
        if role(r) == "asynccache":
            colours[r.library] = "#d62728"
        elif role(r) == "limit":
            colours[r.library] = "#7f7f7f"
    heights = [max(3.0, 0.28 * len(p) + 0.5 * len(_by_scenario(p))) for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, sum(heights) + 1),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        footprint = panel is memory
        labels: list[str] = []
        values: list[float] = []
        bar_colours: list[Any] = []
        ticks: list[float] = []
        position = 0.0
        positions: list[float] = []
        for scenario, group in _by_scenario(panel).items():
            for result in group:
                positions.append(position)
                values.append(result.extra["bytes_per_entry"] if footprint
                              else result.ops_per_s)
                labels.append(f"{scenario} | {result.library}")
                bar_colours.append(colours[result.library])
                ticks.append(position)
                position += 1
            position += 0.8
        ax.barh(positions, values, color=bar_colours)
        ax.set_yticks(ticks, labels, fontsize=7)
        ax.invert_yaxis()
        if not footprint:
            ax.set_xscale("log")
        ax.set_xlabel("bytes per entry (lower is better)" if footprint
                      else "operations per second (log scale, higher is better)")
        ax.grid(axis="x", which="both", alpha=0.3)
        ax.set_title("memory per entry" if footprint
                     else "throughput (red: asynccache, grey: raw limit)", fontsize=9)
        for pos, value in zip(positions, values, strict=True):
            text = f"{value:,.0f} B" if footprint else _fmt_rate(value)
            ax.text(value, pos, " " + text, va="center", fontsize=6)
    fig.suptitle("asynccache vs peers and the raw limit (same run)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="re-render saved benchmark results")
    parser.add_argument("json_file", type=Path)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--png", type=Path, help="write the chart to this file")
    args = parser.parse_args(argv)
    data = json.loads(args.json_file.read_text())
    results = from_json(data)
    if args.markdown:
        print(markdown_table(results))
        print()
        print(targets_markdown(results))
    else:
        print(plain_table(results))
    for line in targets_text(results):
        print(line)
    if args.png:
        plot(results, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
