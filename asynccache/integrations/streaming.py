"""Streamed chat completions: assemble them as they pass, replay them from the cache.

A streamed miss is handed to the caller chunk by chunk while :class:`StreamAssembler`
builds the complete response (content, reasoning content, tool-call deltas, legacy
function calls, refusals, finish reasons, usage). Only when the stream ends normally is
the assembled response stored, in the same form as a non-streamed response, so streamed
and non-streamed requests for the same question share one entry. A stream that raises or
is closed early is not stored.

A hit is replayed by :func:`replay_chunks` as OpenAI-format chunks, all at once (no
sleeps). Chunks in another format (Anthropic events...) pass through untouched but are
not cached.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

from ..exceptions import ResponseTypeError
from .responses import CacheInfo, is_pydantic, to_data

__all__ = [
    "KNOWN_RESPONSE_TYPES", "KNOWN_STREAM_TYPES", "REPLAY_CHUNK_CHARS", "CachedStream",
    "NotAssemblable", "ReplayStream", "StreamAssembler", "replay_chunks",
]

logger = logging.getLogger("asynccache.integrations")

#: Characters of content per replayed chunk.
REPLAY_CHUNK_CHARS = 64

# Streaming chunk class -> the non-streamed response class of the same SDK.
KNOWN_STREAM_TYPES: dict[str, str] = {
    "openai.types.chat.chat_completion_chunk:ChatCompletionChunk":
        "openai.types.chat.chat_completion:ChatCompletion",
    "litellm.types.utils:ModelResponseStream": "litellm.types.utils:ModelResponse",
}
KNOWN_RESPONSE_TYPES = {v: k for k, v in KNOWN_STREAM_TYPES.items()}


class NotAssemblable(ValueError):
    """The stream's chunks are not OpenAI-format chat chunks."""


class _Choice:
    __slots__ = ("content", "finish_reason", "function_call", "logprobs", "reasoning",
                 "refusal", "role", "tool_calls")

    def __init__(self) -> None:
        self.role: str | None = None
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.refusal: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.function_call: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.logprobs: list[Any] = []


class StreamAssembler:
    """Builds one chat completion (as a dict) from OpenAI-format stream chunks."""

    def __init__(self) -> None:
        self.meta: dict[str, Any] = {}
        self.choices: dict[int, _Choice] = {}
        self.usage: Any = None
        self.valid = True
        self.chunks = 0

    def add(self, chunk: Any) -> None:
        """Fold one chunk in (dict or pydantic); marks the stream unassemblable if odd."""
        if not self.valid:
            return
        try:
            self._add(to_data(chunk) if is_pydantic(chunk) else chunk)
        except (NotAssemblable, TypeError, AttributeError, ValueError):
            self.valid = False

    def _add(self, data: Any) -> None:
        if not isinstance(data, Mapping) or not isinstance(data.get("choices"), list):
            raise NotAssemblable("not a chat completion chunk")
        self.chunks += 1
        for name in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if data.get(name) is not None and name not in self.meta:
                self.meta[name] = data[name]
        if data.get("usage"):
            self.usage = data["usage"]
        for raw in data["choices"]:
            index = int(raw.get("index") or 0)
            choice = self.choices.setdefault(index, _Choice())
            delta = raw.get("delta") or {}
            if delta.get("role"):
                choice.role = delta["role"]
            if delta.get("content"):
                choice.content.append(delta["content"])
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                choice.reasoning.append(reasoning)
            if delta.get("refusal"):
                choice.refusal.append(delta["refusal"])
            for call in delta.get("tool_calls") or []:
                self._add_tool_call(choice, call)
            function_call = delta.get("function_call")
            if function_call:
                current = choice.function_call or {"name": "", "arguments": ""}
                current["name"] += function_call.get("name") or ""
                current["arguments"] += function_call.get("arguments") or ""
                choice.function_call = current
            if raw.get("finish_reason"):
                choice.finish_reason = raw["finish_reason"]
            logprobs = raw.get("logprobs")
            if isinstance(logprobs, Mapping) and logprobs.get("content"):
                choice.logprobs.extend(logprobs["content"])

    @staticmethod
    def _add_tool_call(choice: _Choice, call: Mapping[str, Any]) -> None:
        index = int(call.get("index") or 0)
        current = choice.tool_calls.get(index)
        if current is None:
            current = choice.tool_calls[index] = {
                "id": None, "type": "function", "function": {"name": "", "arguments": ""},
            }
        if call.get("id"):
            current["id"] = call["id"]
        if call.get("type"):
            current["type"] = call["type"]
        function = call.get("function") or {}
        current["function"]["name"] += function.get("name") or ""
        current["function"]["arguments"] += function.get("arguments") or ""

    def result(self) -> dict[str, Any] | None:
        """The assembled response, or ``None`` if the chunks could not be assembled."""
        if not self.valid or not self.chunks or not self.choices:
            return None
        choices = []
        for index in sorted(self.choices):
            choice = self.choices[index]
            message: dict[str, Any] = {
                "role": choice.role or "assistant",
                "content": "".join(choice.content) if choice.content else None,
            }
            if choice.reasoning:
                message["reasoning_content"] = "".join(choice.reasoning)
            if choice.refusal:
                message["refusal"] = "".join(choice.refusal)
            if choice.tool_calls:
                message["tool_calls"] = [choice.tool_calls[i] for i in sorted(choice.tool_calls)]
            if choice.function_call:
                message["function_call"] = choice.function_call
            choices.append({
                "index": index,
                "message": message,
                "finish_reason": choice.finish_reason or "stop",
                "logprobs": {"content": choice.logprobs} if choice.logprobs else None,
            })
        response: dict[str, Any] = {
            "id": self.meta.get("id", ""),
            "object": "chat.completion",
            "created": self.meta.get("created", 0),
            "model": self.meta.get("model", ""),
            "choices": choices,
        }
        for name in ("system_fingerprint", "service_tier"):
            if name in self.meta:
                response[name] = self.meta[name]
        if self.usage is not None:
            response["usage"] = self.usage
        return response


def _pieces(text: str, size: int = REPLAY_CHUNK_CHARS) -> Iterator[str]:
    for start in range(0, len(text), size):
        yield text[start : start + size]


def replay_chunks(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """OpenAI-format chunks (dicts) that reassemble into ``response``.

    Text completions (``choices[].text``) are replayed as text chunks; chat completions
    as role, reasoning, content, refusal, tool-call and finish chunks, then a usage chunk.
    """
    base = {
        "id": response.get("id", ""),
        "object": "chat.completion.chunk",
        "created": response.get("created", 0),
        "model": response.get("model", ""),
    }
    if response.get("system_fingerprint"):
        base["system_fingerprint"] = response["system_fingerprint"]
    chunks: list[dict[str, Any]] = []

    def emit(index: int, delta: dict[str, Any], finish: str | None = None) -> None:
        chunks.append({**base, "choices": [
            {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
        ]})

    for choice in response.get("choices") or []:
        index = int(choice.get("index") or 0)
        message = choice.get("message") or {}
        if not message and "text" in choice:  # text completion
            for piece in _pieces(choice.get("text") or ""):
                chunks.append({**base, "object": "text_completion", "choices": [
                    {"index": index, "text": piece, "finish_reason": None, "logprobs": None}
                ]})
            chunks.append({**base, "object": "text_completion", "choices": [
                {"index": index, "text": "", "finish_reason": choice.get("finish_reason"),
                 "logprobs": None}
            ]})
            continue
        emit(index, {"role": message.get("role") or "assistant", "content": ""})
        for piece in _pieces(message.get("reasoning_content") or ""):
            emit(index, {"reasoning_content": piece})
        for piece in _pieces(message.get("content") or ""):
            emit(index, {"content": piece})
        for piece in _pieces(message.get("refusal") or ""):
            emit(index, {"refusal": piece})
        for position, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") or {}
            emit(index, {"tool_calls": [{
                "index": position, "id": call.get("id"), "type": call.get("type", "function"),
                "function": {"name": function.get("name", ""),
                             "arguments": function.get("arguments", "")},
            }]})
        if message.get("function_call"):
            emit(index, {"function_call": message["function_call"]})
        emit(index, {}, choice.get("finish_reason") or "stop")
    if response.get("usage"):
        chunks.append({**base, "choices": [], "usage": response["usage"]})
    return chunks


class CachedStream:
    """A streamed miss: yields the upstream chunks and stores the whole once complete.

    Async-iterable and an async context manager; closing it early (``aclose()`` or
    leaving ``async with``) closes the upstream stream and stores nothing. Other
    attributes are those of the upstream stream object.
    """

    def __init__(self, upstream: Any,
                 on_complete: Callable[[dict[str, Any], type | None], Awaitable[None]],
                 info: CacheInfo, *, keep_chunks: bool = False) -> None:
        self._upstream = upstream
        #: The chunks as received (as data), kept when the cache stores them losslessly.
        self.kept_chunks: list[Any] | None = [] if keep_chunks else None
        self._iterator: Any = None
        self._assembler = StreamAssembler()
        self._on_complete = on_complete
        self._done = False
        self._chunk_type: type | None = None
        self.cache_info = info

    def __aiter__(self) -> CachedStream:
        return self

    async def __anext__(self) -> Any:
        if self._iterator is None:
            self._iterator = _async_iter(self._upstream)
        try:
            chunk = await self._iterator.__anext__()
        except StopAsyncIteration:
            if not self._done:
                self._done = True
                assembled = self._assembler.result()
                if assembled is not None:
                    await self._on_complete(assembled, self._chunk_type)
            raise
        except BaseException:
            self._done = True  # an errored stream is never stored
            raise
        if self._chunk_type is None and is_pydantic(chunk):
            self._chunk_type = type(chunk)
        self._assembler.add(chunk)
        if self.kept_chunks is not None:
            self.kept_chunks.append(to_data(chunk))
        return chunk

    async def aclose(self) -> None:
        """Stop early: close the upstream stream; nothing is stored."""
        self._done = True
        for target in (self._iterator, self._upstream):
            closer = getattr(target, "aclose", None) or getattr(target, "close", None)
            if closer is not None:
                try:
                    result = closer()
                    if hasattr(result, "__await__"):
                        await result
                except Exception:
                    logger.debug("asynccache: closing an upstream stream failed", exc_info=True)
                break

    close = aclose

    async def __aenter__(self) -> CachedStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if not self._done:
            await self.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._upstream, name)


class ReplayStream:
    """A streamed hit: the cached response replayed as chunks, with no delay."""

    def __init__(self, chunks: list[Any], info: CacheInfo) -> None:
        self._chunks = iter(chunks)
        self.cache_info = info

    def __aiter__(self) -> ReplayStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None

    def __iter__(self) -> ReplayStream:
        return self

    def __next__(self) -> Any:
        return next(self._chunks)

    async def aclose(self) -> None:
        """Stop replaying."""
        self._chunks = iter(())

    close = aclose

    async def __aenter__(self) -> ReplayStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def _wrap_sync_iter(iterable: Any) -> AsyncIterator[Any]:
    import asyncio

    iterator = iter(iterable)
    sentinel = object()
    while True:
        # A blocking upstream iterator runs in a worker thread, off the event loop.
        item = await asyncio.to_thread(next, iterator, sentinel)
        if item is sentinel:
            return
        yield item


def _async_iter(upstream: Any) -> Any:
    if hasattr(upstream, "__aiter__"):
        return upstream.__aiter__()
    if hasattr(upstream, "__iter__"):
        return _wrap_sync_iter(upstream)
    raise ResponseTypeError(
        f"stream=True call returned a {type(upstream).__name__}, not an iterable")
