"""multiprocessing Pool of 4 sharing one module-level cache (tests/test_deployment.py).

``python -m tests.apps.pool_app METHOD JOBS``: the parent uses the cache, then a Pool
of 4 workers started with METHOD (fork or spawn) each writes through the sync twins
(write-behind) and calls a ``cached`` model; the pool is closed and joined while the
workers' entries are still queued. Prints one JSON line with the accepted keys.
"""

from __future__ import annotations

import faulthandler
import json
import multiprocessing
import os
import signal
import sys

from asynccache import Cache
from asynccache.integrations.wrappers import cached_sync

if os.environ.get("APP_DUMP_ON_SIGUSR1"):  # to see where a hang is
    faulthandler.register(signal.SIGUSR1, all_threads=True)

cache = Cache(type="redis", url=os.environ["REDIS_URL"], namespace=os.environ["APP_NAMESPACE"],
              flush_size=500, flush_interval=30)


def fake_model(*, model: str, messages: list[dict[str, str]]) -> dict[str, object]:
    return {"model": model, "choices": [{"message": {"content": messages[-1]["content"][::-1]}}]}


complete = cached_sync(fake_model, cache=cache)


def work(job: int) -> list[str]:
    accepted = []
    key = f"job{job}"
    if cache.set_cache(key, {"job": job, "pid": os.getpid()}):
        accepted.append(key)
    answer = complete(model="fake", messages=[{"role": "user", "content": f"q{job % 5}"}])
    assert answer["choices"][0]["message"]["content"] == f"q{job % 5}"[::-1]
    assert cache.get_cache(key) == {"job": job, "pid": os.getpid()}
    return accepted


def main() -> None:
    method, jobs = sys.argv[1], int(sys.argv[2])
    accepted = ["parent"] if cache.set_cache("parent", {"pid": os.getpid()}) else []
    context = multiprocessing.get_context(method)
    with context.Pool(4) as pool:
        for keys in pool.map(work, range(jobs), chunksize=1):
            accepted.extend(keys)
        # The workers end normally, their entries still queued (flush_interval=30).
        pool.close()
        pool.join()
    print(json.dumps({"accepted": accepted}), flush=True)


if __name__ == "__main__":
    main()
