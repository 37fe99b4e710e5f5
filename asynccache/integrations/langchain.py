"""LangChain's LLM cache on any asynccache backend.

>>> from langchain_core.globals import set_llm_cache
>>> from asynccache import Cache
>>> from asynccache.integrations.langchain import AsyncCacheLangChain
>>> set_llm_cache(AsyncCacheLangChain(Cache()))

The async methods (``alookup`` / ``aupdate`` / ``aclear``) are native; the sync ones are
generated from them by asynccache's bridge. Generations are stored with
``langchain_core.load.dumps`` and read back with ``loads`` restricted to LangChain's core
classes, so cache contents can never instantiate anything else.
"""

from __future__ import annotations

import ast
import json
import logging
import warnings
from collections.abc import Sequence
from typing import Any

from langchain_core._api.beta_decorator import LangChainBetaWarning
from langchain_core.caches import RETURN_VAL_TYPE
from langchain_core.caches import BaseCache as LangChainBaseCache
from langchain_core.load import dumps, loads
from langchain_core.outputs import Generation

from ..base import BaseCache
from ..bridge import sync_twin
from ..config import NOT_GIVEN, NotGiven
from ..exceptions import ConfigurationError
from ..keys import request_key
from ..recording import check_replay_miss, remember_requests

__all__ = [
    "AsyncCacheLangChain",
]

logger = logging.getLogger("asynccache.integrations")

_FORMAT = "langchain-generations-1"


class AsyncCacheLangChain(LangChainBaseCache):
    """A LangChain ``BaseCache`` backed by an asynccache :class:`~asynccache.Cache`.

    * ``namespace``: where the entries live (default: ``"langchain"``, or
      ``"<cache namespace>.langchain"``), so :meth:`aclear` removes LangChain's entries
      and nothing else;
    * ``ttl``: seconds entries live (default: the cache's TTL; ``None``: never expire).
    """

    def __init__(self, cache: BaseCache, *, namespace: str | None = None,
                 ttl: float | NotGiven | None = NOT_GIVEN) -> None:
        if not isinstance(cache, BaseCache):
            raise ConfigurationError(
                "AsyncCacheLangChain needs an asynccache cache (Cache, MemoryCache, "
                f"RedisCache...), got {type(cache).__name__}")
        self.cache = cache
        if namespace is None:
            namespace = f"{cache.namespace}.langchain" if cache.namespace else "langchain"
        self.namespace = namespace
        self.ttl = ttl

    @staticmethod
    def key(prompt: str, llm_string: str) -> str:
        """The entry key of a (prompt, LLM configuration) pair."""
        return request_key({"langchain_prompt": prompt, "llm_string": llm_string})

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """The cached generations for ``prompt`` and ``llm_string``, or ``None``."""
        key = self.key(prompt, llm_string)
        stored = await self.cache.async_get_cache(key, namespace=self.namespace)
        if not isinstance(stored, dict) or stored.get("format") != _FORMAT:
            # A cassette in replay mode raises here, naming the nearest recorded prompt.
            await check_replay_miss(self.cache, _request(prompt, llm_string), key,
                                    self.namespace)
            return None
        try:
            with warnings.catch_warnings():
                # ``loads`` is marked beta; the restricted form used here is stable enough.
                warnings.simplefilter("ignore", LangChainBetaWarning)
                generations = [loads(text, allowed_objects="core")
                               for text in stored["generations"]]
        except Exception:
            logger.warning("asynccache: unreadable LangChain cache entry treated as a miss",
                           exc_info=True)
            return None
        if not all(isinstance(g, Generation) for g in generations):
            return None
        return generations

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Store the generations for ``prompt`` and ``llm_string``."""
        value = {"format": _FORMAT, "generations": [dumps(g) for g in _generations(return_val)]}
        key = self.key(prompt, llm_string)
        await self.cache.async_set_cache(key, value, ttl=self.ttl, namespace=self.namespace)
        await remember_requests(self.cache, [(key, _request(prompt, llm_string))],
                                self.namespace)

    async def aclear(self, **kwargs: Any) -> None:
        """Delete every LangChain entry of this adapter's namespace."""
        await self.cache.async_clear(namespace=self.namespace)

    lookup = sync_twin(alookup)
    update = sync_twin(aupdate)
    clear = sync_twin(aclear)


def _request(prompt: str, llm_string: str) -> dict[str, Any]:
    """A LangChain lookup as a request whose fields can be compared one by one.

    The prompt is usually serialised messages (JSON) and ``llm_string`` the model's
    settings (JSON or a printed list of pairs), then ``---`` and the call's parameters;
    each part is split into fields when it parses, and kept as text otherwise.
    """
    settings, sep, params = llm_string.partition("---")
    request: dict[str, Any] = {"prompt": _parsed(prompt), "llm": _parsed(settings)}
    if sep:
        request["call_params"] = _parsed(params)
    return request


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text
    if isinstance(value, list) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        return {str(name): item for name, item in value}
    return value if isinstance(value, list | dict) else text


def _generations(return_val: Sequence[Generation]) -> list[Generation]:
    generations = list(return_val)
    for generation in generations:
        if not isinstance(generation, Generation):
            raise ConfigurationError(
                f"LangChain cache values must be Generation objects, got "
                f"{type(generation).__name__}")
    return generations
