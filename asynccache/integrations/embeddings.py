"""Embedding calls cached per input.

A batch call (``input=[...]``) becomes one key per input (the request with ``input`` set
to that one item, so model, ``dimensions``, ``encoding_format`` and caching groups all
count). Every key is read in one batch get; only the misses (each distinct input once)
go upstream in one call; results are merged back in input order and the new vectors are
stored in one pipelined batch.

Usage accounting: the merged response's ``usage`` is the upstream response's usage, i.e.
it counts only the tokens actually sent upstream. A fully cached call reports
``prompt_tokens == total_tokens == 0``. Each stored vector records its share of the
batch's prompt tokens (an even split when the provider reports only the total); the
tokens a call saved are in ``cache_info(result).items_hit`` terms, not in ``usage``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from ..base import BaseCache, CacheHit
from ..config import NOT_GIVEN
from ..controls import CacheControls, CacheMode
from ..recording import check_replay_miss, remember_requests
from ..savings import count_saved, upstream_clock
from .responses import (
    STORE_VERSION,
    UPSTREAM_SECONDS,
    CacheInfo,
    attach_info,
    is_pydantic,
    rebuild,
    resolve_type,
    to_data,
    type_path,
)

__all__ = [
    "KIND", "cached_embedding", "split_inputs",
]

logger = logging.getLogger("asynccache.integrations")

KIND = "embedding"


def split_inputs(value: Any) -> tuple[list[Any], bool] | None:
    """The inputs of an embedding call and whether it was a single input.

    A string or a list of token ids is one input; a list of those is a batch. ``None``
    for shapes asynccache does not split (the call is then cached as a whole).
    """
    if isinstance(value, str):
        return [value], True
    if isinstance(value, list) and value:
        if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
            return [value], True
        if all(isinstance(item, str) or (
            isinstance(item, list) and all(isinstance(t, int) for t in item)
        ) for item in value):
            return list(value), False
    return None


def _item_payload(item: Mapping[str, Any], model: Any, tokens: int | None,
                  response_type: str | None, seconds: float) -> dict[str, Any]:
    data = {k: v for k, v in item.items() if k != "index"}
    return {"asynccache": STORE_VERSION, "kind": KIND, "type": response_type,
            "model": model, "prompt_tokens": tokens, "data": data,
            UPSTREAM_SECONDS: round(seconds, 4)}


def _valid_hit(hit: CacheHit | None) -> dict[str, Any] | None:
    value = None if hit is None else hit.value
    if (isinstance(value, Mapping) and value.get("asynccache") == STORE_VERSION
            and value.get("kind") == KIND and isinstance(value.get("data"), Mapping)):
        return dict(value)
    return None


def _share(total: Any, count: int, position: int) -> int | None:
    if not isinstance(total, int) or count <= 0:
        return None
    quotient, remainder = divmod(total, count)
    return quotient + (1 if position < remainder else 0)


async def cached_embedding(
    *,
    cache: BaseCache,
    mode: CacheMode,
    kwargs: dict[str, Any],
    inputs: list[Any],
    single: bool,
    controls: CacheControls,
    key_for: Callable[[dict[str, Any]], str],
    upstream: Callable[[dict[str, Any]], Awaitable[Any]],
    remembered_type: type | None,
    fail_open: Callable[[str, BaseException], None],
) -> tuple[Any, type | None]:
    """Answer an embedding call item by item; return (result, response class seen)."""
    try:
        keys = [key_for({**kwargs, "input": item}) for item in inputs]
    except Exception as exc:
        fail_open("building embedding keys", exc)
        return await upstream(kwargs), None
    hits: Sequence[CacheHit | None] = [None] * len(inputs)
    if controls.reads(mode):
        try:
            hits = await cache.async_batch_get_entries(
                keys, namespace=controls.namespace, max_age=controls.s_maxage)
        except Exception as exc:
            fail_open("embedding batch lookup", exc)
    found = [_valid_hit(hit) for hit in hits]
    missing_inputs: list[Any] = []
    missing_keys: list[str] = []
    for item, key, entry in zip(inputs, keys, found, strict=True):
        if entry is None and key not in missing_keys:
            missing_keys.append(key)
            missing_inputs.append(item)

    response: Any = None
    fresh: dict[str, dict[str, Any]] = {}
    seen_type: type | None = None
    if missing_inputs:
        # A cassette in replay mode raises here, before anything goes upstream.
        await check_replay_miss(cache, {**kwargs, "input": missing_inputs[0]}, missing_keys[0],
                                controls.namespace)
        sent = kwargs if single else {**kwargs, "input": missing_inputs}
        started = upstream_clock()
        response = await upstream(sent)
        elapsed = upstream_clock() - started
        if is_pydantic(response):
            seen_type = type(response)
        data = to_data(response)
        items = data.get("data") if isinstance(data, Mapping) else None
        if not isinstance(items, list) or len(items) != len(missing_inputs):
            # Cannot tell which vector belongs to which input: answer uncached.
            if len(missing_inputs) == len(inputs):
                return response, seen_type
            return await upstream(kwargs), seen_type
        items = sorted(items, key=lambda item: item.get("index", 0))
        usage = data.get("usage") or {}
        tokens = usage.get("prompt_tokens") if isinstance(usage, Mapping) else None
        path = type_path(seen_type) if seen_type is not None else None
        for position, (key, item) in enumerate(zip(missing_keys, items, strict=True)):
            fresh[key] = _item_payload(item, data.get("model"),
                                       _share(tokens, len(items), position), path,
                                       elapsed / len(items))
        if fresh and controls.writes(mode):
            try:
                await cache.async_set_cache_pipeline(
                    [(key, payload, controls.ttl) for key, payload in fresh.items()],
                    namespace=controls.namespace,
                )
            except Exception as exc:
                fail_open("storing embeddings", exc)
            await remember_requests(
                cache, [(key, {**kwargs, "input": item})
                        for key, item in zip(missing_keys, missing_inputs, strict=True)],
                controls.namespace)

    merged_items = []
    for index, (key, entry) in enumerate(zip(keys, found, strict=True)):
        payload = entry if entry is not None else fresh[key]
        merged_items.append({**payload["data"], "index": index})
    if response is not None:
        base = dict(to_data(response))
    else:
        first = next(entry for entry in found if entry is not None)
        base = {"object": "list", "model": first.get("model") or kwargs.get("model"),
                "usage": {"prompt_tokens": 0, "total_tokens": 0}}
    base["data"] = merged_items

    cls = seen_type or remembered_type
    if cls is None:
        cls = next((resolve_type(entry.get("type")) for entry in found
                    if entry is not None and resolve_type(entry.get("type"))), None)
    result = rebuild(base, cls)
    namespace = cache.namespace if controls.namespace is NOT_GIVEN else controls.namespace
    for entry in found:
        if entry is not None:
            tokens = entry.get("prompt_tokens")
            count_saved(cache, None, namespace=namespace, model=entry.get("model"),
                        seconds=entry.get(UPSTREAM_SECONDS),
                        usage=(tokens if isinstance(tokens, int) else 0, 0, 0))
    items_hit = sum(entry is not None for entry in found)
    hit_ages = [hit.age for hit in hits if hit is not None and hit.age is not None]
    info = CacheInfo(
        cache_hit=items_hit == len(inputs),
        cache_key=keys[0] if single else None,
        age=max(hit_ages) if hit_ages else None,
        backend=cache.backend.name,
        items_hit=items_hit,
        items_total=len(inputs),
    )
    return attach_info(result, info), seen_type
