"""Caching real LLM calls: call wrappers, streaming, per-input embeddings, adapters.

* :func:`cached` / :func:`cached_sync`: wrap any LLM call (OpenAI, Anthropic, LiteLLM,
  your own function);
* :func:`cache_info`: where a wrapped call's result came from (:class:`CacheInfo`);
* ``asynccache.integrations.langchain.AsyncCacheLangChain``: LangChain's ``BaseCache``;
* ``asynccache.integrations.litellm.as_litellm_cache``: an object for ``litellm.cache``.

The LangChain and LiteLLM adapters are imported on first access, so neither package is
needed to use the wrappers.
"""

from __future__ import annotations

import importlib
from typing import Any

from .responses import CachedDict, CacheInfo, cache_info
from .singleflight import LeaseOptions, SingleFlight
from .wrappers import CachedFunction, SyncStream, cached, cached_sync

_SUBMODULES = {"langchain", "litellm"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CacheInfo",
    "CachedDict",
    "CachedFunction",
    "LeaseOptions",
    "SingleFlight",
    "SyncStream",
    "cache_info",
    "cached",
    "cached_sync",
]
