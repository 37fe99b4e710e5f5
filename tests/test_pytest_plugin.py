"""The pytest plugin, run on generated test suites with ``pytester``."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

PLUGIN = "asynccache.integrations.pytest_plugin"
ROOT = Path(__file__).resolve().parent.parent
INI = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"


def _entry_point_installed() -> bool:
    return any(ep.value == PLUGIN for ep in importlib.metadata.entry_points(group="pytest11"))


def plugin_args() -> list[str]:
    # Once asynccache is installed with its entry point, pytest loads the plugin itself
    # and loading it a second time with -p would be refused.
    return [] if _entry_point_installed() else ["-p", PLUGIN]


# A suite as a user writes it: an upstream that counts its calls and refuses to be
# called when the test says so, wrapped with cached() and no explicit cache.
SUITE = '''
import pytest
from asynccache import cached

CALLS = []


async def upstream(**request):
    CALLS.append(request)
    content = "answer to " + request["messages"][-1]["content"]
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": request["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}}


ask = cached(upstream)


async def test_capital(llm_cassette):
    reply = await ask(model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTION}])
    assert reply["choices"][0]["message"]["content"] == "answer to " + QUESTION


def test_upstream_calls():
    print(f"UPSTREAM CALLS: {len(CALLS)}")
'''


def write_suite(pytester: pytest.Pytester, question: str) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_chat=SUITE.replace("QUESTION", repr(question)))


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*plugin_args(), "-s", "-p", "no:cacheprovider", *args)


def test_record_then_replay_offline(pytester):
    write_suite(pytester, "What is the capital of France?")
    recorded = run(pytester, "--llm-cache-mode=record")
    recorded.assert_outcomes(passed=2)
    recorded.stdout.fnmatch_lines(["*UPSTREAM CALLS: 1*"])
    cassette = pytester.path / "cassettes" / "test_chat" / "test_capital.json"
    entries = json.loads(cassette.read_text())["entries"]
    assert entries[0]["request"]["messages"][0]["content"] == "What is the capital of France?"

    before = cassette.read_bytes()
    replayed = run(pytester)  # the default mode is replay
    replayed.assert_outcomes(passed=2)
    replayed.stdout.fnmatch_lines(["*UPSTREAM CALLS: 0*"])
    assert cassette.read_bytes() == before  # replay never rewrites the file


def test_a_replay_miss_fails_the_test_with_the_differences(pytester):
    write_suite(pytester, "What is the capital of France?")
    run(pytester, "--llm-cache-mode=record").assert_outcomes(passed=2)
    write_suite(pytester, "What is the capital of Spain?")
    result = run(pytester, "--llm-cache-mode=replay")
    result.assert_outcomes(passed=1, failed=1)
    output = result.stdout.str()
    cassette = pytester.path / "cassettes" / "test_chat" / "test_capital.json"
    for line in (
        f"ReplayMissError: asynccache replay miss: no recorded answer for this request in "
        f"cassette {cassette} (mode replay); 1 recorded request; requested model 'gpt-4o-mini'",
        "differs in 1 field:",
        "- messages[0].content: recorded 'What is the capital of France?', requested "
        "'What is the capital of Spain?'",
        "to record it: pytest --llm-cache-mode=new_episodes",
    ):
        assert line in output
    result.stdout.fnmatch_lines(["*UPSTREAM CALLS: 0*"])


def test_new_episodes_records_only_what_is_missing(pytester):
    write_suite(pytester, "What is the capital of France?")
    run(pytester, "--llm-cache-mode=record").assert_outcomes(passed=2)
    write_suite(pytester, "What is the capital of Spain?")
    result = run(pytester, "--llm-cache-mode=new_episodes")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*UPSTREAM CALLS: 1*"])
    cassette = pytester.path / "cassettes" / "test_chat" / "test_capital.json"
    assert len(json.loads(cassette.read_text())["entries"]) == 2


def test_off_mode_calls_upstream_and_writes_nothing(pytester):
    write_suite(pytester, "Hello?")
    result = run(pytester, "--llm-cache-mode=off")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*UPSTREAM CALLS: 1*"])
    assert not (pytester.path / "cassettes").exists()


def test_a_module_marker_shares_one_cassette_and_the_ini_sets_the_mode(pytester):
    pytester.makeini(INI + "llm_cache_mode = new_episodes\nllm_cassette_dir = recordings\n")
    pytester.makepyfile(test_shared='''
import pytest
from asynccache import cached

pytestmark = pytest.mark.llm_cassette("shared")
CALLS = []


def ask(cache, text):
    return cached(upstream, cache=cache)(model="m", messages=[{"role": "user", "content": text}])


async def upstream(**request):
    CALLS.append(request)
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}


async def test_one(llm_cassette):
    await ask(llm_cassette, "a")


async def test_two(llm_cassette):
    await ask(llm_cassette, "a")
    await ask(llm_cassette, "b")


@pytest.mark.llm_cassette("own", record_mode="off")
async def test_three(llm_cassette):
    await ask(llm_cassette, "a")


def test_calls():
    print(f"UPSTREAM CALLS: {len(CALLS)}")
''')
    result = pytester.runpytest(*plugin_args(), "-s", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    # "a" once for the shared cassette, "b" once, "a" again in the test whose mode is off.
    result.stdout.fnmatch_lines(["*UPSTREAM CALLS: 3*"])
    shared = json.loads((pytester.path / "recordings" / "shared.json").read_text())
    assert len(shared["entries"]) == 2
    assert not (pytester.path / "recordings" / "own.json").exists()


def test_an_unknown_mode_is_a_usage_error(pytester):
    write_suite(pytester, "x")
    result = run(pytester, "--llm-cache-mode=rewind")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llm-cache-mode: invalid choice: 'rewind'*"])


def test_the_plugin_is_declared_as_a_pytest11_entry_point():
    declared = (ROOT / "pyproject.toml").read_text()
    assert f'[project.entry-points.pytest11]\nasynccache = "{PLUGIN}"\n' in declared
    distribution = importlib.metadata.distribution("asynccache")
    installed = {ep.name: ep for ep in distribution.entry_points if ep.group == "pytest11"}
    if not installed:
        pytest.skip("the installed asynccache metadata predates the pytest11 entry point "
                    "(reinstall asynccache to register it)")
    assert installed["asynccache"].value == PLUGIN
    assert installed["asynccache"].load().__name__ == PLUGIN
    assert any(ep.value == PLUGIN for ep in importlib.metadata.entry_points(group="pytest11"))
