"""The public surface: one sorted ``__all__`` whose every name imports and is documented."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re

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
