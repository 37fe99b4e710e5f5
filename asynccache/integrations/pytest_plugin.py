"""pytest plugin: deterministic, offline LLM calls from recorded cassettes.

Installed with asynccache (entry point ``pytest11``), so every test suite can use:

* the ``llm_cassette`` fixture: a :class:`~asynccache.Cache` on this test's cassette,
  also made the default cache for the test, so ``cached(fn)`` without ``cache=`` uses it;
* the ``llm_cassette`` marker, on a test, a class or a module (``pytestmark``), to name
  the cassette: ``@pytest.mark.llm_cassette("checkout")`` uses
  ``<test folder>/cassettes/checkout.json``; several tests naming one cassette share it
  (one cassette per module: ``pytestmark = pytest.mark.llm_cassette("<module>")``).
  ``record_mode=`` on the marker sets that test's mode when the command line does not;
* ``--llm-cache-mode=record|replay|new_episodes|off`` for the whole run (ini option
  ``llm_cache_mode``; default ``replay``, so CI never calls a provider by accident), and
  ``llm_cassette_dir`` (ini, default ``cassettes``) for where cassettes live.

Without a marker a test's cassette is ``cassettes/<module>/<test name>.json``. In
``replay`` mode a request missing from the cassette fails the test with
:class:`~asynccache.exceptions.ReplayMissError`, which names the nearest recorded request
and the fields that differ; nothing goes upstream.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..backends.cassette import RECORD_MODES, Cassette, validate_record_mode
from ..facade import Cache, set_default_cache

__all__ = [
    "cassette_path", "llm_cassette", "pytest_addoption", "pytest_configure",
    "pytest_sessionfinish", "record_mode_for",
]

_CASSETTES = pytest.StashKey[dict[tuple[Path, str], Cassette]]()
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-\[\]]+")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("asynccache", "asynccache LLM cassettes")
    group.addoption(
        "--llm-cache-mode", choices=RECORD_MODES, default=None, dest="llm_cache_mode",
        help="record: call providers and write cassettes; replay: answer only from "
             "cassettes (a missing answer fails the test); new_episodes: replay and record "
             "what is missing; off: ignore cassettes (default: ini llm_cache_mode or replay)")
    parser.addini("llm_cache_mode", "default cassette mode of the run", default="replay")
    parser.addini("llm_cassette_dir", "cassette folder, relative to each test file",
                  default="cassettes")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "llm_cassette(name=None, *, record_mode=None): the LLM cassette of a test, class or "
        "module (asynccache)")
    config.stash[_CASSETTES] = {}


def pytest_sessionfinish(session: pytest.Session) -> None:
    for cassette in session.config.stash.get(_CASSETTES, {}).values():
        cassette.save()


def record_mode_for(request: pytest.FixtureRequest) -> str:
    """The mode of this test: command line, then the marker, then the ini option."""
    chosen = request.config.getoption("llm_cache_mode")
    if chosen is None:
        marker = request.node.get_closest_marker("llm_cassette")
        chosen = marker.kwargs.get("record_mode") if marker is not None else None
    if chosen is None:
        chosen = request.config.getini("llm_cache_mode") or "replay"
    return validate_record_mode(chosen)


def cassette_path(request: pytest.FixtureRequest) -> Path:
    """Where this test's cassette lives (see the module docstring)."""
    folder = Path(request.node.path).parent / str(request.config.getini("llm_cassette_dir"))
    marker = request.node.get_closest_marker("llm_cassette")
    name = None
    if marker is not None:
        name = marker.args[0] if marker.args else marker.kwargs.get("name")
    if name is None:
        module = Path(request.node.path).stem
        name = f"{module}/{_UNSAFE.sub('_', request.node.name)}"
    path = Path(str(name))
    if path.suffix != ".json":
        path = path.with_name(path.name + ".json")
    return path if path.is_absolute() else folder / path


def _shared_cassette(config: pytest.Config, path: Path, mode: str) -> Cassette:
    # One Cassette per file and mode for the whole run: tests sharing a file add to it,
    # and record mode starts each file empty once, not once per test.
    cassettes = config.stash[_CASSETTES]
    key = (path.resolve(), mode)
    cassette = cassettes.get(key)
    if cassette is None:
        cassette = cassettes[key] = Cassette(path, mode)
    return cassette


@pytest.fixture
def llm_cassette(request: pytest.FixtureRequest) -> Iterator[Cache]:
    """A cache on this test's cassette, also the default cache while the test runs."""
    cassette = _shared_cassette(request.config, cassette_path(request), record_mode_for(request))
    cache = Cache(type="cassette", cassette=cassette)
    previous = set_default_cache(cache)
    try:
        yield cache
    finally:
        set_default_cache(previous)
        # The cache is left open: a write still in flight (LiteLLM stores in a background
        # task) lands in the shared cassette, which is saved now and again at session end.
        cassette.save()
