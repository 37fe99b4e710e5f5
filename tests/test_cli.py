"""The ``asynccache`` command line, run in-process (``main([...])``) and as a subprocess."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from asynccache import Cache, cli

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


class _Terminal(io.StringIO):
    """stdin that claims to be a terminal and answers with ``text``."""

    def isatty(self) -> bool:
        return True


def run(*argv: str, stdin: io.StringIO | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), stdin=stdin or io.StringIO(""), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def disk_dir(tmp_path: Path) -> str:
    return str(tmp_path / "cache")


def disk(disk_dir: str, *extra: str) -> list[str]:
    return ["--type", "disk", "--set", f"disk_cache_dir={disk_dir}", *extra]


def fill(disk_dir: str) -> None:
    with Cache("disk", disk_cache_dir=disk_dir, namespace="eu") as eu:
        eu.set_cache("answer", {"text": "voilà ✓", "n": 42}, ttl=600)
        eu.set_cache("forever", [1, 2, 3], ttl=None)
    with Cache("disk", disk_cache_dir=disk_dir, namespace="us") as us:
        us.set_cache("answer", "hello")


def test_parse_setting_reads_json_or_text():
    assert cli.parse_setting("ttl=60") == ("ttl", 60)
    assert cli.parse_setting("ssl=true") == ("ssl", True)
    assert cli.parse_setting("disk_cache_dir=./x") == ("disk_cache_dir", "./x")
    assert cli.parse_setting("max-bytes=10") == ("max_bytes", 10)
    with pytest.raises(Exception, match="NAME=VALUE"):
        cli.parse_setting("novalue")


def test_ping_local_and_disk(disk_dir):
    code, out, _ = run("ping", "--type", "local")
    assert code == 0 and "healthy" in out
    code, out, _ = run("ping", *disk(disk_dir), "--json")
    assert code == 0
    assert json.loads(out)["backend"] == "disk"


def test_ping_reports_unusable_backend(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, out, _ = run("ping", *disk(str(blocker / "sub")), "--json")
    assert code == 1
    assert json.loads(out)["status"] == "unavailable"


def test_configuration_errors_exit_2_naming_the_problem(disk_dir):
    code, _, err = run("ping", "--type", "nosuch")
    assert code == 2 and "nosuch" in err
    code, _, err = run("stats", *disk(disk_dir, "--set", "bogus=1"))
    assert code == 2 and "bogus" in err
    code, _, err = run("ping", "--set", "oops")
    assert code == 2 and "NAME=VALUE" in err


def test_env_vars_configure_type_and_namespace(disk_dir, monkeypatch):
    fill(disk_dir)
    monkeypatch.setenv("ASYNCCACHE_TYPE", "disk")
    monkeypatch.setenv("ASYNCCACHE_NAMESPACE", "us")
    code, out, _ = run("inspect", "answer", "--set", f"disk_cache_dir={disk_dir}", "--json")
    assert code == 0
    assert json.loads(out)["value"] == "hello"


def test_inspect_shows_value_age_ttl_size(disk_dir):
    fill(disk_dir)
    code, out, _ = run("inspect", "answer", *disk(disk_dir, "--namespace", "eu", "--json"))
    assert code == 0
    data = json.loads(out)
    assert data["value"] == {"text": "voilà ✓", "n": 42}
    assert data["stored_key"] == "eu:answer"
    assert 0 < data["ttl_s"] <= 600
    assert data["age_s"] >= 0
    assert data["size_bytes"] > len('{"text":"voilà ✓","n":42}')
    code, out, _ = run("inspect", "forever", *disk(disk_dir, "--namespace", "eu"))
    assert code == 0 and "never expires" in out and "size_bytes" in out


def test_inspect_truncates_long_values(disk_dir):
    with Cache("disk", disk_cache_dir=disk_dir) as cache:
        cache.set_cache("long", "x" * 5000)
    code, out, _ = run("inspect", "long", *disk(disk_dir, "--max-chars", "100"))
    assert code == 0 and "--full shows all" in out and "x" * 200 not in out
    code, out, _ = run("inspect", "long", *disk(disk_dir, "--full"))
    assert "x" * 5000 in out


def test_inspect_missing_key_exits_1(disk_dir):
    code, out, _ = run("inspect", "nope", *disk(disk_dir))
    assert code == 1 and "False" in out


def test_stats_reports_health_and_settings(disk_dir):
    code, out, _ = run("stats", *disk(disk_dir, "--json"))
    assert code == 0
    data = json.loads(out)
    assert data["type"] == "disk" and data["status"] == "healthy"
    assert data["settings"]["disk_cache_dir"] == disk_dir
    assert "hits" in data["process_stats"]


def test_clear_refuses_without_terminal_or_yes(disk_dir):
    fill(disk_dir)
    code, _, err = run("clear", *disk(disk_dir, "--namespace", "eu"))
    assert code == 2 and "--yes" in err
    with Cache("disk", disk_cache_dir=disk_dir, namespace="eu") as eu:
        assert eu.get_cache("answer") is not None


def test_clear_asks_and_respects_no(disk_dir):
    fill(disk_dir)
    code, out, _ = run("clear", *disk(disk_dir, "--namespace", "eu"), stdin=_Terminal("n\n"))
    assert code == 1
    assert "namespace 'eu'" in out and "nothing deleted" in out
    with Cache("disk", disk_cache_dir=disk_dir, namespace="eu") as eu:
        assert eu.get_cache("answer") is not None


def test_clear_deletes_one_namespace_after_yes(disk_dir):
    fill(disk_dir)
    code, out, _ = run("clear", *disk(disk_dir, "--namespace", "eu", "--json"),
                       stdin=_Terminal("y\n"))
    assert code == 0
    assert json.loads(out[out.index("{"):])["deleted"] == 2
    with Cache("disk", disk_cache_dir=disk_dir, namespace="eu") as eu:
        assert eu.get_cache("answer") is None
    with Cache("disk", disk_cache_dir=disk_dir, namespace="us") as us:
        assert us.get_cache("answer") == "hello"


def test_clear_with_yes_needs_no_terminal(disk_dir):
    fill(disk_dir)
    code, out, _ = run("clear", *disk(disk_dir, "--namespace", "us", "--yes"))
    assert code == 0 and "deleted" in out


def test_find_benchmarks(tmp_path, monkeypatch):
    monkeypatch.delenv("ASYNCCACHE_BENCHMARKS", raising=False)
    nowhere = tmp_path / "empty"
    nowhere.mkdir()
    assert cli.find_benchmarks(start=nowhere, package_root=nowhere) is None
    (tmp_path / "repo" / "benchmarks").mkdir(parents=True)
    (tmp_path / "repo" / "benchmarks" / "run.py").write_text("")
    nested = tmp_path / "repo" / "docs" / "deep"
    nested.mkdir(parents=True)
    assert cli.find_benchmarks(start=nested, package_root=nowhere) == tmp_path / "repo"
    assert cli.find_benchmarks(start=nowhere, explicit=str(tmp_path / "repo" / "benchmarks"),
                               package_root=nowhere) == tmp_path / "repo"


def test_bench_without_benchmarks_folder_says_so(monkeypatch):
    monkeypatch.setattr(cli, "find_benchmarks", lambda **_: None)
    code, _, err = run("bench", "--quick")
    assert code == 2 and "no benchmarks/ folder" in err


def test_bench_forwards_arguments_to_the_harness(tmp_path, monkeypatch):
    root = tmp_path / "checkout"
    (root / "benchmarks").mkdir(parents=True)
    (root / "benchmarks" / "__init__.py").write_text("")
    (root / "benchmarks" / "run.py").write_text(
        "import json, pathlib\n"
        "def main(argv):\n"
        "    pathlib.Path(__file__).with_name('argv.json').write_text(json.dumps(argv))\n"
        "    return 7\n"
    )
    saved = {name: mod for name, mod in sys.modules.items()
             if name == "benchmarks" or name.startswith("benchmarks.")}
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        code, _, _ = run("bench", "--benchmarks-dir", str(root), "--quick",
                         "--scenarios", "core")
    finally:
        for name in [n for n in sys.modules if n == "benchmarks" or n.startswith("benchmarks.")]:
            del sys.modules[name]
        sys.modules.update(saved)
    assert code == 7
    assert json.loads((root / "benchmarks" / "argv.json").read_text()) == [
        "--quick", "--scenarios", "core"]


def test_demo_in_process_json():
    code, out, _ = run("demo", "--calls", "12", "--seed", "2", "--concurrency", "12", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["calls"] == 12 and data["hits"] + data["coalesced"] + data["misses"] == 12


def test_demo_console_script_prints_the_table():
    proc = subprocess.run(
        [sys.executable, "-m", "asynccache.cli", "demo", "--calls", "24", "--seed", "3",
         "--concurrency", "24"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for label in ("calls", "cache hits", "misses", "hit rate", "time (simulated)"):
        assert label in proc.stdout
    rate = next(line for line in proc.stdout.splitlines() if line.startswith("hit rate"))
    assert float(rate.split()[-1].rstrip("%")) > 0


def test_usage_errors_exit_2():
    code, _, _ = run()
    assert code == 2
    code, _, _ = run("demo", "--calls", "0")
    assert code == 2


# -- the benchmark harness behind `asynccache bench` ----------------------------------


def test_harness_scenario_selection():
    from benchmarks import run as harness

    assert harness.parse_scenarios("core, memory") == ["memory", "core"]
    assert harness.parse_scenarios(None) == list(harness.GROUPS)
    with pytest.raises(ValueError, match="nosuch"):
        harness.parse_scenarios("core,nosuch")


async def test_harness_skips_missing_modules_and_reports_failures(monkeypatch):
    from benchmarks import run as harness

    missing = harness.Group("gone", "benchmarks.bench_not_here", "run", "absent")
    outcome = await harness.run_group(missing, True, None)
    assert outcome.status == "skipped" and "not present" in outcome.note

    import benchmarks.bench_core as core

    async def broken(quick: bool) -> list:
        raise RuntimeError("server would not start")

    monkeypatch.setattr(core, "run_keys", broken, raising=True)
    failing = harness.Group("keys", "benchmarks.bench_core", "run_keys", "keys")
    outcome = await harness.run_group(failing, True, None)
    assert outcome.status == "failed" and "server would not start" in outcome.note


def test_report_ratios_roles_and_targets():
    from benchmarks import report
    from benchmarks._measure import Result

    rows = [
        Result("get", "asynccache", 1000, 0.01, 0.01, 0.01),
        Result("get", "dict (limit)", 1000, 0.001, 0.001, 0.001),
        Result("get", "peerlib", 1000, 0.02, 0.02, 0.02),
        Result("mget 1000", "asynccache", 1000, 0.01, 0.01, 0.01),
        Result("mget 1000", "raw+decode", 1000, 0.012, 0.012, 0.012),
        Result("mem", "asynccache MemoryCache", 10, 1, 1, 1, extra={"bytes_per_entry": 100}),
        Result("mem", "peerlib", 10, 1, 1, 1, extra={"bytes_per_entry": 300}),
    ]
    ratios = {(r["scenario"], r["library"]): r for r in report.compute_ratios(rows)}
    assert [report.role(r) for r in rows[:3]] == ["asynccache", "limit", "peer"]
    assert ratios[("get", "peerlib")]["asynccache_x"] == pytest.approx(2.0)
    assert ratios[("get", "asynccache")]["of_limit"] == pytest.approx(0.1)
    assert ratios[("mem", "peerlib")]["asynccache_x"] == pytest.approx(3.0)
    targets = {t["scenario"]: t for t in report.check_targets(rows)}
    assert targets["mget 1000"]["status"] == "met"
    assert targets["mget 1000"]["ratio"] == pytest.approx(1.2)
    assert targets["get x64 tasks"]["status"] == "not measured"
    assert ratios[("get", "asynccache")]["of_best_peer"] == pytest.approx(2.0)
    assert ratios[("mem", "asynccache MemoryCache")]["of_best_peer"] == pytest.approx(3.0)
    table = report.markdown_table(rows)
    assert table.count("\n") == len(rows) + 1 and "| get | peerlib | peer |" in table


def test_report_targets_bound_from_above():
    from benchmarks import report
    from benchmarks._measure import Result

    rows = [
        Result("disk get 2KB (sequential)", "asynccache", 100, 1, 1, 1, loop_lag_p99_ms=0.4),
        Result("disk get 2KB (sequential)", "litellm DiskCache", 100, 1, 1, 1),
        Result("memory footprint (1k x 2KB)", "asynccache MemoryCache", 10, 1, 1, 1,
               extra={"bytes_per_entry": 1200}),
        Result("memory footprint (1k x 2KB)", "dict + exact-size bytes (limit)", 10, 1, 1, 1,
               extra={"bytes_per_entry": 1000, "role": "limit"}),
    ]
    checked = report.check_targets(rows)
    lag = next(t for t in checked if t["metric"] == "lag"
               and t["scenario"] == "disk get 2KB (sequential)")
    assert lag["status"] == "met" and lag["ratio"] == pytest.approx(0.4)
    footprint = next(t for t in checked if t["metric"] == "bytes")
    assert footprint["status"] == "unmet" and footprint["ratio"] == pytest.approx(1.2)
    assert "| unmet |" in report.targets_markdown(rows)
