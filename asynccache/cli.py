"""The ``asynccache`` command: demo, bench, stats, ping, clear, inspect, explain,
calibrate.

Caches are configured like :class:`~asynccache.Cache`: ``--type`` (default
``$ASYNCCACHE_TYPE`` or ``local``), ``--namespace`` (default ``$ASYNCCACHE_NAMESPACE``)
and ``--set NAME=VALUE`` for any other setting (values are read as JSON when they parse,
else as text: ``--set ttl=60 --set disk_cache_dir=./.cache``). Backends also read their
own environment variables (``REDIS_HOST``, ``REDIS_PASSWORD``...), as the facade does.

Exit codes: 0 success; 1 a negative answer (ping failed, key not found, clear declined);
2 a usage or configuration error.

>>> main(["ping", "--type", "local"])     # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from .exceptions import CacheError
from .keys import namespace_prefix

__all__ = [
    "build_cache", "build_parser", "find_benchmarks", "main", "parse_setting",
]

EXIT_OK, EXIT_NEGATIVE, EXIT_USAGE = 0, 1, 2


# -- configuration --------------------------------------------------------------------


def parse_setting(text: str) -> tuple[str, Any]:
    """``"NAME=VALUE"`` -> ``(name, value)``; VALUE is JSON if it parses, else text."""
    name, sep, raw = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return name, value


def _add_cache_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cache (as Cache(type=..., **settings))")
    from .registry import cache_types

    group.add_argument("--type", default=os.environ.get("ASYNCCACHE_TYPE") or "local",
                       help=f"cache type: {', '.join(cache_types())} "
                            "(default: $ASYNCCACHE_TYPE or local)")
    group.add_argument("--namespace", default=os.environ.get("ASYNCCACHE_NAMESPACE") or None,
                       help="key namespace (default: $ASYNCCACHE_NAMESPACE or none)")
    group.add_argument("--set", "--option", dest="settings", action="append", default=[],
                       type=parse_setting, metavar="NAME=VALUE",
                       help="any other Cache setting, e.g. --set disk_cache_dir=./.cache "
                            "(repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def build_cache(args: argparse.Namespace) -> Any:
    """The :class:`~asynccache.Cache` described by the command-line options."""
    from .facade import Cache

    settings = dict(args.settings)
    if args.namespace is not None:
        settings["namespace"] = args.namespace
    return Cache(args.type, **settings)


# -- commands ------------------------------------------------------------------------


def _emit(out: IO[str], data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        out.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")
        return
    width = max((len(k) for k in data), default=0)
    for name, value in data.items():
        if isinstance(value, dict):
            value = json.dumps(value, default=str, ensure_ascii=False)
        out.write(f"{name:<{width}}  {value}\n")


async def _backend_info(cache: Any) -> dict[str, Any]:
    """Entries and bytes when the backend can tell (an ``info()`` hook, ``len``)."""
    backend = cache.backend
    info: dict[str, Any] = {}
    hook = getattr(backend, "info", None)
    if callable(hook):
        found = hook()
        if asyncio.iscoroutine(found):
            found = await found
        if isinstance(found, dict):
            info.update(found)
    elif hasattr(backend, "__len__"):
        info["entries"] = len(backend)
        if hasattr(backend, "size_bytes"):
            info["bytes"] = backend.size_bytes
    return info


async def _cmd_ping(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    cache = build_cache(args)
    try:
        try:
            report = await cache.async_test_connection()
        except CacheError as exc:
            _emit(out, {"status": "unavailable", "cache": repr(cache), "reason": str(exc)},
                  args.json)
            return EXIT_NEGATIVE
        _emit(out, {**report, "cache": repr(cache)}, args.json)
        return EXIT_OK
    finally:
        await cache.aclose()


async def _cmd_stats(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    cache = build_cache(args)
    try:
        data: dict[str, Any] = {"type": cache.type, "cache": repr(cache)}
        try:
            health = await cache.async_test_connection()
            data["status"] = health["status"]
            data["ping_ms"] = health["latency_ms"]
        except CacheError as exc:
            data["status"] = "unavailable"
            data["reason"] = str(exc)
        else:
            data.update(await _backend_info(cache))
        data["settings"] = cache.settings()
        if data["status"] == "healthy":
            from .savings import stored_savings

            # Totals written by caches created with persist_savings=True (every process).
            stored = await stored_savings(cache, cache.namespace)
            if stored["hits"]:
                data["saved"] = stored
        # This process's counters: a fresh CLI process has done only the ping above.
        data["process_stats"] = {
            key: value for key, value in cache.stats().items()
            if key in {"hits", "misses", "sets", "errors", "timeouts", "circuit", "latency",
                       "saved"}
        }
        _emit(out, data, args.json)
        return EXIT_OK if data["status"] == "healthy" else EXIT_NEGATIVE
    finally:
        await cache.aclose()


async def _cmd_clear(args: argparse.Namespace, out: IO[str], err: IO[str],
                     stdin: IO[str]) -> int:
    cache = build_cache(args)
    try:
        target = (f"every entry of namespace {cache.namespace!r}" if cache.namespace
                  else "EVERY entry (no namespace given)")
        if not args.yes:
            if not stdin.isatty():
                err.write("asynccache: refusing to clear without confirmation: stdin is not "
                          "a terminal; pass --yes to clear anyway\n")
                return EXIT_USAGE
            out.write(f"Delete {target} from {cache!r}? [y/N] ")
            out.flush()
            answer = stdin.readline().strip().lower()
            if answer not in {"y", "yes"}:
                out.write("nothing deleted\n")
                return EXIT_NEGATIVE
        deleted = await cache.async_clear()
        _emit(out, {"deleted": deleted, "namespace": cache.namespace}, args.json)
        return EXIT_OK
    finally:
        await cache.aclose()


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(
        timespec="seconds")


async def _cmd_inspect(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    cache = build_cache(args)
    try:
        stored = namespace_prefix(cache.namespace) + args.key
        hit = await cache.async_get_entry(args.key)
        if hit is None:
            _emit(out, {"key": args.key, "found": False}, args.json)
            return EXIT_NEGATIVE
        raw = (await cache.backend.read_many([stored]))[0]
        ttl = await cache.async_get_ttl(args.key)
        text = json.dumps(hit.value, indent=None if args.json else 2, default=str,
                          ensure_ascii=False)
        shown: Any = hit.value if args.json else text
        if not args.full and len(text) > args.max_chars:
            shown = text[: args.max_chars] + f"... ({len(text)} characters, --full shows all)"
        data = {
            "key": args.key,
            "stored_key": stored,
            "found": True,
            "backend": hit.backend,
            "size_bytes": None if raw is None else len(raw),
            "age_s": None if hit.age is None else round(hit.age, 3),
            "ttl_s": "never expires" if ttl is None else round(ttl, 3),
            "created_at": _iso(hit.created_at),
            "expires_at": _iso(hit.expires_at),
            "value": shown,
        }
        _emit(out, data, args.json)
        return EXIT_OK
    finally:
        await cache.aclose()


def _read_request(source: str, stdin: IO[str]) -> dict[str, Any]:
    text = stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    try:
        request = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"the request in {source!r} is not JSON: {exc}") from exc
    if not isinstance(request, dict):
        raise ValueError(f"the request in {source!r} must be a JSON object of the call's "
                         f"arguments (model, messages...), got {type(request).__name__}")
    return request


async def _cmd_explain(args: argparse.Namespace, out: IO[str], err: IO[str],
                       stdin: IO[str]) -> int:
    request = _read_request(args.request, stdin)
    cache = build_cache(args)
    try:
        explanation = await cache.async_explain_miss(request)
        if args.json:
            _emit(out, {
                "found": explanation.found, "key": explanation.key,
                "recorded": explanation.recorded,
                "nearest_key": None if explanation.nearest is None else explanation.nearest.key,
                "differences": [{"field": d.path, "recorded": _plain(d.recorded),
                                 "requested": _plain(d.requested)}
                                for d in explanation.differences],
            }, True)
        else:
            out.write(str(explanation) + "\n")
        return EXIT_OK if explanation.found else EXIT_NEGATIVE
    finally:
        await cache.aclose()


def _plain(value: Any) -> Any:
    from .recording import ABSENT

    return None if value is ABSENT else value


def _cmd_demo(args: argparse.Namespace, out: IO[str]) -> int:
    from .demo import format_report, run_demo

    report = asyncio.run(run_demo(args.calls, args.seed, concurrency=args.concurrency,
                                  use_wrapper=not args.no_wrapper, sampling=args.sampling))
    if args.json:
        _emit(out, {**vars(report), "hit_rate": report.hit_rate, "speedup": report.speedup},
              True)
    else:
        out.write(format_report(report) + "\n")
    return EXIT_OK


# -- bench ---------------------------------------------------------------------------


def find_benchmarks(start: Path | None = None, explicit: str | None = None,
                    package_root: Path | None = None) -> Path | None:
    """The folder that contains ``benchmarks/run.py``, or ``None``.

    Looks at ``explicit``, ``$ASYNCCACHE_BENCHMARKS``, ``start`` (the current folder)
    and its parents, then the checkout this package was installed from (editable
    installs).
    """
    candidates: list[Path] = []
    for given in (explicit, os.environ.get("ASYNCCACHE_BENCHMARKS")):
        if given:
            path = Path(given).resolve()
            candidates.append(path.parent if path.name == "benchmarks" else path)
    here = (start or Path.cwd()).resolve()
    candidates += [here, *here.parents]
    candidates.append(package_root or Path(__file__).resolve().parent.parent)
    for root in candidates:
        if (root / "benchmarks" / "run.py").is_file():
            return root
    return None


def _thresholds(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0.8,0.85,0.9, got {text!r}"
        ) from None


async def _cmd_calibrate(args: argparse.Namespace, out: IO[str]) -> int:
    from .semantic.calibrate import async_calibrate

    report = await async_calibrate(
        args.pairs, embedding=args.embedding, embed_what=args.embed_what,
        semantic_guard=not args.no_guard, target_precision=args.target_precision,
        thresholds=args.thresholds, split=args.split, kinds=args.kind,
    )
    if args.json:
        out.write(json.dumps(report.as_dict(), indent=2) + "\n")
    else:
        out.write(report.format() + "\n")
    return EXIT_OK if report.recommended is not None else EXIT_NEGATIVE


def _cmd_bench(argv: Sequence[str], out: IO[str], err: IO[str]) -> int:
    explicit = None
    rest = list(argv)
    if "--benchmarks-dir" in rest:
        index = rest.index("--benchmarks-dir")
        if index + 1 >= len(rest):
            err.write("asynccache bench: --benchmarks-dir needs a path\n")
            return EXIT_USAGE
        explicit = rest[index + 1]
        del rest[index : index + 2]
    root = find_benchmarks(explicit=explicit)
    if root is None:
        err.write(
            "asynccache bench: no benchmarks/ folder found. The benchmarks ship with the "
            "source checkout, not the installed package: run this from the asynccache "
            "repository (or pass --benchmarks-dir PATH / set ASYNCCACHE_BENCHMARKS).\n"
        )
        return EXIT_USAGE
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    loaded = sys.modules.get("benchmarks")
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").parent.parent != root:
        for name in [m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks.")]:
            del sys.modules[name]
    run = importlib.import_module("benchmarks.run")
    code: int = run.main(rest)
    return code


# -- entry point ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``asynccache`` command."""
    parser = argparse.ArgumentParser(
        prog="asynccache", description="asyncio-first cache engine for LLM calls",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser("demo", help="simulated LLM workload on the in-memory cache")
    demo.add_argument("--calls", type=int, default=120, help="LLM calls to simulate (120)")
    demo.add_argument("--seed", type=int, default=7, help="workload seed (7)")
    demo.add_argument("--concurrency", type=int, default=8, help="calls in flight (8)")
    demo.add_argument("--no-wrapper", action="store_true",
                      help="use Cache.async_lookup/async_store instead of cached()")
    demo.add_argument("--sampling", choices=("cache", "skip", "pool"), default="cache",
                      help="policy for the requests sent with temperature > 0 (cache)")
    demo.add_argument("--json", action="store_true", help="print JSON")

    commands.add_parser(
        "bench", add_help=False,
        help="benchmarks side by side with peers (--quick, --scenarios core,memory,...)",
    )

    ping = commands.add_parser("ping", help="check the backend answers (exit 0 or 1)")
    _add_cache_options(ping)

    stats = commands.add_parser("stats", help="backend health, size and settings")
    _add_cache_options(stats)

    clear = commands.add_parser("clear", help="delete every entry of a namespace")
    _add_cache_options(clear)
    clear.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    inspect = commands.add_parser("inspect", help="show one entry: value, age, TTL, size")
    inspect.add_argument("key", help="the cache key (without namespace prefix)")
    _add_cache_options(inspect)
    inspect.add_argument("--full", action="store_true", help="print the whole value")
    inspect.add_argument("--max-chars", type=int, default=2000,
                         help="truncate the printed value (2000)")

    explain = commands.add_parser(
        "explain", help="why a request misses: the nearest stored request and what differs "
                        "(cassettes, or caches with record_requests=true)")
    explain.add_argument("request", help="a JSON file of the call's arguments, or - for stdin")
    _add_cache_options(explain)

    calibrate = commands.add_parser(
        "calibrate", help="precision and recall per similarity threshold on labelled pairs",
        description="Score labelled pairs (JSON or JSON Lines: a, b, same) as a semantic "
                    "cache would, guard included, and recommend a similarity_threshold. "
                    "Exit 0 with a recommendation, 1 when no threshold reaches the target.",
    )
    calibrate.add_argument("pairs", help="file of labelled pairs (JSON or JSON Lines)")
    calibrate.add_argument("--target-precision", type=float, default=0.99,
                           help="precision the recommended threshold must reach (0.99)")
    calibrate.add_argument("--embedding", default="local",
                           help="'local' (default) or an embedding model name")
    calibrate.add_argument("--embed-what", default="last_user_message",
                           help="which text is embedded, as the cache setting")
    calibrate.add_argument("--no-guard", action="store_true",
                           help="score the embedding alone, without the semantic guard")
    calibrate.add_argument("--split", choices=["dev", "test"],
                           help="use only the pairs of this split")
    calibrate.add_argument("--kind", action="append", default=None,
                           help="use only pairs of this kind (repeatable)")
    calibrate.add_argument("--thresholds", type=_thresholds, default=None,
                           help="comma-separated thresholds (default 0.50 to 0.99 by 0.01)")
    calibrate.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: Sequence[str] | None = None, *, stdin: IO[str] | None = None,
         stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    inp = stdin or sys.stdin
    if args_list and args_list[0] == "bench":
        return _cmd_bench(args_list[1:], out, err)
    parser = build_parser()
    try:
        # argparse prints help and usage errors itself: send them to our streams.
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(args_list)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if args.command == "demo":
            return _cmd_demo(args, out)
        if args.command == "ping":
            return asyncio.run(_cmd_ping(args, out, err))
        if args.command == "stats":
            return asyncio.run(_cmd_stats(args, out, err))
        if args.command == "clear":
            return asyncio.run(_cmd_clear(args, out, err, inp))
        if args.command == "inspect":
            return asyncio.run(_cmd_inspect(args, out, err))
        if args.command == "explain":
            return asyncio.run(_cmd_explain(args, out, err, inp))
        if args.command == "calibrate":
            return asyncio.run(_cmd_calibrate(args, out))
    except (CacheError, ValueError, TypeError, OSError) as exc:
        err.write(f"asynccache {args.command}: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return 130
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse guards
    return EXIT_USAGE  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
