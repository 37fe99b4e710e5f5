"""The public surface: one sorted ``__all__`` whose every name imports and is documented."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
from pathlib import Path

import pytest

import asynccache

_LAZY: dict[str, str] = asynccache._LAZY


def isort_order(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps ``__all__`` in: CONSTANTS, Classes, then the rest."""
    if re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
        return 0, name
    if name[:1].isupper():
        return 1, name
    return 2, name


def test_all_is_sorted_and_has_no_duplicates():
    names = list(asynccache.__all__)
    assert names == sorted(names, key=isort_order)
    assert len(names) == len(set(names))


def test_every_lazy_name_is_public():
    assert set(_LAZY) <= set(asynccache.__all__)


@pytest.mark.parametrize("name", asynccache.__all__)
def test_every_public_name_imports(name):
    value = getattr(asynccache, name)
    assert value is not None
    namespace: dict[str, object] = {}
    exec(f"from asynccache import {name}", namespace)
    assert namespace[name] is value
    if inspect.isclass(value) or inspect.isfunction(value):
        assert inspect.getdoc(value), f"{name} has no docstring"


def test_star_import_gives_exactly_the_public_names():
    present = [
        name for name in asynccache.__all__
        if name not in _LAZY or importlib.util.find_spec(_LAZY[name]) is not None
    ]
    namespace: dict[str, object] = {}
    exec(f"from asynccache import {', '.join(present)}", namespace)
    assert set(present) <= set(namespace)


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        asynccache.no_such_name  # noqa: B018


def test_errors_share_one_root():
    for name in asynccache.__all__:
        if name.endswith("Error"):
            assert issubclass(getattr(asynccache, name), asynccache.CacheError), name


def test_version_is_a_string():
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", asynccache.__version__)




def _public_modules() -> list[str]:
    root = Path(asynccache.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if any(part.startswith("_") for part in parts[1:]) or path.name == "__init__.py":
            continue
        found.append(".".join(parts))
    return found


@pytest.mark.parametrize("module_name", _public_modules())
def test_public_modules_declare_what_they_export(module_name):
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # an optional extra that is not installed
        pytest.skip(f"needs {exc.name}")
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{module_name} has no __all__"
    assert sorted(exported, key=isort_order) == list(exported)
    for name in exported:
        assert hasattr(module, name), f"{module_name}.__all__ names missing {name!r}"
