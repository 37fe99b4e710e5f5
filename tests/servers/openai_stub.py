"""A local OpenAI-compatible HTTP server that counts the requests it answers.

Serves ``POST /v1/chat/completions`` (plain and ``stream=true`` server-sent events) and
``POST /v1/embeddings`` on 127.0.0.1, inside the test's event loop, so tests can point
the real OpenAI SDK or LiteLLM at it and prove whether a call went upstream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fake_llm import answer_for, stream_chunks, tokens_for, vector_for


@dataclass
class OpenAIStub:
    """The running server: ``base_url`` for the SDK, ``calls`` and ``headers`` seen."""

    port: int = 0
    calls: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _seen(self, request: web.Request, body: dict[str, Any]) -> None:
        self.calls += 1
        self.requests.append(body)
        self.headers.append(dict(request.headers))

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self._seen(request, body)
        data = {
            "id": f"chatcmpl-stub-{self.calls}", "object": "chat.completion",
            "created": 1_700_000_000, "model": body.get("model", "stub"),
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": answer_for(body)}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
        }
        if not body.get("stream"):
            return web.json_response(data)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        for chunk in stream_chunks(data, include_usage):
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._seen(request, body)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        tokens = sum(tokens_for(text) for text in inputs)
        return web.json_response({
            "object": "list", "model": body.get("model", "stub-embed"),
            "data": [{"object": "embedding", "index": i, "embedding": vector_for(text)}
                     for i, text in enumerate(inputs)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    async def start(self) -> OpenAIStub:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/embeddings", self.embeddings)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
