"""Deployment figures with default settings: recovery, entries flushed at exit, fork close.

    python -m benchmarks.deployment_report          # starts its own valkey-server

* recovery after a restart: Redis SIGKILLed under 64 workers (set+get) and started
  again; seconds from the server listening again to the first successful round trip,
  and to every worker's (the cache has default settings);
* entries flushed at exit: a write-behind cache that the program never closes, in each
  shape of ``tests/apps/exit_shapes.py`` (entries accepted vs entries in Redis after the
  process ended);
* fork child close time: ``close()`` of a cache (write-behind and plain) used in the
  parent, then in a ``multiprocessing`` fork child.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from benchmarks.fault_report import kill_restart
from tests.servers.processes import ManagedProcess, start_valkey

ROOT = Path(__file__).resolve().parents[1]
EXIT_SHAPES = [("unreferenced-sync", 100), ("unreferenced-async", 100),
               ("unreferenced-async-long-interval", 1000), ("unreferenced-async", 710)]

_FORK_CLOSE = """
import json, multiprocessing, os, time
from asynccache import Cache

url, namespace = os.environ["REDIS_URL"], os.environ["APP_NAMESPACE"]
behind = Cache(type="redis", url=url, namespace=namespace, flush_size=500)
plain = Cache(type="redis", url=url, namespace=namespace)
assert behind.set_cache("p", 1) and plain.set_cache("q", 1)


def child(index, results):
    behind.set_cache(f"c{index}", index)
    plain.get_cache("q")
    started = time.perf_counter()
    behind.close()
    plain.close()
    results.put(time.perf_counter() - started)


if __name__ == "__main__":
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    children = [context.Process(target=child, args=(i, results)) for i in range(8)]
    for process in children:
        process.start()
    print(json.dumps([results.get(timeout=60) for _ in children]))
    for process in children:
        process.join(60)
"""


def _env(server: ManagedProcess, namespace: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(REDIS_URL=f"redis://127.0.0.1:{server.port}/0", APP_NAMESPACE=namespace,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    return env


def _count(server: ManagedProcess, namespace: str) -> int:
    import redis

    from asynccache.keys import namespace_prefix

    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        return sum(1 for _ in client.scan_iter(match=namespace_prefix(namespace) + "*",
                                               count=1000))
    finally:
        client.close()


def exit_shapes(server: ManagedProcess) -> list[dict[str, Any]]:
    figures = []
    for shape, count in EXIT_SHAPES:
        namespace = f"exit-{uuid.uuid4().hex[:8]}"
        done = subprocess.run([sys.executable, "-m", "tests.apps.exit_shapes", shape,
                               str(count)], cwd=ROOT, env=_env(server, namespace),
                              capture_output=True, text=True, timeout=120)
        figures.append({"shape": shape, "accepted": count, "in_redis": _count(server, namespace),
                        "exit_code": done.returncode})
    return figures


def fork_close(server: ManagedProcess) -> list[float]:
    done = subprocess.run([sys.executable, "-c", _FORK_CLOSE], cwd=ROOT,
                          env=_env(server, f"fork-{uuid.uuid4().hex[:8]}"),
                          capture_output=True, text=True, timeout=120, check=True)
    return sorted(json.loads(done.stdout.strip().splitlines()[-1]))


async def recovery(server: ManagedProcess, rounds: int) -> list[tuple[float, float]]:
    found = []
    for _ in range(rounds):
        figures = await kill_restart(server, workers=64, rounds=5)
        found.append((figures.recovery_s, figures.all_workers_recovered_s))
    return found


def main() -> None:
    server = start_valkey(search=False, name="deployment-report")
    try:
        shapes = exit_shapes(server)
        closes = fork_close(server)
        recoveries = asyncio.run(recovery(server, 3))
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
    print("asynccache deployment figures (default settings, valkey-server on 127.0.0.1)")
    print("\nentries flushed at exit, cache never closed:")
    for row in shapes:
        print(f"  {row['shape']:<36} {row['in_redis']:>5} of {row['accepted']:>5} "
              f"(exit code {row['exit_code']})")
    print(f"\nfork child close() (write-behind + plain cache), 8 children: median "
          f"{statistics.median(closes) * 1000:.1f} ms, max {max(closes) * 1000:.1f} ms")
    print("\nRedis SIGKILLed under 64 workers, restarted (3 runs):")
    for first, every in recoveries:
        print(f"  first success {first:.3f} s after the restart, all 64 workers {every:.3f} s")


if __name__ == "__main__":
    main()
