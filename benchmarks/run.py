"""The benchmark harness: ``python -m benchmarks.run [--quick] [--scenarios a,b]``.

Also ``asynccache bench ...`` and ``nox -s bench -- --quick``. Runs each scenario group
(asynccache and its peers in the same process and run), shows a progress bar, then a
table with ratios, and writes ``benchmarks/results/latest.json`` and ``latest.png``.

A group's module that is missing, or whose dependency is not installed, is skipped with
a note; a group that fails is reported and the others still run. Modules expose
``async def run(quick: bool) -> list[Result]`` (``bench_redis.run`` also takes
``port=``) and may keep a module-level ``notes`` list of skipped contenders.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import inspect
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._measure import Result

# litellm fetches its model price map over the network at import time unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Group:
    """A named set of scenarios: the module and function that run it."""

    name: str
    module: str
    function: str
    description: str


GROUPS: dict[str, Group] = {g.name: g for g in (
    Group("memory", "benchmarks.bench_core", "run_memory",
          "in-memory set/get vs dict, litellm, aiocache, cashews"),
    Group("core", "benchmarks.bench_core", "run_core",
          "key building, lookup by request (facade hit)"),
    Group("footprint", "benchmarks.bench_memory_footprint", "run",
          "bytes per entry, each library in a fresh process"),
    Group("disk", "benchmarks.bench_disk", "run", "disk backend get/set"),
    Group("sqlite", "benchmarks.bench_sql", "run_sqlite",
          "sqlite vs disk vs LiteLLM DiskCache vs raw sqlite3, 64 tasks, loop stall"),
    Group("sql", "benchmarks.bench_sql", "run_servers",
          "PostgreSQL / MariaDB vs asyncpg / asyncmy, batches of 1000, LangChain"),
    Group("redis", "benchmarks.bench_redis", "run",
          "Redis single, concurrent, pipeline, MGET, write-behind"),
    Group("bridge", "benchmarks.bench_bridge", "run",
          "sync get_cache on Redis and in memory vs litellm sync and the awaited get"),
    Group("memcached", "benchmarks.bench_memcached", "run",
          "memcached vs raw emcache, LangChain MemcachedCache, aiocache"),
    Group("blob", "benchmarks.bench_blob", "run", "object stores, batches of 100/1000"),
    Group("semantic", "benchmarks.bench_semantic", "run", "semantic lookup"),
    Group("local-semantic", "benchmarks.bench_semantic", "run_embedded",
          "embedded semantic lookup at 10,000 entries (no server)"),
    Group("protection", "benchmarks.bench_protection", "run",
          "compression and encryption at rest: size and cost per call"),
)}


@dataclass
class GroupOutcome:
    """What happened to one group: ``ok``, ``skipped`` or ``failed``, with a note."""

    name: str
    status: str
    seconds: float
    results: list[Result]
    note: str = ""


def parse_scenarios(text: str | None) -> list[str]:
    """``"memory,core"`` -> group names, in the harness's order; raises on unknown names."""
    if not text or text.strip() in {"all", "*"}:
        return list(GROUPS)
    wanted = [part.strip() for part in text.replace(" ", ",").split(",") if part.strip()]
    unknown = [name for name in wanted if name not in GROUPS]
    if unknown:
        raise ValueError(f"unknown scenario group(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(GROUPS)}")
    return [name for name in GROUPS if name in wanted]


def load(group: Group) -> tuple[Any, str]:
    """The group's function, or ``(None, reason)`` if its module or a dependency is missing."""
    try:
        module = importlib.import_module(group.module)
    except ModuleNotFoundError as exc:
        if exc.name == group.module:
            return None, f"{group.module} is not present"
        return None, f"dependency not installed: {exc.name}"
    except ImportError as exc:
        return None, f"dependency not installed: {exc}"
    function = getattr(module, group.function, None)
    if function is None:
        return None, f"{group.module} has no {group.function}()"
    return function, ""


async def run_group(group: Group, quick: bool, redis_port: int | None) -> GroupOutcome:
    """Run one group; never raises (a failure becomes the outcome's note)."""
    started = time.perf_counter()
    function, reason = load(group)
    if function is None:
        return GroupOutcome(group.name, "skipped", 0.0, [], reason)
    kwargs: dict[str, Any] = {}
    if redis_port is not None and "port" in inspect.signature(function).parameters:
        kwargs["port"] = redis_port
    module = sys.modules[group.module]
    module_notes = getattr(module, "notes", None)
    if isinstance(module_notes, list):
        module_notes.clear()
    try:
        results = list(await function(quick, **kwargs))
    except ImportError as exc:
        return GroupOutcome(group.name, "skipped", time.perf_counter() - started, [],
                            f"dependency not installed: {exc.name or exc}")
    except Exception as exc:
        return GroupOutcome(group.name, "failed", time.perf_counter() - started, [],
                            f"{type(exc).__name__}: {exc}"[:500])
    for result in results:
        result.extra.setdefault("group", group.name)
    note = "; ".join(module_notes) if isinstance(module_notes, list) else ""
    return GroupOutcome(group.name, "ok", time.perf_counter() - started, results, note)


class _Progress:
    """A rich progress bar when rich is installed, plain lines otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._progress: Any = None
        self._task: Any = None
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )
        except ImportError:
            return
        self._progress = Progress(
            SpinnerColumn(), TextColumn("[progress.description]{task.description}"),
            BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=Console(stderr=True), transient=False,
        )

    def __enter__(self) -> _Progress:
        if self._progress is not None:
            self._progress.__enter__()
            self._task = self._progress.add_task("benchmarks", total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start(self, group: Group) -> None:
        text = f"{group.name}: {group.description}"
        if self._progress is not None:
            self._progress.update(self._task, description=text)
        else:
            print(f"-> {text}", file=sys.stderr, flush=True)

    def done(self, outcome: GroupOutcome) -> None:
        text = f"{outcome.name}: {outcome.status} in {outcome.seconds:.1f} s"
        if outcome.status != "ok":
            text += f" ({outcome.note})"
        if self._progress is not None:
            self._progress.console.print(text)
            self._progress.advance(self._task)
        else:
            print(f"   {text}", file=sys.stderr, flush=True)


async def run_all(names: Sequence[str], quick: bool, redis_port: int | None = None
                  ) -> list[GroupOutcome]:
    """Run the named groups in order, with a progress bar."""
    outcomes: list[GroupOutcome] = []
    with _Progress(len(names)) as progress:
        for name in names:
            group = GROUPS[name]
            progress.start(group)
            outcome = await run_group(group, quick, redis_port)
            progress.done(outcome)
            outcomes.append(outcome)
    return outcomes


def _meta(quick: bool, outcomes: Sequence[GroupOutcome]) -> dict[str, Any]:
    return {
        "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "quick": quick,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "groups": {o.name: {"status": o.status, "seconds": round(o.seconds, 2),
                            "note": o.note} for o in outcomes},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asynccache bench", description="asynccache benchmarks side by side with peers",
    )
    parser.add_argument("--quick", action="store_true", help="short run (about a minute)")
    parser.add_argument("--scenarios", default=None,
                        help=f"comma-separated groups (default all): {', '.join(GROUPS)}")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR,
                        help="where latest.json and latest.png go (benchmarks/results)")
    parser.add_argument("--no-png", action="store_true", help="skip the chart")
    parser.add_argument("--redis-port", type=int, default=None,
                        help="use a Redis already listening on 127.0.0.1:PORT")
    parser.add_argument("--list", action="store_true", help="list the groups and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the harness; 0 if any group produced results, 1 if none did, 2 on bad usage."""
    from benchmarks import report

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    if args.list:
        for group in GROUPS.values():
            print(f"{group.name:10s} {group.description}")
        return 0
    try:
        names = parse_scenarios(args.scenarios)
    except ValueError as exc:
        print(f"asynccache bench: {exc}", file=sys.stderr)
        return 2
    outcomes = asyncio.run(run_all(names, args.quick, args.redis_port))
    results = [r for o in outcomes for r in o.results]
    notes = [f"{o.name}: {o.status}: {o.note}" for o in outcomes if o.note]

    if results:
        try:
            from rich.console import Console

            # Piped output (CI logs, files) gets a wide table instead of 80 columns.
            console = Console() if sys.stdout.isatty() else Console(width=200)
            console.print(report.rich_table(results))
        except ImportError:
            print(report.plain_table(results))
    for line in report.targets_text(results):
        print(line)
    for line in notes:
        print(f"note: {line}")

    args.output_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.output_dir / "latest.json"
    data = report.to_json(results, notes=notes, meta=_meta(args.quick, outcomes))
    json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    print(f"results: {json_path}")
    if results and not args.no_png:
        try:
            print(f"chart:   {report.plot(results, args.output_dir / 'latest.png')}")
        except ImportError:
            print("chart:   skipped (matplotlib is not installed: pip install matplotlib)")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
