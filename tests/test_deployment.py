"""Deployment shapes: real processes on a real Redis, ended the ways applications end.

Each test runs the shape in its own processes (gunicorn with uvicorn workers, a
multiprocessing Pool, a Jupyter kernel, a script that never closes its cache...) and
then checks, from the outside, that every write the application was told was accepted
is in Redis, and that nothing was printed about destroyed tasks, unclosed resources or
tracebacks. Waits are on conditions with deadlines, never on fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from asynccache import Cache
from asynccache.keys import namespace_prefix
from tests.helpers import unique
from tests.servers.processes import (
    ManagedProcess,
    ServiceUnavailable,
    free_port,
    wait_for_port,
)

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 60.0  # seconds: only guards against a hang; every wait ends on a condition
NOISE = ("Task was destroyed", "ResourceWarning", "Traceback", "Exception ignored",
         "was never awaited", "Event loop is closed")


def redis_url(server: ManagedProcess) -> str:
    return f"redis://127.0.0.1:{server.port}/0"


def stored_keys(server: ManagedProcess, namespace: str) -> set[str]:
    """The keys of ``namespace`` in Redis, without the namespace prefix."""
    import redis

    prefix = namespace_prefix(namespace)
    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        return {key.decode()[len(prefix):]
                for key in client.scan_iter(match=prefix + "*", count=1000)}
    finally:
        client.close()


def child_env(server: ManagedProcess, namespace: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ASYNCCACHE_NO_SIGTERM_HANDLER"}
    env.update(REDIS_URL=redis_url(server), APP_NAMESPACE=namespace,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
               **extra)
    return env


def assert_quiet(stderr: str) -> None:
    found = [marker for marker in NOISE if marker in stderr]
    assert not found, f"{found} in stderr:\n{stderr[-4000:]}"


def run_python(args: list[str], env: dict[str, str], dev: bool = True
               ) -> subprocess.CompletedProcess[str]:
    flags = ["-X", "dev", "-W", "error::ResourceWarning"] if dev else []
    return subprocess.run([sys.executable, *flags, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=DEADLINE * 2)


# -- the reproductions: unreferenced write-behind caches at exit ---------------------------


@pytest.mark.parametrize(("shape", "count"), [
    ("unreferenced-sync", 100),                  # job() returns, the cache is collected
    ("unreferenced-async", 100),                 # asyncio.run(main()) without aclose()
    ("unreferenced-async-long-interval", 1000),  # flush_interval=5: nothing sent yet
    ("unreferenced-async", 710),                 # more than flush_size queued
])
def test_accepted_writes_of_an_unreferenced_cache_land_at_exit(valkey_server, shape, count):
    namespace = unique("exit")
    done = run_python(["-m", "tests.apps.exit_shapes", shape, str(count)],
                      child_env(valkey_server, namespace))
    assert done.returncode == 0, done.stderr[-4000:]
    assert stored_keys(valkey_server, namespace) == {f"k{i}" for i in range(count)}
    assert_quiet(done.stderr)


def test_write_behind_memory_cache_exits_without_destroyed_task_noise(valkey_server):
    done = run_python(["-m", "tests.apps.exit_shapes", "memory-write-behind", "10"],
                      child_env(valkey_server, unique("noise")))
    assert done.returncode == 0, done.stderr[-4000:]
    assert_quiet(done.stderr)


def test_documented_usage_patterns_leave_no_resource_warnings(valkey_server):
    namespace = unique("documented")
    done = run_python(["-m", "tests.apps.exit_shapes", "documented", "50"],
                      child_env(valkey_server, namespace))
    assert done.returncode == 0, done.stderr[-4000:]
    keys = stored_keys(valkey_server, namespace)
    assert {f"a{i}" for i in range(50)} | {f"s{i}" for i in range(50)} <= keys
    assert_quiet(done.stderr)


# -- fork ---------------------------------------------------------------------------------

_FORK_CLOSE = """
import json, multiprocessing, os, sys, time
from asynccache import Cache

url, namespace = os.environ["REDIS_URL"], os.environ["APP_NAMESPACE"]
behind = Cache(type="redis", url=url, namespace=namespace, flush_size=500, flush_interval=30)
direct = Cache(type="redis", url=url, namespace=namespace)
# Used in the parent first: per-loop pools, the bridge thread and a flush worker exist.
assert behind.set_cache("parent-behind", 1) and direct.set_cache("parent-direct", 1)
assert behind.get_cache("parent-behind") == 1 and direct.get_cache("parent-direct") == 1


def child(index, results):
    ok = (behind.set_cache(f"child{index}", index) is True
          and behind.get_cache(f"child{index}") == index
          and direct.set_cache(f"direct{index}", index) is True
          and direct.get_cache(f"direct{index}") == index)
    started = time.perf_counter()
    behind.close()
    direct.close()
    results.put({"ok": ok, "close_s": time.perf_counter() - started})


if __name__ == "__main__":
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    children = [context.Process(target=child, args=(i, results)) for i in range(4)]
    for process in children:
        process.start()
    found = [results.get(timeout=60) for _ in children]
    for process in children:
        process.join(60)
    assert [p.exitcode for p in children] == [0, 0, 0, 0], [p.exitcode for p in children]
    behind.close()
    direct.close()
    print(json.dumps(found))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_cache_used_before_fork_works_and_closes_in_the_child(valkey_server):
    namespace = unique("fork")
    done = run_python(["-c", _FORK_CLOSE], child_env(valkey_server, namespace))
    assert done.returncode == 0, done.stderr[-4000:]
    children = json.loads(done.stdout.strip().splitlines()[-1])
    assert [child["ok"] for child in children] == [True] * 4
    keys = stored_keys(valkey_server, namespace)
    assert {f"child{i}" for i in range(4)} | {f"direct{i}" for i in range(4)} <= keys
    assert {"parent-behind", "parent-direct"} <= keys
    assert_quiet(done.stderr)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_pool_of_4_with_one_module_level_cache(valkey_server, method):
    if method == "fork" and not hasattr(os, "fork"):
        pytest.skip("needs fork")
    namespace = unique(f"pool-{method}")
    done = run_python(["-m", "tests.apps.pool_app", method, "40"],
                      child_env(valkey_server, namespace))
    assert done.returncode == 0, done.stderr[-4000:]
    accepted = set(json.loads(done.stdout.strip().splitlines()[-1])["accepted"])
    assert accepted == {"parent"} | {f"job{i}" for i in range(40)}
    # The workers ended while their entries were queued (flush_interval=30): every
    # accepted one was drained on the way out.
    assert accepted <= stored_keys(valkey_server, namespace)
    assert_quiet(done.stderr)


# -- gunicorn + uvicorn workers ------------------------------------------------------------


def _get(port: int, path: str) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


@contextlib.contextmanager
def gunicorn(server: ManagedProcess, namespace: str, log: Path, preload: bool
             ) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "tests.apps.fastapi_app:app",
               "--workers", "2", "--worker-class", "uvicorn.workers.UvicornWorker",
               "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "30", "--timeout", "60"]
    if preload:
        command.append("--preload")
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=child_env(server, namespace),
                                   stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        try:
            wait_for_port(port, DEADLINE, process, "gunicorn")
        except ServiceUnavailable as exc:
            pytest.fail(f"{exc}\n{log.read_text(errors='replace')[-4000:]}")
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(DEADLINE)


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_gunicorn_uvicorn_workers_sigterm_every_accepted_write_lands(
        valkey_server, tmp_path, preload):
    namespace = unique("gunicorn")
    log = tmp_path / "gunicorn.log"
    accepted: set[str] = set()
    pids: set[object] = set()
    with gunicorn(valkey_server, namespace, log, preload) as (process, port):
        # Every request on a new connection, until both workers have answered some.
        for i in range(400):
            answer = _get(port, f"/set/k{i}")
            pids.add(answer["pid"])
            if answer["accepted"]:
                accepted.add(f"k{i}")
            content = _get(port, f"/complete/p{i % 7}")
            assert content["content"] == f"p{i % 7}"[::-1]
            if len(pids) == 2 and i >= 40:
                break
        assert len(pids) == 2, "both workers should have served requests"
        process.send_signal(signal.SIGTERM)
        assert process.wait(DEADLINE) == 0, log.read_text(errors="replace")[-4000:]
    output = log.read_text(errors="replace")
    keys = stored_keys(valkey_server, namespace)
    # Queued for up to 30 s (flush_interval) in the workers: drained on the way out.
    assert accepted and accepted <= keys, sorted(accepted - keys)[:20]
    assert_quiet(output)


# -- Jupyter kernel -------------------------------------------------------------------------


def test_jupyter_kernel_mixes_sync_twins_and_await_in_one_kernel(valkey_server, tmp_path):
    pytest.importorskip("ipykernel")
    from jupyter_client.manager import KernelManager

    namespace = unique("jupyter")
    env = child_env(valkey_server, namespace, JUPYTER_RUNTIME_DIR=str(tmp_path),
                    JUPYTER_DATA_DIR=str(tmp_path), IPYTHONDIR=str(tmp_path / "ipython"),
                    JUPYTER_PLATFORM_DIRS="1")
    manager = KernelManager(kernel_name="python3")
    manager.kernel_cmd = [sys.executable, "-m", "ipykernel_launcher", "-f",
                          "{connection_file}"]
    manager.start_kernel(env=env, cwd=str(ROOT))
    client = manager.client()
    client.start_channels()
    cells = [
        "import os\nfrom asynccache import Cache\n"
        "cache = Cache(type='redis', url=os.environ['REDIS_URL'],"
        " namespace=os.environ['APP_NAMESPACE'], flush_size=500, flush_interval=30)",
        # Sync twins on the kernel's thread, whose own loop is running: via the bridge.
        "assert cache.set_cache('sync', 1) is True\nassert cache.get_cache('sync') == 1",
        # Top-level await on the kernel's loop, in the same kernel.
        "assert await cache.async_set_cache('awaited', 2) is True\n"
        "assert await cache.async_get_cache('awaited') == 2\n"
        "assert cache.get_cache('awaited') == 2",
        "from asynccache.integrations.wrappers import cached\n"
        "async def model(**request):\n    return {'echo': request['messages'][-1]}\n"
        "complete = cached(model, cache=cache)\n"
        "first = await complete(model='m', messages=['hi'])\n"
        "again = await complete(model='m', messages=['hi'])\n"
        "assert first == again == {'echo': 'hi'}",
        "print('queued', cache.queued_writes)",
    ]
    try:
        client.wait_for_ready(timeout=DEADLINE)
        for cell in cells:
            reply = client.execute_interactive(cell, timeout=DEADLINE,
                                               output_hook=lambda message: None)
            content = reply["content"]
            assert content["status"] == "ok", (cell, content.get("evalue"),
                                               content.get("traceback"))
    finally:
        client.stop_channels()
        # A normal kernel shutdown: the queued writes drain at its exit.
        manager.shutdown_kernel(now=False)
    keys = stored_keys(valkey_server, namespace)
    assert {"sync", "awaited"} <= keys
    assert len(keys) >= 3  # and the cached model answer


# -- 300 asyncio.run() calls ------------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
def test_300_consecutive_asyncio_runs_keep_connections_and_fds_bounded(valkey_server):
    import redis

    namespace = unique("runs")
    name = unique("runs-client")
    cache = Cache(type="redis", host="127.0.0.1", port=valkey_server.port,
                  namespace=namespace, client_name=name, flush_size=50)
    admin = redis.Redis(host="127.0.0.1", port=valkey_server.port)

    def our_connections() -> int:
        return sum(1 for client in admin.client_list() if client.get("name") == name)

    async def one_run(run: int) -> None:
        # No aclose(): the loop's pool closes when asyncio.run() ends, and the queued
        # writes move to the bridge loop.
        await asyncio.gather(*(cache.async_set_cache(f"r{run}-{i}", i) for i in range(3)))
        assert await cache.async_get_cache(f"r{run}-0") == 0

    try:
        asyncio.run(one_run(-1))
        fds_after_first = _open_fds()
        peak_fds = peak_connections = 0
        for run in range(300):
            asyncio.run(one_run(run))
            peak_fds = max(peak_fds, _open_fds())
            if run % 50 == 0:
                peak_connections = max(peak_connections, our_connections())
        cache.flush()
        peak_connections = max(peak_connections, our_connections())
        # A loop's pool holds a few connections and closes with its loop; only the
        # bridge loop's pool outlives the runs.
        assert peak_fds - fds_after_first <= 16, (fds_after_first, peak_fds)
        assert peak_connections <= 8
        keys = stored_keys(valkey_server, namespace)
        assert {f"r{run}-{i}" for run in range(300) for i in range(3)} <= keys
    finally:
        cache.close()
        admin.close()
    assert our_connections_after_close(valkey_server, name) == 0


def our_connections_after_close(server: ManagedProcess, name: str) -> int:
    import redis

    admin = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            count = sum(1 for client in admin.client_list() if client.get("name") == name)
            if count == 0 or time.monotonic() > deadline:
                return count
            time.sleep(0.01)  # the server notices closed sockets asynchronously
    finally:
        admin.close()


# -- threads next to an event loop -------------------------------------------------------------


async def test_8_threads_use_sync_twins_while_the_main_thread_runs_a_loop(valkey_server):
    cache = Cache(type="redis", host="127.0.0.1", port=valkey_server.port,
                  namespace=unique("threads"), flush_size=100)
    errors: list[BaseException] = []
    start = threading.Barrier(9)

    def worker(index: int) -> None:
        try:
            start.wait(DEADLINE)
            for i in range(50):
                key = f"t{index}-{i}"
                assert cache.set_cache(key, {"thread": index, "i": i}) is True
                assert cache.get_cache(key) == {"thread": index, "i": i}
            assert cache.batch_get_cache([f"t{index}-{i}" for i in range(50)]) == [
                {"thread": index, "i": i} for i in range(50)]
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    try:
        await asyncio.to_thread(start.wait, DEADLINE)
        # Meanwhile the main thread's loop keeps using the same cache.
        for i in range(100):
            assert await cache.async_set_cache(f"main{i}", i) is True
            assert await cache.async_get_cache(f"main{i}") == i
    finally:
        for thread in threads:
            await asyncio.to_thread(thread.join, DEADLINE)
    assert errors == []
    await cache.async_flush()
    assert await cache.async_batch_get_cache([f"t7-{i}" for i in range(50)]) == [
        {"thread": 7, "i": i} for i in range(50)]
    await cache.aclose()
    assert cache.stats()["given_up"] == 0


# -- recovery with the default settings --------------------------------------------------------


async def test_recovery_after_a_restart_with_defaults_needs_no_caller_to_probe(
        private_valkey):
    cache = Cache(type="redis", port=private_valkey.port, namespace=unique("restart"))
    assert cache.breaker.cooldown == 0.25  # the default: probes at most 0.25 s apart
    try:
        assert await cache.async_set_cache("before", 1) is True
        await asyncio.to_thread(private_valkey.kill)
        while cache.stats()["circuit"] == "closed":
            assert await cache.async_get_cache("before") is None  # a miss, never a raise
        # Open: callers are skipped without touching the dead server...
        skipped = cache.stats()["skipped_open_circuit"]
        errors = cache.stats()["errors"] + cache.stats()["timeouts"]
        assert await cache.async_set_cache("while-down", 1) is False
        assert cache.stats()["skipped_open_circuit"] == skipped + 1
        assert cache.stats()["errors"] + cache.stats()["timeouts"] == errors
        # ...while background probes keep failing.
        probes = cache.stats()["failed_probes"]
        deadline = time.monotonic() + DEADLINE
        while cache.stats()["failed_probes"] < probes + 3:
            assert time.monotonic() < deadline, "the background probes stopped"
            await asyncio.sleep(0.01)
        await asyncio.to_thread(private_valkey.start)
        probes_at_restart = cache.stats()["probes"]
        # Nobody calls the cache now: a background probe alone closes the circuit.
        while cache.stats()["circuit"] != "closed":
            assert time.monotonic() < deadline, "the circuit never closed"
            await asyncio.sleep(0.01)
        # At most the probe in flight at the restart and the next one.
        assert cache.stats()["probes"] - probes_at_restart <= 2
        assert await cache.async_set_cache("after", 2) is True
        assert await cache.async_get_cache("after") == 2
    finally:
        await cache.aclose()
