"""A deterministic fake async LLM that counts its calls (no network).

Responses are OpenAI SDK pydantic objects (``ChatCompletion``, ``ChatCompletionChunk``,
``CreateEmbeddingResponse``) or, with ``as_dict=True``, the same data as dicts.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk


class UpstreamError(RuntimeError):
    """What the fake raises when told to fail (like a provider's 500)."""


def answer_for(kwargs: dict[str, Any]) -> str:
    messages = kwargs.get("messages") or [{"content": kwargs.get("prompt", "")}]
    last = messages[-1].get("content", "")
    return f"Answer to «{last}» from {kwargs.get('model')} — voilà ✓ " * 3


def vector_for(text: Any, dims: int = 8) -> list[float]:
    digest = hashlib.sha256(repr(text).encode()).digest()
    return [round(b / 255, 6) for b in digest[:dims]]


def tokens_for(text: Any) -> int:
    return len(text.split()) if isinstance(text, str) else len(text)


class FakeLLM:
    """Chat completions (plain and streamed) and embeddings, with call counters.

    * ``gate``: when set to an ``asyncio.Event``, every chat call waits for it (lets a
      test hold calls in flight without sleeping);
    * ``fail``: raise :class:`UpstreamError` on chat calls while true;
    * ``empty``: return a completion with no content;
    * ``stream_error_after``: a streamed call raises after that many chunks.
    """

    def __init__(self, *, as_dict: bool = False) -> None:
        self.as_dict = as_dict
        self.chat_calls = 0
        self.embed_calls = 0
        self.embedded_inputs: list[Any] = []
        self.requests: list[dict[str, Any]] = []
        self.started = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.fail = False
        self.empty = False
        self.stream_error_after: int | None = None

    # -- chat -----------------------------------------------------------------------------

    def _completion(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant",
                                   "content": "" if self.empty else answer_for(kwargs)}
        finish = "stop"
        if kwargs.get("tools") and not self.empty:
            message["tool_calls"] = [{
                "id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'},
            }]
            finish = "tool_calls"
        if kwargs.get("reasoning_effort") and not self.empty:
            message["reasoning_content"] = "Thinking step one. Then step two, carefully."
        return {
            "id": f"chatcmpl-{self.chat_calls}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": kwargs.get("model", "fake"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish,
                         "logprobs": None}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 29, "total_tokens": 40},
        }

    async def chat(self, **kwargs: Any) -> Any:
        """Like ``client.chat.completions.create``."""
        self.chat_calls += 1
        self.requests.append(dict(kwargs))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise UpstreamError("upstream exploded")
        data = self._completion(kwargs)
        if kwargs.get("stream"):
            return FakeStream(self, data, as_dict=self.as_dict,
                              include_usage=bool((kwargs.get("stream_options") or {})
                                                 .get("include_usage")))
        return data if self.as_dict else ChatCompletion.model_validate(data)

    # -- embeddings -----------------------------------------------------------------------

    async def embed(self, **kwargs: Any) -> Any:
        """Like ``client.embeddings.create``: one vector per input, usage in tokens."""
        self.embed_calls += 1
        self.requests.append(dict(kwargs))
        inputs = kwargs["input"]
        batch = [inputs] if isinstance(inputs, str) or (
            inputs and isinstance(inputs[0], int)) else list(inputs)
        self.embedded_inputs.extend(batch)
        dims = kwargs.get("dimensions") or 8
        tokens = sum(tokens_for(text) for text in batch)
        data = {
            "object": "list",
            "model": kwargs.get("model", "fake-embed"),
            "data": [{"object": "embedding", "index": i, "embedding": vector_for(text, dims)}
                     for i, text in enumerate(batch)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return data if self.as_dict else CreateEmbeddingResponse.model_validate(data)


def stream_chunks(data: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """How a provider would stream ``data``: small content pieces, split tool-call deltas."""
    base = {key: data[key] for key in ("id", "created", "model")}
    base["object"] = "chat.completion.chunk"
    message = data["choices"][0]["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    reasoning = message.get("reasoning_content") or ""
    chunks += [chunk({"reasoning_content": reasoning[i:i + 7]})
               for i in range(0, len(reasoning), 7)]
    content = message.get("content") or ""
    chunks += [chunk({"content": content[i:i + 5]}) for i in range(0, len(content), 5)]
    for call in message.get("tool_calls") or []:
        arguments = call["function"]["arguments"]
        chunks.append(chunk({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                             "function": {"name": call["function"]["name"],
                                                          "arguments": ""}}]}))
        for i in range(0, len(arguments), 4):
            piece = {"index": 0, "function": {"arguments": arguments[i:i + 4]}}
            chunks.append(chunk({"tool_calls": [piece]}))
    chunks.append(chunk({}, data["choices"][0]["finish_reason"]))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": data["usage"]})
    return chunks


class FakeStream:
    """An async stream of chunks, like the OpenAI SDK's ``AsyncStream``."""

    def __init__(self, llm: FakeLLM, data: dict[str, Any], *, as_dict: bool,
                 include_usage: bool) -> None:
        self._llm = llm
        self._chunks = stream_chunks(data, include_usage)
        self._as_dict = as_dict
        self._position = 0
        self.closed = False
        self.response = "fake-http-response"

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> Any:
        limit = self._llm.stream_error_after
        if limit is not None and self._position >= limit:
            raise UpstreamError("stream broke")
        if self._position >= len(self._chunks):
            raise StopAsyncIteration
        data = self._chunks[self._position]
        self._position += 1
        return data if self._as_dict else ChatCompletionChunk.model_validate(data)

    async def close(self) -> None:
        self.closed = True


def messages(text: str = "What is the capital of France?") -> list[dict[str, str]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
