"""Calibration: precision and recall per similarity threshold on labelled pairs.

Give it pairs you labelled (:mod:`asynccache.semantic.pairs`): for each, ``a`` plays the
cached request and ``b`` the new one. Each pair is scored the way a semantic cache would
serve it: the two requests must share everything but the embedded text (same model,
parameters, earlier turns; otherwise never a hit), the cosine similarity of the embedded
texts is computed with your embedder, and the semantic guard (on by default) gets its
say. A pair is a *hit* at threshold ``t`` when its similarity reaches ``t`` and the guard
accepts; a hit on a ``same=false`` pair is a false hit.

:func:`async_calibrate` returns a :class:`Calibration`: one row per threshold (precision,
recall, true and false hits) and the recommended threshold: the one with the highest
recall among those whose precision reaches ``target_precision``.

>>> import asyncio
>>> from asynccache.semantic import HashEmbedder
>>> pairs = parse_pairs([
...     {"a": "What is 2 + 2?", "b": "what is 2 + 2", "same": True},
...     {"a": "Is it safe?", "b": "Is it unsafe?", "same": False},
... ])
>>> report = asyncio.run(async_calibrate(pairs, embedding=HashEmbedder(64),
...                                      thresholds=[0.5, 0.9]))
>>> report.recommended, report.row(0.9).recall, report.rejected_by()
(0.9, 1.0, {'negation': 1})
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..exceptions import ConfigurationError
from .base import EmbedWhat, SemanticSettings
from .guard import SemanticGuard, parse_guard
from .pairs import LabelledPair, load_pairs, parse_pairs

__all__ = ["Calibration", "ScoredPair", "ThresholdRow", "async_calibrate", "calibrate",
           "default_thresholds", "parse_pairs", "score_pairs"]


def default_thresholds() -> list[float]:
    """0.50, 0.51, ... 0.99."""
    return [round(0.5 + step / 100, 2) for step in range(50)]


@dataclass(frozen=True)
class ScoredPair:
    """One pair as a semantic cache sees it.

    ``similarity`` is ``None`` when the two requests differ outside the embedded text (the
    store's exact filter keeps them apart); ``rejected_by`` is the guard's reason, or
    ``None`` when it accepts (or is off).
    """

    pair: LabelledPair
    similarity: float | None
    rejected_by: str | None = None

    def hit(self, threshold: float) -> bool:
        """Whether a cache with this threshold would serve ``a``'s answer to ``b``."""
        return (self.similarity is not None and self.similarity >= threshold
                and self.rejected_by is None)


@dataclass(frozen=True)
class ThresholdRow:
    """Precision and recall at one threshold."""

    threshold: float
    true_hits: int
    false_hits: int
    missed: int
    precision: float
    recall: float

    def as_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "precision": round(self.precision, 4),
                "recall": round(self.recall, 4), "true_hits": self.true_hits,
                "false_hits": self.false_hits, "missed": self.missed}


def _row(scored: Sequence[ScoredPair], threshold: float) -> ThresholdRow:
    true_hits = sum(1 for s in scored if s.pair.same and s.hit(threshold))
    false_hits = sum(1 for s in scored if not s.pair.same and s.hit(threshold))
    positives = sum(1 for s in scored if s.pair.same)
    hits = true_hits + false_hits
    return ThresholdRow(
        threshold=threshold, true_hits=true_hits, false_hits=false_hits,
        missed=positives - true_hits, precision=true_hits / hits if hits else 1.0,
        recall=true_hits / positives if positives else 0.0,
    )


@dataclass
class Calibration:
    """Precision / recall per threshold and the recommended threshold (``None`` if no
    threshold reaches the target precision with at least one true hit)."""

    scored: list[ScoredPair]
    rows: list[ThresholdRow]
    target_precision: float
    recommended: float | None
    guard: list[str] | None = field(default=None)

    def row(self, threshold: float) -> ThresholdRow:
        """The figures at any threshold (computed if it is not one of :attr:`rows`)."""
        for row in self.rows:
            if abs(row.threshold - threshold) < 1e-9:
                return row
        return _row(self.scored, threshold)

    def by_kind(self, threshold: float) -> dict[str, dict[str, Any]]:
        """Per pair kind at ``threshold``: pairs, hits, precision, recall, false-hit rate."""
        kinds: dict[str, list[ScoredPair]] = {}
        for scored in self.scored:
            kinds.setdefault(scored.pair.kind, []).append(scored)
        table: dict[str, dict[str, Any]] = {}
        for kind, members in sorted(kinds.items()):
            row = _row(members, threshold)
            negatives = sum(1 for s in members if not s.pair.same)
            positives = len(members) - negatives
            table[kind] = {
                "pairs": len(members), "same": positives, "different": negatives,
                "true_hits": row.true_hits, "false_hits": row.false_hits,
                "precision": round(row.precision, 4),
                "recall": round(row.recall, 4) if positives else None,
                "false_hit_rate": round(row.false_hits / negatives, 4) if negatives else None,
            }
        return table

    def rejected_by(self) -> dict[str, int]:
        """How many pairs each guard check rejected (whatever their similarity)."""
        counts: dict[str, int] = {}
        for scored in self.scored:
            if scored.rejected_by is not None:
                counts[scored.rejected_by] = counts.get(scored.rejected_by, 0) + 1
        return dict(sorted(counts.items()))

    def as_dict(self) -> dict[str, Any]:
        return {
            "pairs": len(self.scored), "same": sum(1 for s in self.scored if s.pair.same),
            "guard": self.guard, "target_precision": self.target_precision,
            "recommended": self.recommended,
            "rows": [row.as_dict() for row in self.rows],
            "by_kind": None if self.recommended is None else self.by_kind(self.recommended),
            "rejected_by": self.rejected_by(),
        }

    def format(self) -> str:
        """A plain-text table for terminals."""
        lines = [f"{len(self.scored)} pairs ({sum(s.pair.same for s in self.scored)} same), "
                 f"guard {'off' if self.guard is None else 'on'}",
                 "threshold  precision  recall  true hits  false hits"]
        for row in self.rows:
            mark = "  <- recommended" if row.threshold == self.recommended else ""
            lines.append(f"{row.threshold:9.2f}  {row.precision:9.3f}  {row.recall:6.3f}  "
                         f"{row.true_hits:9d}  {row.false_hits:10d}{mark}")
        if self.recommended is None:
            lines.append(f"no threshold reaches precision {self.target_precision}")
        else:
            lines.append(f"recommended similarity_threshold={self.recommended} "
                         f"(precision >= {self.target_precision})")
            lines.append("by kind at the recommended threshold:")
            for kind, figures in self.by_kind(self.recommended).items():
                recall = "-" if figures["recall"] is None else f"{figures['recall']:.3f}"
                rate = ("-" if figures["false_hit_rate"] is None
                        else f"{figures['false_hit_rate']:.3f}")
                lines.append(f"  {kind:16s} pairs {figures['pairs']:4d}  recall {recall:>5s}  "
                             f"false-hit rate {rate:>5s}")
        return "\n".join(lines)


def calibrate(scored: Sequence[ScoredPair], *, target_precision: float = 0.99,
              thresholds: Iterable[float] | None = None,
              guard: SemanticGuard | None = None) -> Calibration:
    """Rows per threshold and the recommendation from already scored pairs."""
    if not 0.0 < target_precision <= 1.0:
        raise ConfigurationError(f"target_precision must be in (0, 1], got {target_precision!r}")
    grid = sorted(set(default_thresholds() if thresholds is None else thresholds))
    if not grid or any(not 0.0 <= t <= 1.0 for t in grid):
        raise ConfigurationError("thresholds must be a non-empty list of values in [0, 1]")
    rows = [_row(scored, t) for t in grid]
    eligible = [r for r in rows if r.precision >= target_precision and r.true_hits > 0]
    recommended = None
    if eligible:
        best_recall = max(r.recall for r in eligible)
        # Of equal recalls, the highest threshold: the same hits with more margin.
        recommended = max(r.threshold for r in eligible if r.recall == best_recall)
    checks = None if guard is None else list(getattr(guard, "checks", ["custom"]))
    return Calibration(list(scored), rows, target_precision, recommended, checks)


async def score_pairs(pairs: Sequence[LabelledPair], *, settings: SemanticSettings,
                      guard: SemanticGuard | None) -> list[ScoredPair]:
    """Embed every pair's texts (one batch) and score them as a cache lookup would."""
    prepared: list[tuple[tuple[str, str] | None, tuple[str, str] | None]] = [
        (settings.prepare(p.request_a(), ""), settings.prepare(p.request_b(), ""))
        for p in pairs
    ]
    texts = sorted({side[0] for both in prepared for side in both if side is not None})
    vectors = dict(zip(texts, await settings.embedder.embed(texts), strict=True))
    scored: list[ScoredPair] = []
    for pair, (a, b) in zip(pairs, prepared, strict=True):
        if a is None or b is None or a[1] != b[1]:
            scored.append(ScoredPair(pair, None))
            continue
        similarity = min(1.0, max(0.0, sum(x * y for x, y in zip(vectors[a[0]], vectors[b[0]],
                                                                  strict=True))))
        reason = None if guard is None else guard.check(b[0], a[0], similarity)
        scored.append(ScoredPair(pair, similarity, reason))
    return scored


async def async_calibrate(
    pairs: str | Path | Sequence[LabelledPair] | Sequence[Mapping[str, Any]], *,
    embedding: Any = "local", embed_what: EmbedWhat | str = EmbedWhat.last_user_message,
    semantic_guard: Any = True, target_precision: float = 0.99,
    thresholds: Iterable[float] | None = None, split: str | None = None,
    kinds: Iterable[str] | None = None,
) -> Calibration:
    """Precision and recall per threshold on labelled pairs, with the guard in the loop.

    ``pairs``: a JSON / JSON Lines file, parsed :class:`LabelledPair` objects or plain
    dicts. ``embedding`` / ``embed_what`` as for a semantic cache (use the same as your
    cache); ``semantic_guard`` as the ``Cache`` setting (``False`` scores the embedding
    alone); ``split`` / ``kinds`` select pairs of a file.
    """
    if isinstance(pairs, str | Path):
        chosen = load_pairs(pairs, split=split, kinds=kinds)
    else:
        items = list(pairs)
        chosen = [p for p in items if isinstance(p, LabelledPair)]
        if len(chosen) != len(items):
            chosen = parse_pairs(items)
        if split is not None:
            chosen = [p for p in chosen if p.split == split]
        if kinds is not None:
            wanted = set(kinds)
            chosen = [p for p in chosen if p.kind in wanted]
        if not chosen:
            raise ConfigurationError("no labelled pairs to calibrate on")
    settings = SemanticSettings(embedding=embedding, embed_what=embed_what)
    guard = parse_guard(semantic_guard)
    scored = await score_pairs(chosen, settings=settings, guard=guard)
    return calibrate(scored, target_precision=target_precision, thresholds=thresholds,
                     guard=guard)
