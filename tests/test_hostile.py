"""Hostile input on every contract backend: keys, namespaces, values and corrupt bytes.

Property tests (hypothesis) run against each backend of the contract suite through the
``make_cache`` fixture. Hypothesis drives the examples from a worker thread while each
example's cache calls run on the test's own event loop (where the fixture made the
caches), so the number of examples can be chosen per backend: local stores get more,
network stores fewer, to keep the suite fast. Every example uses a fresh namespace.

The number of hostile inputs tried is printed at the end of the module.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import os
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from asynccache import (
    ConfigurationError,
    ItemTooLargeError,
    SerializationError,
    envelope,
)
from asynccache.backends._blob import MAX_KEY_CHARS, object_name
from asynccache.backends.disk import DiskCache
from asynccache.keys import namespace_prefix

LOCAL_BACKENDS = {"memory", "dual", "disk", "disk-files", "sqlite"}
LOCAL_EXAMPLES = 25
REMOTE_EXAMPLES = 6
KB64 = 64 * 1024

#: Hostile inputs tried, by kind (printed at the end of the module).
TRIED: Counter[str] = Counter()

# -- strategies ---------------------------------------------------------------------------

FRAGMENTS = ["..", "/", "\\", "\x00", "\n", "\r\n", "\t", ":", "::", "*", "?", "[", "]",
             "%", "%2F", "%3A", "~", "~~", ".", " ", "é", "日本語", "🔑", "\u202e", "\ufeff",
             "{", "}", "$", "'", '"', "<script>", "../../etc/passwd", "C:\\", "%00"]

#: Non-empty valid text built from path, glob, control and non-ASCII fragments.
hostile_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(min_size=1, max_size=12)),
    min_size=1, max_size=8,
).map("".join)

#: Text holding a lone surrogate (not encodable as UTF-8).
surrogate_text = st.tuples(
    st.text(max_size=10), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    st.text(max_size=10),
).map("".join)

#: Arbitrary garbage planted as stored bytes, plus shapes that look almost right.
garbage = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([
        b"", b"\x00", b"\x00AC", b"\x00AC\x02", envelope.MAGIC + b"\x02\x00" + b"\xff" * 16,
        envelope.MAGIC + b"\x02\x00" + b"\x00" * 16 + b"{not json", b"null", b"true",
        b"[1, 2]", b'{"v": 1, "c": 1, "e": null, "d": 1}', b"\xff\xfe\xfd",
        b"NaN", b"Infinity", b"1e999",
    ]),
)


def _backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["make_cache"])


def _examples(request: pytest.FixtureRequest) -> int:
    return LOCAL_EXAMPLES if _backend_name(request) in LOCAL_BACKENDS else REMOTE_EXAMPLES


def _fresh(prefix: str = "h") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def run_examples(request: pytest.FixtureRequest, kind: str,
                       body: Callable[..., Awaitable[None]], **strategies: Any) -> None:
    """Run ``body`` on hypothesis examples; the calls run on this test's loop.

    The example count depends on the backend under test (fewer for network stores).
    """
    loop = asyncio.get_running_loop()

    @settings(max_examples=_examples(request), deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(**strategies)
    def check(**drawn: Any) -> None:
        asyncio.run_coroutine_threadsafe(body(**drawn), loop).result(timeout=60)
        TRIED[kind] += 1

    await asyncio.to_thread(check)


@pytest.fixture(scope="module", autouse=True)
def _report_tried(request: pytest.FixtureRequest):
    yield
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is None or capture is None or not TRIED:
        return
    summary = ", ".join(f"{kind}={count}" for kind, count in sorted(TRIED.items()))
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\nhostile inputs tried: {sum(TRIED.values())} ({summary})")


# -- keys and namespaces ------------------------------------------------------------------


async def test_hostile_keys_round_trip_and_never_collide(make_cache, request):
    cache = make_cache()

    async def body(keys: list[str], namespace: str) -> None:
        ns = _fresh() + namespace
        assert await cache.async_set_cache_pipeline(
            {key: {"i": i, "key": key} for i, key in enumerate(keys)}, namespace=ns,
        ) == [True] * len(keys)
        assert await cache.async_batch_get_cache(keys, namespace=ns) == [
            {"i": i, "key": key} for i, key in enumerate(keys)
        ]
        for i, key in enumerate(keys):
            assert await cache.async_get_cache(key, namespace=ns) == {"i": i, "key": key}
            # The same key in a sibling namespace is another entry.
            assert await cache.async_get_cache(key, namespace=ns + "x") is None
        assert await cache.async_delete_cache(keys[0], namespace=ns) is True
        assert await cache.async_get_cache(keys[0], namespace=ns) is None
        if len(keys) > 1:
            assert await cache.async_get_cache(keys[1], namespace=ns) == {"i": 1, "key": keys[1]}

    await run_examples(request, "keys", body,
                       keys=st.lists(hostile_text, min_size=1, max_size=4, unique=True),
                       namespace=hostile_text)


async def test_clear_of_one_namespace_leaves_the_others(make_cache, request):
    cache = make_cache()

    async def body(base: str, suffix: str, key: str) -> None:
        # ``inner`` extends ``outer`` (a prefix relation) and ``other`` shares a suffix:
        # the cases where a naive prefix match or glob would reach the wrong entries.
        run = _fresh()
        outer, inner, other = run + base, run + base + suffix, suffix + run
        for ns in (outer, inner, other):
            assert await cache.async_set_cache(key, ns, namespace=ns) is True
        await cache.async_clear(namespace=outer)
        assert await cache.async_get_cache(key, namespace=outer) is None
        assert await cache.async_get_cache(key, namespace=inner) == inner
        assert await cache.async_get_cache(key, namespace=other) == other
        await cache.async_set_cache(key, outer, namespace=outer)
        await cache.async_clear(namespace=inner)
        assert await cache.async_get_cache(key, namespace=outer) == outer
        assert await cache.async_get_cache(key, namespace=other) == other

    await run_examples(request, "namespaces", body,
                       base=hostile_text, suffix=hostile_text, key=hostile_text)


@pytest.mark.parametrize("key", [
    "k" * KB64, ("../\x00\n日:%*" * KB64)[: KB64 // 2],
], ids=["ascii", "hostile-mix"])
async def test_64_kb_keys_and_namespaces_round_trip_and_stay_distinct(make_cache, key):
    cache = make_cache()
    twin = key[:-1] + ("j" if key[-1] != "j" else "k")  # differs in the last character only
    namespace = _fresh() + key
    TRIED["64kb"] += 2
    assert await cache.async_set_cache(key, "first", namespace=namespace) is True
    assert await cache.async_set_cache(twin, "twin", namespace=namespace) is True
    assert await cache.async_get_cache(key, namespace=namespace) == "first"
    assert await cache.async_get_cache(twin, namespace=namespace) == "twin"
    sibling = namespace[:-1] + "z"
    assert await cache.async_set_cache(key, "sibling", namespace=sibling) is True
    await cache.async_clear(namespace=namespace)
    assert await cache.async_batch_get_cache([key, twin], namespace=namespace) == [None, None]
    assert await cache.async_get_cache(key, namespace=sibling) == "sibling"


@pytest.mark.parametrize("key", [":", "::", ":a", "a:", "a:b", "a/:/b", "%3A:x"])
async def test_keys_with_the_namespace_separator_round_trip_without_a_namespace(make_cache, key):
    cache = make_cache(namespace=None)
    TRIED["separator_keys"] += 1
    value = {"key": key, "run": _fresh()}
    assert await cache.async_set_cache(key, value) is True
    assert await cache.async_get_cache(key) == value
    assert await cache.async_delete_cache(key) is True
    assert await cache.async_get_cache(key) is None


async def test_keys_without_a_namespace_never_meet_namespaced_keys():
    from asynccache import MemoryCache

    cache = MemoryCache()
    assert await cache.async_set_cache("a:b", "no namespace") is True
    assert await cache.async_get_cache("b", namespace="a") is None
    await cache.async_clear(namespace="a")
    assert await cache.async_get_cache("a:b") == "no namespace"


async def test_keys_that_are_not_utf8_raise_naming_the_key(make_cache, request):
    cache = make_cache()

    async def body(key: str) -> None:
        shown = repr(key[:80])
        for call in (
            lambda: cache.async_set_cache(key, 1),
            lambda: cache.async_get_cache(key),
            lambda: cache.async_delete_cache(key),
            lambda: cache.async_batch_get_cache(["fine", key]),
            lambda: cache.async_set_cache_pipeline({"fine": 1, key: 2}),
        ):
            with pytest.raises(ConfigurationError) as raised:
                await call()
            assert shown in str(raised.value)
        # Nothing half-written: the valid key of the rejected pipeline is absent.
        assert await cache.async_get_cache("fine") is None

    await run_examples(request, "surrogate_keys", body, key=surrogate_text)


@settings(max_examples=300, deadline=None, database=None)
@given(namespace=st.one_of(st.none(), hostile_text), key=hostile_text)
@example(namespace="..", key="../../../../etc/passwd")
@example(namespace="/abs", key="/etc/passwd")
@example(namespace=None, key="x" * KB64)
def test_object_store_names_never_escape_their_prefix(namespace, key):
    TRIED["object_names"] += 1
    stored = namespace_prefix(namespace) + key
    name = "cache/root/" + object_name(stored)
    segments = name.split("/")
    assert segments[:2] == ["cache", "root"]
    assert all(segment not in (".", "..") for segment in segments)
    assert all(ch.isascii() and (ch.isalnum() or ch in "-_~/") for ch in name)
    # Under the stores' 1,024-byte limit (S3, Azure) with room for a user's path.
    assert len(name.encode()) <= 1024 - 100
    # Encoded names are one-to-one: the same name only for the same stored key.
    if len(key) < MAX_KEY_CHARS // 3:
        assert object_name(namespace_prefix(namespace) + key + "x") != object_name(stored)


async def test_disk_keys_never_escape_the_cache_folder(tmp_path):
    jail = tmp_path / "jail"
    folder = jail / "cache"
    outside_before = sorted(os.listdir(tmp_path))
    cache = DiskCache(disk_cache_dir=str(folder), store="files")
    loop = asyncio.get_running_loop()
    written: list[tuple[str | None, str]] = []

    @settings(max_examples=60, deadline=None, database=None)
    @given(namespace=st.one_of(st.none(), hostile_text), key=hostile_text)
    @example(namespace="..", key="../../outside")
    @example(namespace="../..", key="/tmp/evil")
    @example(namespace=None, key="..\\..\\windows")
    def check(namespace: str | None, key: str) -> None:
        stored = namespace_prefix(namespace) + key
        path = os.path.realpath(cache.backend.path_for(stored))
        assert path.startswith(os.path.realpath(folder) + os.sep)
        asyncio.run_coroutine_threadsafe(
            cache.async_set_cache(key, key, namespace=namespace), loop).result(60)
        written.append((namespace, key))
        TRIED["disk_paths"] += 1

    try:
        await asyncio.to_thread(check)
        for namespace, key in written[-20:]:
            assert await cache.async_get_cache(key, namespace=namespace) == key
    finally:
        await cache.aclose()
    assert sorted(os.listdir(tmp_path)) == sorted([*outside_before, "jail"])
    assert os.listdir(jail) == ["cache"]
    assert await asyncio.to_thread(_files_outside, str(folder)) == []


def _files_outside(folder: str) -> list[str]:
    """Files under ``folder`` that resolve outside it, or are links (worker thread)."""
    root_path = os.path.realpath(folder) + os.sep
    escaped = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path) or not os.path.realpath(path).startswith(root_path):
                escaped.append(path)
    return escaped


# -- values -------------------------------------------------------------------------------


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


class Unserializable:
    pass


class Colour(enum.Enum):
    red = "red"


async def test_hostile_values_raise_clear_errors_naming_the_key(make_cache):
    cache = make_cache(max_item_size=4096)
    cases: list[tuple[str, Any, type[Exception], str]] = [
        ("too-big", "x" * 5000, ItemTooLargeError, "max_item_size"),
        ("too-big-bytes", b"\x00" * 5000, ItemTooLargeError, "max_item_size"),
        ("too-deep", _nested(255), SerializationError, "too-deep"),
        ("nan", {"score": float("nan")}, SerializationError, "NaN"),
        ("inf", [1.0, [float("inf")]], SerializationError, "Infinity"),
        ("minus-inf", float("-inf"), SerializationError, "Infinity"),
        ("object", {"x": Unserializable()}, SerializationError, "object"),
        ("a-set", {1, 2}, SerializationError, "a-set"),
        ("complex", 1 + 2j, SerializationError, "complex"),
        ("huge-int", 2**64, SerializationError, "huge-int"),
        ("int-keys", {1: "one"}, SerializationError, "int-keys"),
    ]
    for key, value, error, words in cases:
        TRIED["values"] += 1
        with pytest.raises(error) as raised:
            await cache.async_set_cache(key, value)
        assert repr(key) in str(raised.value) and words in str(raised.value)
        with pytest.raises(error):
            await cache.async_set_cache_pipeline({"ok-first": 1, key: value})
        assert await cache.async_get_cache(key) is None
    assert await cache.async_get_cache("ok-first") is None  # rejected pipelines store none
    # Right at the limits the values are accepted and round-trip.
    assert await cache.async_set_cache("deep-254", _nested(254)) is True
    assert await cache.async_get_cache("deep-254") == _nested(254)
    assert await cache.async_set_cache("enum", {"colour": Colour.red}) is True
    assert await cache.async_get_cache("enum") == {"colour": "red"}


async def test_bytes_values_round_trip(make_cache, request):
    cache = make_cache()

    async def body(data: bytes) -> None:
        key = _fresh("b")
        assert await cache.async_set_cache(key, data) is True
        got = await cache.async_get_cache(key)
        assert type(got) is bytes and got == data

    await run_examples(request, "bytes", body,
                       data=st.one_of(st.binary(max_size=2048),
                                      st.sampled_from([b"", b"\x00", envelope.MAGIC,
                                                       envelope.MAGIC + b"\x02\x00" * 20,
                                                       b"null", b"42", b"\xff" * 70_000])))


@dataclasses.dataclass
class Scored:
    score: float


def _numpy_values() -> list[tuple[str, Any]]:
    numpy = pytest.importorskip("numpy")
    return [("numpy-array", numpy.array([1.0, float("nan")])),
            ("numpy-float32", numpy.float32("inf"))]


async def test_nan_inside_dataclasses_and_numpy_values_is_rejected():
    from asynccache import MemoryCache

    cache = MemoryCache()
    values = [("dataclass", Scored(float("nan"))), *_numpy_values()]
    accepted = []
    for key, value in values:
        try:
            await cache.async_set_cache(key, value)
        except SerializationError:
            continue
        accepted.append((key, await cache.async_get_cache(key)))
    assert accepted == []


# -- corrupt bytes in the store -----------------------------------------------------------


async def test_corrupt_bytes_planted_in_the_store_are_a_counted_miss(make_cache, request):
    cache = make_cache()

    async def body(data: bytes) -> None:
        key = _fresh("c")
        stored = cache._stored_key(key, cache.namespace)
        await cache.backend.write_many([(stored, data, None)])
        before = cache.stats()["corrupt_entries"]
        try:
            expected: Any = envelope.decode(data).value  # a bare number is a counter
        except envelope.CorruptEntry:
            expected = None
        assert await cache.async_get_cache(key) == expected
        assert await cache.async_batch_get_cache([key, "absent"]) == [expected, None]
        counted = cache.stats()["corrupt_entries"] - before
        assert counted == (0 if expected is not None else 2)

    await run_examples(request, "corrupt_bytes", body, data=garbage)
    # The store keeps serving good entries next to the corrupt ones.
    assert await cache.async_set_cache("good", {"ok": True}) is True
    assert await cache.async_get_cache("good") == {"ok": True}


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip", "empty"])
async def test_damaged_disk_files_are_a_counted_miss(tmp_path, damage):
    cache = DiskCache(disk_cache_dir=str(tmp_path / "cache"), namespace="n", store="files")
    try:
        assert await cache.async_set_cache("victim", {"text": "x" * 100}) is True
        assert await cache.async_set_cache("neighbour", "fine") is True
        path = Path(cache.backend.path_for(cache._stored_key("victim", "n")))
        content = await asyncio.to_thread(path.read_bytes)
        damaged = {
            "truncate": content[: len(content) // 2],
            "garbage": os.urandom(len(content)),
            "flip": content[:-5] + bytes([content[-5] ^ 0xFF]) + content[-4:],
            "empty": b"",
        }[damage]
        await asyncio.to_thread(path.write_bytes, damaged)
        TRIED["disk_files"] += 1
        assert await cache.async_get_cache("victim") is None
        assert cache.stats()["corrupt_entries"] == 1
        assert not await asyncio.to_thread(path.exists)  # the torn file is removed
        assert await cache.async_get_cache("neighbour") == "fine"
        assert await cache.async_set_cache("victim", "rewritten") is True
        assert await cache.async_get_cache("victim") == "rewritten"
    finally:
        await cache.aclose()


@settings(max_examples=300, deadline=None, database=None)
@given(namespace=st.one_of(st.none(), hostile_text), key=hostile_text, other=hostile_text)
@example(namespace=None, key="x" * KB64, other="x" * (KB64 - 1))
@example(namespace="a b", key="%20", other=" ")
@example(namespace=None, key="=abc", other="abc")
@example(namespace="n", key="a b", other="c")
@example(namespace="n", key="ab", other="c" * 300)
def test_memcached_keys_are_valid_and_never_collide(namespace, key, other):
    from emcache._cython import cyemcache

    from asynccache.backends.memcached import MemcachedBackend, key_body

    TRIED["memcached_keys"] += 1
    backend = MemcachedBackend(servers=["127.0.0.1:1", "127.0.0.1:2"], key_prefix="app:")
    stored = [namespace_prefix(namespace) + key, namespace_prefix(namespace) + other]
    bodies, token_keys, _ = backend._plan(stored)
    # A batch is planned like its keys one by one (the batch fast path changes nothing).
    assert [backend._plan([one])[0][0] for one in stored] == bodies
    assert bodies == [key_body(one, backend._budget) for one in stored]
    tokens = {name: b"0123456789ab" for names in token_keys for name in names}
    for body, names in zip(bodies, token_keys, strict=True):
        item_key = backend._data_key(body, names, tokens)
        assert item_key is not None and item_key.startswith(b"app:")
        # At most 250 bytes, no spaces or control characters: what memcached accepts.
        assert len(item_key) <= 250 and cyemcache.is_key_valid(item_key)
        assert all(cyemcache.is_key_valid(name) and len(name) <= 250 for name in names)
    if key != other:
        assert bodies[0] != bodies[1]
