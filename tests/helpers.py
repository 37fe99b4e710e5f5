"""Helpers shared by the tests: a fake clock, realistic values, cache tracking."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from asynccache.base import BaseCache


class FakeClock:
    """A clock the test moves by hand: ``clock.advance(60)``."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def chat_completion(text: str = "Bonjour, voilà la réponse — 你好 ✓", size: int = 2000) -> dict:
    """A realistic ~2 KB chat completion with non-ASCII text."""
    body = (text + " ") * max(1, size // (len(text.encode()) + 1))
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex,
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-2024-08-06",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": body[:size], "tool_calls": None},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 25, "completion_tokens": 412, "total_tokens": 437},
    }


class CacheTracker:
    """Makes caches with test defaults and closes every one at teardown."""

    def __init__(self, build: Callable[..., BaseCache], defaults: dict[str, Any] | None = None
                 ) -> None:
        self._build = build
        self._defaults = defaults or {}
        self.caches: list[BaseCache] = []

    def __call__(self, **settings: Any) -> BaseCache:
        cache = self._build(**{**self._defaults, **settings})
        self.caches.append(cache)
        return cache

    async def aclose(self) -> None:
        for cache in self.caches:
            if not cache.closed:
                await cache.aclose()


async def settle() -> None:
    """Let already-scheduled callbacks run (no sleeping on wall-clock time)."""
    for _ in range(3):
        await asyncio.sleep(0)


def assert_in_forked_child(body: Callable[[], list[bool]]) -> None:
    """Run ``body`` in a forked child and fail unless every check it returns is true.

    The child's exit status names what went wrong: 2 for an exception, 10 + the index of
    the first false check otherwise.
    """
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 1
        try:
            checks = body()
            status = 0 if all(checks) else 10 + checks.index(False)
        except BaseException:
            status = 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), status
    assert os.WEXITSTATUS(status) == 0, f"child failed with status {os.WEXITSTATUS(status)}"
