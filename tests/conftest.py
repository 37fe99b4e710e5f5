"""Test wiring: backend plugins, the contract parametrisation and shared helpers.

Every module in ``tests/plugins/`` is loaded as a pytest plugin. A plugin that adds a
backend to the contract suite defines ``CONTRACT_BACKENDS = {"name": "fixture_name"}``
where the fixture returns a factory ``make(**settings) -> BaseCache`` that makes caches
isolated from other tests (fresh store or unique namespace) and closes them afterwards.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.plugins", "tests.helpers")

_PLUGIN_DIR = Path(__file__).parent / "plugins"
pytest_plugins = sorted(
    f"tests.plugins.{path.stem}" for path in _PLUGIN_DIR.glob("*.py")
    if not path.name.startswith("_")
)


def contract_backends() -> dict[str, str]:
    backends: dict[str, str] = {}
    for plugin in pytest_plugins:
        backends.update(getattr(importlib.import_module(plugin), "CONTRACT_BACKENDS", {}))
    return backends


@pytest.fixture(params=sorted(contract_backends()))
def make_cache(request: pytest.FixtureRequest):
    """Factory of caches for every backend in the contract suite."""
    return request.getfixturevalue(contract_backends()[request.param])
