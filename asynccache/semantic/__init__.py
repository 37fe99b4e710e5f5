"""Semantic caches: answer a request with the cached answer to a similar one.

``Cache(type="redis-semantic", ...)`` (:mod:`asynccache.semantic.redis`) and
``Cache(type="qdrant-semantic", ...)`` (:mod:`asynccache.semantic.qdrant`) embed the
conversation text, keep every other request argument as an exact-match filter and accept
a match whose cosine similarity reaches ``similarity_threshold``; the candidate is then
verified by :class:`~asynccache.semantic.guard.SemanticGuard` (and an optional judge)
before it is served. Embedders live in :mod:`asynccache.semantic.embeddings`;
calibration on labelled pairs in :mod:`asynccache.semantic.calibrate`. This package
imports no store client by itself.
"""

from __future__ import annotations

from .base import DEFAULT_SIMILARITY_THRESHOLD, EmbedWhat, SemanticSettings
from .calibrate import Calibration, async_calibrate
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
from .guard import SemanticGuard
from .pairs import LabelledPair, load_pairs

__all__ = [
    "DEFAULT_SIMILARITY_THRESHOLD",
    "Calibration",
    "EmbedWhat",
    "EmbeddingFunction",
    "HashEmbedder",
    "LabelledPair",
    "LiteLLMEmbedder",
    "LocalEmbedder",
    "OpenAIEmbedder",
    "SemanticEmbedder",
    "SemanticGuard",
    "SemanticSettings",
    "ThreadedEmbedder",
    "async_calibrate",
    "load_pairs",
    "resolve_embedding",
]
