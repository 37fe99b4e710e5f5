"""Labelled request pairs: the input of calibration and of the semantic quality figures.

A pair says whether the cached answer to request ``a`` is a correct answer to request
``b`` (``same``). Files are JSON (``{"pairs": [...]}`` or a bare list) or JSON Lines (one
pair per line). Each pair is an object with:

* ``a``, ``b``: the two user messages (non-empty strings);
* ``same``: ``true`` / ``false`` (``label`` and ``paraphrase`` are accepted aliases);
* ``kind`` (optional, default ``"unlabelled"``): what differs, for per-kind figures;
* ``split`` (optional): ``"dev"`` or ``"test"``;
* ``a_context``, ``b_context`` (optional): earlier messages of the conversation
  (``[{"role": ..., "content": ...}, ...]``), sent before the user message.

>>> pair = parse_pair({"a": "What is 2+2?", "b": "What's two plus two?", "same": True})
>>> pair.same, pair.kind, pair.request_a()["messages"][-1]["content"]
(True, 'unlabelled', 'What is 2+2?')
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..exceptions import ConfigurationError

__all__ = [
    "SPLITS", "LabelledPair", "load_pairs", "parse_pair", "parse_pairs",
]

SPLITS = ("dev", "test")


@dataclass(frozen=True)
class LabelledPair:
    """Two requests and whether the answer to ``a`` also answers ``b``."""

    a: str
    b: str
    same: bool
    kind: str = "unlabelled"
    split: str | None = None
    a_context: tuple[Mapping[str, Any], ...] = field(default=())
    b_context: tuple[Mapping[str, Any], ...] = field(default=())

    def request_a(self, **params: Any) -> dict[str, Any]:
        """``a`` as a chat request (``params`` such as ``model`` are added to it)."""
        return _chat(self.a_context, self.a, params)

    def request_b(self, **params: Any) -> dict[str, Any]:
        """``b`` as a chat request (``params`` such as ``model`` are added to it)."""
        return _chat(self.b_context, self.b, params)


def _chat(context: Sequence[Mapping[str, Any]], text: str, params: Mapping[str, Any]
          ) -> dict[str, Any]:
    messages = [dict(m) for m in context] + [{"role": "user", "content": text}]
    return {"model": "gpt-4o-mini", **params, "messages": messages}


def _context(raw: Any, name: str, where: str) -> tuple[Mapping[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(
        isinstance(m, Mapping) and isinstance(m.get("role"), str)
        and isinstance(m.get("content"), str) for m in raw
    ):
        raise ConfigurationError(
            f"{where}: {name} must be a list of {{'role': str, 'content': str}} messages"
        )
    return tuple(raw)


def parse_pair(raw: Any, where: str = "pair") -> LabelledPair:
    """Validate one pair object; raise naming ``where`` and the bad field."""
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"{where}: expected an object, got {type(raw).__name__}")
    for name in ("a", "b"):
        if not isinstance(raw.get(name), str) or not raw[name].strip():
            raise ConfigurationError(f"{where}: {name!r} must be a non-empty string")
    label_names = [n for n in ("same", "label", "paraphrase") if n in raw]
    if len(label_names) != 1 or not isinstance(raw[label_names[0]], bool):
        raise ConfigurationError(
            f"{where}: needs exactly one boolean label 'same' (or 'label' / 'paraphrase')"
        )
    kind = raw.get("kind", "unlabelled")
    if not isinstance(kind, str) or not kind:
        raise ConfigurationError(f"{where}: 'kind' must be a non-empty string")
    split = raw.get("split")
    if split is not None and split not in SPLITS:
        raise ConfigurationError(f"{where}: 'split' must be 'dev' or 'test', got {split!r}")
    return LabelledPair(
        a=raw["a"], b=raw["b"], same=raw[label_names[0]], kind=kind, split=split,
        a_context=_context(raw.get("a_context"), "a_context", where),
        b_context=_context(raw.get("b_context"), "b_context", where),
    )


def parse_pairs(raw: Iterable[Any]) -> list[LabelledPair]:
    """Validate many pair objects (errors name the pair's position)."""
    return [parse_pair(item, f"pair {index}") for index, item in enumerate(raw)]


def load_pairs(path: str | Path, *, split: str | None = None,
               kinds: Iterable[str] | None = None) -> list[LabelledPair]:
    """Read labelled pairs from a JSON or JSON Lines file, optionally one split / some kinds."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read labelled pairs from {source}: {exc}") from exc
    try:
        document: Any = json.loads(text)
    except json.JSONDecodeError:
        try:
            document = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{source} is neither JSON nor JSON Lines: {exc}") from exc
    items = document.get("pairs") if isinstance(document, Mapping) else document
    if not isinstance(items, list):
        raise ConfigurationError(f"{source}: expected a list of pairs or {{'pairs': [...]}}")
    pairs = parse_pairs(items)
    if split is not None:
        if split not in SPLITS:
            raise ConfigurationError(f"split must be 'dev' or 'test', got {split!r}")
        pairs = [p for p in pairs if p.split == split]
    if kinds is not None:
        wanted = set(kinds)
        pairs = [p for p in pairs if p.kind in wanted]
    if not pairs:
        raise ConfigurationError(f"{source}: no labelled pairs left to use")
    return pairs
