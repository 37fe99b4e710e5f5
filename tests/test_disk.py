"""``type="disk"`` beyond the shared contract: which store a folder opens with, and the
file store's files, safety, eviction and failures (the SQLite store has tests/test_sqlite.py)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

import pytest

from asynccache import Cache, CacheConnectionError, ConfigurationError
from asynccache.backends import disk
from asynccache.backends.disk import (
    SQLITE_FILE,
    STORES,
    SUFFIX,
    DiskBackend,
    DiskCache,
    SQLiteDiskBackend,
    entry_file,
)
from asynccache.keys import namespace_prefix
from tests.helpers import FakeClock, chat_completion


def entry_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(SUFFIX))


def all_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def file_of(cache: DiskCache, key: str, namespace: str | None = None) -> Path:
    backend = cache.backend
    assert isinstance(backend, DiskBackend)
    return Path(backend.path_for(namespace_prefix(namespace) + key))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
async def make(folder: Path):
    made: list[DiskCache] = []

    def build(**settings) -> DiskCache:
        cache = DiskCache(**{"disk_cache_dir": str(folder), "store": "files", **settings})
        made.append(cache)
        return cache

    yield build
    for cache in made:
        await cache.aclose()


async def test_constructor_touches_nothing_and_first_write_creates_the_folder(make, folder):
    cache = make()
    assert not folder.exists()
    assert await cache.async_set_cache("k", 1) is True
    assert folder.is_dir()
    assert len(entry_files(folder)) == 1


async def test_entries_persist_across_cache_instances(make):
    value = chat_completion()
    first = make(namespace="app")
    await first.async_set_cache("answer", value, ttl=None)
    await first.async_set_cache("counter", 0)
    await first.async_increment("counter", 5)
    await first.aclose()
    second = make(namespace="app")
    assert await second.async_get_cache("answer") == value
    assert await second.async_get_cache("counter") == 5


HOSTILE_KEYS = [
    "../../etc/passwd", "../" * 40 + "escape", "/etc/shadow", "C:\\Windows\\system32",
    "nul\x00byte", "line\nbreak\r\n", "ключ-🔑-鍵", "k" * 65_536, ".", "..", "~", "$HOME", "",
]


async def test_hostile_keys_and_namespaces_stay_inside_the_cache_folder(make, folder, tmp_path):
    outside_before = sorted(os.listdir(tmp_path.parent))
    cache = make()
    for namespace in (None, "..", "../../ns", "a/b", "x" * 5000):
        for key in HOSTILE_KEYS[:-1]:
            assert await cache.async_set_cache(key, {"k": key}, namespace=namespace) is True
    for namespace in (None, "..", "../../ns", "a/b", "x" * 5000):
        for key in HOSTILE_KEYS[:-1]:
            assert await cache.async_get_cache(key, namespace=namespace) == {"k": key}
    # Everything written is below the cache folder, under fixed or hashed names.
    assert os.listdir(tmp_path) == ["cache"]
    assert sorted(os.listdir(tmp_path.parent)) == outside_before
    files = all_files(folder)
    assert len(files) == 5 * (len(HOSTILE_KEYS) - 1)
    for path in files:
        assert path.resolve().is_relative_to(folder.resolve())
        assert len(path.name) == 64 + len(SUFFIX)
        assert set(path.name[:64]) <= set("0123456789abcdef")
    assert sum(len(name) for name in os.listdir(folder)) < 500  # folder names are hashed


async def test_writes_leave_no_temp_files(make, folder):
    cache = make()
    await cache.async_set_cache_pipeline({f"k{i}": chat_completion() for i in range(40)})
    await asyncio.gather(*(cache.async_set_cache("same", i) for i in range(20)))
    files = all_files(folder)
    assert files == entry_files(folder)
    assert len(files) == 41


async def test_readers_see_the_old_entry_until_the_new_one_is_renamed_in(make, monkeypatch):
    cache = make()
    old, new = chat_completion(text="old"), chat_completion(text="new")
    await cache.async_set_cache("k", old)
    loop = asyncio.get_running_loop()
    real_replace = disk._replace
    seen: list[tuple[object, str, str]] = []

    def replace_after_a_read(src: str, dst: str) -> None:
        # Runs in the worker thread: the new bytes are fully written to `src`; a read
        # through the cache (another hop) must still see the old entry at `dst`.
        read = asyncio.run_coroutine_threadsafe(cache.async_get_cache("k"), loop)
        seen.append((read.result(timeout=30), os.path.dirname(src), os.path.dirname(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(disk, "_replace", replace_after_a_read)
    assert await cache.async_set_cache("k", new) is True
    assert len(seen) == 1
    read_during_write, src_folder, dst_folder = seen[0]
    assert read_during_write == old
    assert src_folder == dst_folder  # same folder: the rename is atomic
    assert await cache.async_get_cache("k") == new


async def test_the_reads_and_writes_of_one_tick_share_one_thread_hop(make, monkeypatch):
    cache = make()
    await cache.async_set_cache_pipeline({f"k{i}": i for i in range(64)})
    hops: list[int] = []
    real_work = disk._TickBatcher._work

    def counting(loop, batch):
        hops.append(len(batch))
        real_work(loop, batch)

    monkeypatch.setattr(disk._TickBatcher, "_work", staticmethod(counting))
    got = await asyncio.gather(*(cache.async_get_cache(f"k{i}") for i in range(64)))
    assert got == list(range(64))
    assert hops == [64]
    hops.clear()
    assert all(await asyncio.gather(*(cache.async_set_cache(f"n{i}", i) for i in range(64))))
    assert hops == [64]
    assert await cache.async_batch_get_cache([f"n{i}" for i in range(64)]) == list(range(64))


@pytest.mark.parametrize("content", [
    b"", b"garbage that is not an entry", b"ACD1" + b"\x00" * 10,
])
async def test_garbage_file_is_a_miss_and_is_removed(make, content):
    cache = make()
    await cache.async_set_cache("k", "good")
    path = file_of(cache, "k")
    path.write_bytes(content)
    assert await cache.async_get_cache("k") is None
    assert not path.exists()
    assert await cache.async_set_cache("k", "again") is True
    assert await cache.async_get_cache("k") == "again"


async def test_truncated_or_bit_flipped_file_is_a_miss(make):
    cache = make()
    await cache.async_set_cache("k", chat_completion())
    path = file_of(cache, "k")
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])
    assert await cache.async_get_cache("k") is None
    flipped = bytearray(whole)
    flipped[-20] ^= 0x01
    path.write_bytes(bytes(flipped))
    assert await cache.async_get_cache("k") is None


async def test_file_holding_another_key_is_a_miss(make):
    cache = make()
    path = file_of(cache, "wanted")
    path.parent.mkdir(parents=True)
    path.write_bytes(entry_file("someone-else", b"\x00theirs"))
    assert await cache.async_get_cache("wanted") is None
    assert await cache.async_get_cache("someone-else") is None  # lives at another path


async def test_expired_entry_is_a_miss_and_its_file_is_deleted(make):
    clock = FakeClock()
    cache = make(clock=clock)
    await cache.async_set_cache("short", "v", ttl=10)
    await cache.async_set_cache("long", "v", ttl=1000)
    path = file_of(cache, "short")
    assert path.exists()
    clock.advance(40)
    assert await cache.async_get_ttl("short") is None
    assert not path.exists()
    await cache.async_set_cache("short2", "v", ttl=10)
    clock.advance(11)
    assert await cache.async_get_cache("short2") is None
    assert not file_of(cache, "short2").exists()
    assert await cache.async_get_ttl("long") == pytest.approx(949)
    assert file_of(cache, "long").exists()


async def entry_size(folder: Path) -> int:
    probe = DiskCache(disk_cache_dir=str(folder / "probe"), store="files")
    await probe.async_set_cache("k0", "x" * 1000)
    size = entry_files(folder / "probe")[0].stat().st_size
    await probe.aclose()
    return size


async def test_eviction_keeps_the_newest_within_max_bytes(make, folder, tmp_path):
    size = await entry_size(tmp_path)
    cache = make(max_bytes=size * 3 + size // 2)
    for i in range(10):
        assert await cache.async_set_cache(f"k{i}", "x" * 1000) is True
    assert await cache.async_batch_get_cache([f"k{i}" for i in range(10)]) == (
        [None] * 7 + ["x" * 1000] * 3
    )
    assert sum(p.stat().st_size for p in entry_files(folder)) <= size * 3 + size // 2
    assert len(entry_files(folder)) == 3
    assert cache.backend.evictions == 7


async def test_eviction_is_least_recently_used(make, tmp_path):
    size = await entry_size(tmp_path)
    cache = make(max_bytes=size * 3 + size // 2)
    for key in ("a", "b", "c"):
        await cache.async_set_cache(key, "x" * 1000)
    assert await cache.async_get_cache("a") == "x" * 1000  # a is now the most recent
    await cache.async_set_cache("d", "x" * 1000)
    assert await cache.async_batch_get_cache(["a", "b", "c", "d"]) == [
        "x" * 1000, None, "x" * 1000, "x" * 1000
    ]


async def test_a_new_instance_scans_the_folder_and_evicts_the_oldest_files(make, folder, tmp_path):
    size = await entry_size(tmp_path)
    first = make()
    for i in range(6):
        await first.async_set_cache(f"old{i}", "x" * 1000)
        os.utime(file_of(first, f"old{i}"), (1_000_000 + i, 1_000_000 + i))
    await first.aclose()
    second = make(max_bytes=size * 4 + size // 2)
    await second.async_set_cache("new", "x" * 1000)
    assert await second.async_batch_get_cache([f"old{i}" for i in range(6)] + ["new"]) == (
        [None] * 3 + ["x" * 1000] * 4
    )


async def test_an_item_larger_than_max_bytes_is_refused(make):
    cache = make(max_bytes=500)
    assert await cache.async_set_cache("big", "x" * 1000) is False
    assert await cache.async_get_cache("big") is None
    assert await cache.async_set_cache("small", "x") is True


async def test_stale_temp_files_are_removed_by_the_first_scan(make, folder):
    shard = folder / "_default" / "ab"
    shard.mkdir(parents=True)
    stale, fresh = shard / ("a" * 64 + ".ace.dead.tmp"), shard / ("b" * 64 + ".ace.live.tmp")
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    os.utime(stale, (1_000_000, 1_000_000))
    cache = make()
    await cache.async_set_cache("k", 1)
    assert not stale.exists()
    assert fresh.exists()


async def test_clear_of_a_namespace_deletes_only_its_files(make, folder):
    cache = make()
    for namespace in ("a", "a:b", "b", None):
        await cache.async_set_cache_pipeline({f"k{i}": i for i in range(5)}, namespace=namespace)
    foreign = folder / "notes.txt"
    foreign.write_text("not a cache file")
    assert await cache.async_clear(namespace="a") == 5
    assert not any(file_of(cache, f"k{i}", "a").exists() for i in range(5))
    for namespace in ("a:b", "b", None):
        assert all(file_of(cache, f"k{i}", namespace).exists() for i in range(5))
        assert await cache.async_get_cache("k3", namespace=namespace) == 3
    assert await cache.async_clear(namespace=None) == 15
    assert entry_files(folder) == []
    assert foreign.read_text() == "not a cache file"


async def test_clear_with_an_arbitrary_prefix_reads_the_stored_keys(make):
    cache = make()
    await cache.async_set_cache_pipeline({"user-1": 1, "user-2": 2, "other": 3})
    assert await cache.backend.remove_prefix("user-") == 2
    assert await cache.async_batch_get_cache(["user-1", "user-2", "other"]) == [None, None, 3]


async def test_concurrent_writers_of_one_key_leave_one_valid_value(make, folder):
    caches = [make(), make(), make()]
    values = [chat_completion(text=f"writer {i}") for i in range(30)]

    async def write(i: int) -> bool:
        cache = caches[i % 3]
        if i % 2:
            return await asyncio.to_thread(cache.set_cache, "shared", values[i])
        return await cache.async_set_cache("shared", values[i])

    assert await asyncio.gather(*(write(i) for i in range(30))) == [True] * 30
    assert all_files(folder) == [file_of(caches[0], "shared")]
    got = await make().async_get_cache("shared")
    assert got in values


async def test_concurrent_increments_in_one_process_lose_nothing(make):
    clock = FakeClock()
    cache = make(clock=clock)
    results = await asyncio.gather(*(cache.async_increment("n", ttl=100) for _ in range(40)))
    assert sorted(results) == list(range(1, 41))
    assert await cache.async_get_cache("n") == 40
    clock.advance(60)
    await cache.async_increment("n")
    assert await cache.async_get_ttl("n") == pytest.approx(40)  # the counter keeps its expiry


async def test_a_new_folder_opens_with_the_sqlite_store(folder):
    cache = Cache(type="disk", disk_cache_dir=str(folder), max_bytes=10 * 1024 * 1024)
    try:
        assert isinstance(cache.backend, SQLiteDiskBackend)
        assert not folder.exists()  # the constructor only looked
        assert await cache.async_set_cache("k", {"answer": "hello"}) is True
        assert (folder / SQLITE_FILE).is_file()
        assert entry_files(folder) == []
        assert "store='sqlite'" in repr(cache) and "max_bytes=10485760" in repr(cache)
        assert cache.stats()["backend"] == "disk"
    finally:
        await cache.aclose()
    reopened = Cache(type="disk", disk_cache_dir=str(folder))
    try:
        assert isinstance(reopened.backend, SQLiteDiskBackend)
        assert await reopened.async_get_cache("k") == {"answer": "hello"}
    finally:
        await reopened.aclose()


async def test_a_folder_of_file_entries_keeps_its_store_so_an_upgrade_loses_nothing(folder):
    older = DiskCache(disk_cache_dir=str(folder), store="files", namespace="chat")
    await older.async_set_cache("kept", {"from": "the file store"})
    await older.aclose()
    for cache in (DiskCache(disk_cache_dir=str(folder), namespace="chat"),
                  Cache(type="disk", disk_cache_dir=str(folder), namespace="chat")):
        try:
            assert isinstance(cache.backend, DiskBackend)
            assert await cache.async_get_cache("kept") == {"from": "the file store"}
            assert await cache.async_set_cache("new", 1) is True
            assert not (folder / SQLITE_FILE).exists()
        finally:
            await cache.aclose()
    # Asked for explicitly, the SQLite store starts empty beside the files.
    fresh = DiskCache(disk_cache_dir=str(folder), namespace="chat", store="sqlite")
    try:
        assert isinstance(fresh.backend, SQLiteDiskBackend)
        assert await fresh.async_get_cache("kept") is None
        assert await fresh.async_set_cache("k", 1) is True
    finally:
        await fresh.aclose()
    # Once the folder holds the SQLite file, it opens with the SQLite store.
    again = DiskCache(disk_cache_dir=str(folder), namespace="chat")
    try:
        assert isinstance(again.backend, SQLiteDiskBackend)
    finally:
        await again.aclose()


async def test_cache_facade_builds_the_file_store(folder):
    cache = Cache(type="disk", disk_cache_dir=str(folder), max_bytes=10 * 1024 * 1024,
                  store="files")
    try:
        assert isinstance(cache.backend, DiskBackend)
        key = cache.get_cache_key(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert await cache.async_set_cache(key, {"answer": "hello"}) is True
        assert await cache.async_get_cache(key) == {"answer": "hello"}
        assert len(entry_files(folder)) == 1
        assert str(folder) in repr(cache) and "max_bytes=10485760" in repr(cache)
    finally:
        await cache.aclose()
    with pytest.raises(ConfigurationError, match="cache_size"):
        Cache(type="disk", disk_cache_dir=str(folder), cache_size=3)


@pytest.mark.parametrize("settings, message", [
    ({"max_bytes": 0}, "max_bytes"), ({"max_bytes": "1GB"}, "max_bytes"),
    ({"disk_cache_dir": ""}, "disk_cache_dir"), ({"disk_cache_dir": 42}, "disk_cache_dir"),
    ({"store": "sqlite3"}, "store"), ({"store": "files", "max_bytes": -1}, "max_bytes"),
])
def test_bad_settings_raise_naming_them(settings, message):
    with pytest.raises(ConfigurationError, match=message):
        DiskCache(**settings)


@pytest.mark.parametrize("store", STORES)
async def test_unusable_folder_fails_test_connection_but_never_get_or_set(tmp_path, store):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the cache folder's parent should be")
    cache = DiskCache(disk_cache_dir=str(blocker / "cache"), store=store)
    try:
        with pytest.raises(CacheConnectionError, match="disk"):
            await cache.async_test_connection()
        assert await cache.async_ping() is False
        assert await cache.async_set_cache("k", chat_completion()) is False
        assert await cache.async_set_cache_pipeline({"a": 1, "b": 2}) == [False, False]
        assert await cache.async_get_cache("k") is None
        assert await cache.async_increment("n") is None
        assert cache.stats()["errors"] >= 3
    finally:
        await cache.aclose()
    assert blocker.is_file()


async def test_no_file_system_call_runs_on_the_event_loop_thread(make):
    """Audit hooks see every open/rename/remove/mkdir/scandir and the thread that made it."""
    loop_thread = threading.get_ident()
    on_loop: list[str] = []
    off_loop: list[str] = []
    watching = threading.Event()
    watched = {"open", "os.rename", "os.remove", "os.mkdir", "os.scandir", "os.listdir"}

    def hook(event: str, args: tuple) -> None:
        if watching.is_set() and event in watched:
            (on_loop if threading.get_ident() == loop_thread else off_loop).append(event)

    sys.addaudithook(hook)  # cannot be removed: it stays inert once `watching` is cleared
    clock = FakeClock()
    cache = make(clock=clock, max_bytes=20_000)
    watching.set()
    try:
        await cache.async_set_cache_pipeline({f"k{i}": chat_completion() for i in range(20)},
                                             ttl=5)
        await cache.async_batch_get_cache([f"k{i}" for i in range(20)])
        await cache.async_increment("n")
        await cache.async_get_ttl("n")
        await cache.async_delete_cache("k19")
        clock.advance(10)
        await cache.async_get_cache("k18")  # expired: purged
        await cache.async_clear()
        await cache.async_test_connection()
    finally:
        watching.clear()
    assert on_loop == []
    assert {"open", "os.rename", "os.remove", "os.mkdir", "os.scandir"} <= set(off_loop)
    assert cache.backend.evictions > 0  # eviction ran too
