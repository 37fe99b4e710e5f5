"""A FastAPI app served by gunicorn + uvicorn workers in tests/test_deployment.py.

One module-level cache on Redis with write-behind (a long flush interval, so accepted
entries are still queued when the server is told to stop) and a ``cached`` fake model.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from asynccache import Cache
from asynccache.integrations.wrappers import cached

cache = Cache(type="redis", url=os.environ["REDIS_URL"], namespace=os.environ["APP_NAMESPACE"],
              flush_size=500, flush_interval=30)
app = FastAPI()


async def fake_model(*, model: str, messages: list[dict[str, str]]) -> dict[str, object]:
    return {"model": model, "choices": [{"message": {"content": messages[-1]["content"][::-1]}}]}


complete = cached(fake_model, cache=cache)


@app.get("/set/{key}")
async def set_key(key: str) -> dict[str, object]:
    return {"accepted": await cache.async_set_cache(key, {"pid": os.getpid()}), "pid": os.getpid()}


@app.get("/complete/{prompt}")
async def complete_prompt(prompt: str) -> dict[str, object]:
    result = await complete(model="fake", messages=[{"role": "user", "content": prompt}])
    return {"content": result["choices"][0]["message"]["content"], "pid": os.getpid()}


@app.get("/queued")
async def queued() -> dict[str, int]:
    return {"queued": cache.queued_writes, "pid": os.getpid()}
