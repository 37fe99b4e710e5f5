"""What a semantic cache embeds, what it filters on, and how it scores a match.

Pure functions, no I/O. A request's *conversation text* (by default the last user
message) is embedded; everything else in the request (model, temperature, tools, other
parameters, the namespace / tenant prefix) is hashed into an exact-match **filter hash**,
so a semantic hit always comes from the same model, the same parameters and the same
scope. Only the embedded text may differ, by no more than the similarity threshold.

Similarity is cosine similarity in [0, 1] for every store: Redis reports a cosine
*distance* (``1 - cos``) and Qdrant a cosine *score* (``cos``); both are converted here so
``similarity_threshold=0.8`` means the same thing everywhere.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..contract import Backend, WriteItem
from ..controls import validate_threshold
from ..exceptions import ConfigurationError
from ..keys import canonical_request
from .guard import SemanticVerifier, parse_guard, parse_judge

__all__ = [
    "DEFAULT_SEMANTIC_CANDIDATES", "DEFAULT_SIMILARITY_THRESHOLD", "FILTER_VERSION",
    "EmbedWhat", "SemanticBackend", "SemanticSettings", "clamp_similarity", "content_text",
    "filter_hash", "parse_embed_what", "parse_threshold", "scope_tag",
    "similarity_from_cosine_distance",
    "similarity_from_cosine_score", "split_request",
]

DEFAULT_SIMILARITY_THRESHOLD = 0.8
#: How many nearest entries above the threshold a lookup verifies, best first.
DEFAULT_SEMANTIC_CANDIDATES = 3

# Stands in for the embedded text inside the filter hash: the rest of the request is
# hashed exactly, the embedded part is compared by similarity instead.
_EMBEDDED = "\x00asynccache:embedded\x00"
FILTER_VERSION = "1"


class EmbedWhat(str, enum.Enum):
    """Which part of a request is embedded (the rest becomes the exact-match filter).

    * ``last_user_message`` (default): the content of the last ``user`` message; the
      system prompt and earlier turns stay in the filter. Requests without ``messages``
      fall back to ``prompt``, then ``input``.
    * ``all_messages``: every message as ``role: content`` lines.
    * ``prompt``: the ``prompt`` argument (text completions).
    * ``input``: the ``input`` argument (embeddings, responses API).
    """

    last_user_message = "last_user_message"
    all_messages = "all_messages"
    prompt = "prompt"
    input = "input"


_EMBED_ALIASES = {
    "last_user": EmbedWhat.last_user_message, "last": EmbedWhat.last_user_message,
    "messages": EmbedWhat.all_messages, "all": EmbedWhat.all_messages,
}


def parse_embed_what(value: EmbedWhat | str) -> EmbedWhat:
    """Validate the ``embed_what`` setting; raise naming the choices."""
    if isinstance(value, EmbedWhat):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower().replace("-", "_")
        if lowered in _EMBED_ALIASES:
            return _EMBED_ALIASES[lowered]
        try:
            return EmbedWhat(lowered)
        except ValueError:
            pass
    choices = ", ".join(repr(item.value) for item in EmbedWhat)
    raise ConfigurationError(f"embed_what must be one of {choices}, got {value!r}")


def parse_threshold(value: object, name: str = "similarity_threshold") -> float:
    """A threshold in [0, 1] (cosine similarity); raise naming ``name`` otherwise."""
    return validate_threshold(value, name)


def content_text(content: Any) -> str:
    """The text of a message's ``content``: a string, or the text parts of a part list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    return ""


def _text_of(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return None


def split_request(
    request: Mapping[str, Any], embed_what: EmbedWhat
) -> tuple[str | None, dict[str, Any]]:
    """Split a request into (text to embed, the rest), or ``(None, request)`` if no text.

    The rest is the request with the embedded text replaced by a fixed placeholder, so
    two requests that differ only in that text have the same rest.
    """
    rest = dict(request)
    raw = request.get("messages")
    messages: Sequence[Any] = (
        raw if isinstance(raw, Sequence) and not isinstance(raw, str | bytes) else ()
    )
    has_messages = bool(messages)
    if embed_what is EmbedWhat.all_messages and has_messages:
        lines = [
            f"{m.get('role', 'user')}: {content_text(m.get('content'))}"
            for m in messages if isinstance(m, Mapping)
        ]
        text = "\n".join(lines)
        if not text.strip():
            return None, rest
        rest["messages"] = _EMBEDDED
        return text, rest
    if embed_what in (EmbedWhat.last_user_message, EmbedWhat.all_messages) and has_messages:
        for index in range(len(messages) - 1, -1, -1):
            message = messages[index]
            if isinstance(message, Mapping) and message.get("role") == "user":
                text = content_text(message.get("content"))
                if not text.strip():
                    return None, rest
                replaced = list(messages)
                replaced[index] = {**message, "content": _EMBEDDED}
                rest["messages"] = replaced
                return text, rest
        return None, rest
    order = {EmbedWhat.input: ("input",), EmbedWhat.prompt: ("prompt",)}.get(
        embed_what, ("prompt", "input")
    )
    for name in order:
        found = _text_of(request.get(name))
        if found is not None and found.strip():
            rest[name] = _EMBEDDED
            return found, rest
    return None, rest


def filter_hash(rest: Mapping[str, Any], prefix: str) -> str:
    """Hex hash of everything that must match exactly: the request minus its text, and scope."""
    digest = hashlib.sha256(f"asynccache-semantic:{FILTER_VERSION}\x00".encode())
    digest.update(prefix.encode("utf-8", "surrogatepass"))
    digest.update(b"\x00")
    digest.update(canonical_request(rest))
    return digest.hexdigest()[:40]


def scope_tag(prefix: str) -> str:
    """The namespace prefix as a tag value safe for any store (hex, never empty)."""
    return hashlib.sha256(b"ns\x00" + prefix.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def similarity_from_cosine_distance(distance: float) -> float:
    """Redis ``COSINE`` distance (``1 - cos``, 0..2) -> cosine similarity clamped to 0..1."""
    return clamp_similarity(1.0 - float(distance))


def similarity_from_cosine_score(score: float) -> float:
    """Qdrant ``Cosine`` score (``cos``, -1..1) -> cosine similarity clamped to 0..1."""
    return clamp_similarity(float(score))


def clamp_similarity(value: float) -> float:
    if math.isnan(value):
        return 0.0
    # float32 rounding can report 1.0000001 for identical vectors.
    return min(1.0, max(0.0, value))


class SemanticSettings:
    """The settings both semantic backends share, and the request -> query preparation.

    * ``similarity_threshold``: cosine similarity in [0, 1] a match needs (default 0.8);
    * ``embedding``: ``"local"`` (default), a model name, or a callable (see
      :func:`~asynccache.semantic.embeddings.resolve_embedding`); ``openai_client`` and
      ``embedding_kwargs`` go with a model name; ``embedding_dimension`` pins the vector
      length (otherwise learned from the embedder); ``embedding_cache_size`` is the LRU of
      recent embeddings (reused by the store after a lookup miss);
    * ``embed_what``: which text is embedded (:class:`EmbedWhat`).
    """

    def __init__(
        self, *, similarity_threshold: float = DEFAULT_SIMILARITY_THRESHOLD,
        embedding: Any = "local", embed_what: EmbedWhat | str = EmbedWhat.last_user_message,
        embedding_dimension: int | None = None, openai_client: Any = None,
        embedding_kwargs: dict[str, Any] | None = None, embedding_cache_size: int = 1024,
    ) -> None:
        from .embeddings import SemanticEmbedder, resolve_embedding

        self.similarity_threshold = parse_threshold(similarity_threshold)
        self.embed_what = parse_embed_what(embed_what)
        function = resolve_embedding(embedding, openai_client=openai_client,
                                     embedding_kwargs=embedding_kwargs)
        self.embedder = SemanticEmbedder(function, dimension=embedding_dimension,
                                         lru_size=embedding_cache_size)

    def threshold(self, override: float | None) -> float:
        """The per-call threshold if given (validated), else the configured one."""
        if override is None:
            return self.similarity_threshold
        return parse_threshold(override, "similarity threshold")

    def prepare(self, request: Mapping[str, Any], prefix: str) -> tuple[str, str] | None:
        """(text to embed, filter hash) for a request, or ``None`` if it has no text."""
        text, rest = split_request(request, self.embed_what)
        if text is None:
            return None
        return text, filter_hash(rest, prefix)

    def describe(self) -> dict[str, Any]:
        return {
            "similarity_threshold": self.similarity_threshold,
            "embedding": self.embedder.describe(),
            "embed_what": self.embed_what.value,
        }


class SemanticBackend(Backend):
    """What both semantic stores share: single stores go through the batch path, and a
    batch is prepared (what to embed, which filter) and embedded in one call.

    Every candidate the vector search finds is verified before it is served (see
    :mod:`asynccache.semantic.guard`), by the same code for every store:

    * ``semantic_guard``: ``True`` (default: every check), ``False``, a list of check
      names, or a :class:`~asynccache.semantic.guard.SemanticGuard`;
    * ``semantic_judge``: an optional second opinion, ``judge(query, candidate,
      similarity) -> bool`` (async or not), asked after the guard accepts;
      ``semantic_judge_timeout`` (seconds, default 10) bounds it;
    * ``semantic_candidates``: how many nearest entries above the threshold the guard
      looks at, best first (default 3): when the nearest is a hard negative ("top 10"
      for "top 5"), the next one may be the right answer. One vector query returns
      them all; the first the guard accepts goes on to the judge (if any) and is served.
    """

    semantic: SemanticSettings
    #: The verification stage after a vector search (guard, optional judge, counters).
    verifier: SemanticVerifier
    #: How many nearest entries above the threshold a lookup verifies.
    semantic_candidates: int = DEFAULT_SEMANTIC_CANDIDATES

    def _init_verifier(self, semantic_guard: Any, semantic_judge: Any,
                       semantic_judge_timeout: float | None,
                       semantic_candidates: int = DEFAULT_SEMANTIC_CANDIDATES) -> None:
        if isinstance(semantic_candidates, bool) or not isinstance(semantic_candidates, int) or (
            not 1 <= semantic_candidates <= 100
        ):
            raise ConfigurationError(
                f"semantic_candidates must be an int in 1..100, got {semantic_candidates!r}"
            )
        self.semantic_candidates = semantic_candidates
        self.verifier = SemanticVerifier(parse_guard(semantic_guard), parse_judge(semantic_judge),
                                         semantic_judge_timeout)

    def query_text(self, request: Mapping[str, Any]) -> str | None:
        """The text of ``request`` this store embeds (what the semantic guard compares with
        the candidate's stored prompt), or ``None`` if it has none."""
        return split_request(request, self.semantic.embed_what)[0]

    async def verify_similar(self, request: Mapping[str, Any], matched_prompt: str,
                             similarity: float) -> bool:
        """Whether a candidate the vector search found may be served (guard, then judge)."""
        query = self.query_text(request)
        if query is None:
            return False
        return await self.verifier.verify(query, matched_prompt, similarity) is None

    def similarity_stats(self) -> dict[str, Any]:
        """Candidates found, served, and rejections by reason."""
        return self.verifier.snapshot()

    def reset_similarity_stats(self) -> None:
        self.verifier.reset()

    async def search_similar(
        self, request: Mapping[str, Any], *, prefix: str, threshold: float | None
    ) -> tuple[bytes, float, str] | None:
        """The nearest live entry with the request's filter hash whose similarity reaches
        the threshold and which the guard accepts, as (stored bytes, similarity, matched
        prompt), or ``None``.

        Embeds the request's text once and asks the store's own index for the
        ``semantic_candidates`` nearest entries (:meth:`_search_nearest`); the guard's
        rejections of the ones passed over are counted here, the returned candidate is
        verified (and counted) by :meth:`verify_similar`. A request with nothing to embed
        finds nothing.
        """
        wanted = self.semantic.threshold(threshold)
        prepared = self.semantic.prepare(request, prefix)
        if prepared is None:
            return None
        text, filter_hash = prepared
        vector = await self.semantic.embedder.embed_one(text)
        candidates = await self._search_nearest(wanted, filter_hash, vector, scope_tag(prefix),
                                                self.semantic_candidates)
        for candidate in candidates:
            if self.verifier.screen(text, candidate[2], candidate[1]) is None:
                return candidate
        return None

    async def _search_nearest(
        self, wanted: float, filter_hash: str, vector: Any, scope: str, limit: int
    ) -> list[tuple[bytes, float, str]]:
        """Up to ``limit`` of the store's nearest live entries with ``filter_hash`` (and
        ``scope``, the namespace tag) whose similarity is at least ``wanted``, best
        first, as (stored bytes, similarity, matched prompt)."""
        raise NotImplementedError

    async def index_similar(
        self, request: Mapping[str, Any], item: WriteItem, *, prefix: str
    ) -> None:
        """Store ``item`` under its exact key and index its prompt for similarity."""
        await self.index_similar_many([request], [item], prefix=prefix)

    async def index_similar_many(
        self, requests: Sequence[Mapping[str, Any]], items: Sequence[WriteItem], *, prefix: str
    ) -> None:
        """Store and index many entries with one embedding call."""
        if len(requests) != len(items):
            raise ConfigurationError("index_similar_many needs one request per item")
        prepared = [self.semantic.prepare(request, prefix) for request in requests]
        texts = [p[0] for p in prepared if p is not None]
        vectors = await self.semantic.embedder.embed(texts) if texts else []
        await self._store_indexed(items, prepared, vectors, prefix)

    async def _store_indexed(
        self, items: Sequence[WriteItem], prepared: Sequence[tuple[str, str] | None],
        vectors: Sequence[Any], prefix: str,
    ) -> None:
        """Write the entries; ``vectors`` holds one vector per non-``None`` ``prepared``."""
        raise NotImplementedError

