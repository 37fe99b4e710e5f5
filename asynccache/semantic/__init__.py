"""Semantic caches: answer a request with the cached answer to a similar one.

``Cache(type="redis-semantic", ...)`` (:mod:`asynccache.semantic.redis`) and
``Cache(type="qdrant-semantic", ...)`` (:mod:`asynccache.semantic.qdrant`) embed the
conversation text, keep every other request argument as an exact-match filter and accept
a match whose cosine similarity reaches ``similarity_threshold``. Embedders live in
:mod:`asynccache.semantic.embeddings`; this package imports no store client by itself.
"""

from __future__ import annotations

from .base import DEFAULT_SIMILARITY_THRESHOLD, EmbedWhat, SemanticSettings
from .embeddings import (
    EmbeddingFunction,
    HashEmbedder,
    LiteLLMEmbedder,
    LocalEmbedder,
    OpenAIEmbedder,
    SemanticEmbedder,
    ThreadedEmbedder,
    resolve_embedding,
)

__all__ = [
    "DEFAULT_SIMILARITY_THRESHOLD",
    "EmbedWhat",
    "EmbeddingFunction",
    "HashEmbedder",
    "LiteLLMEmbedder",
    "LocalEmbedder",
    "OpenAIEmbedder",
    "SemanticEmbedder",
    "SemanticSettings",
    "ThreadedEmbedder",
    "resolve_embedding",
]
