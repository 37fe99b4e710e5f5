"""Calibration: precision / recall per threshold with the guard in the loop, API and CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from asynccache import ConfigurationError
from asynccache.cli import main
from asynccache.semantic.calibrate import ScoredPair, async_calibrate, calibrate
from asynccache.semantic.pairs import LabelledPair

DATA = Path(__file__).parent.parent / "benchmarks" / "data" / "semantic_pairs.json"
SMALL = [
    {"a": "How do I convert Celsius to Fahrenheit?",
     "b": "How do I convert Fahrenheit to Celsius?", "same": False, "kind": "order"},
    {"a": "What is the capital of Austria?", "b": "What is the capital of Australia?",
     "same": False, "kind": "entities"},
    {"a": "What is machine learning?", "b": "Can you explain what machine learning is?",
     "same": True, "kind": "paraphrase"},
    {"a": "Why is the sky blue?", "b": "What makes the sky look blue?", "same": True,
     "kind": "paraphrase"},
    {"a": "And in descending order?", "b": "And in descending order?", "same": False,
     "kind": "multi_turn",
     "a_context": [{"role": "user", "content": "How do I sort a list in Python?"}],
     "b_context": [{"role": "user", "content": "How do I sort an array in Java?"}]},
]


def scored(similarity, same, rejected_by=None):
    return ScoredPair(LabelledPair("a", "b", same), similarity, rejected_by)


def test_rows_count_hits_and_the_recommendation_maximises_recall_at_the_target():
    pairs = [scored(0.95, True), scored(0.85, True), scored(0.75, True),
             scored(0.90, False), scored(0.80, False, "order"), scored(None, False)]
    report = calibrate(pairs, target_precision=0.9, thresholds=[0.7, 0.8, 0.9, 0.96])
    rows = {r.threshold: (r.true_hits, r.false_hits, r.missed) for r in report.rows}
    assert rows == {0.7: (3, 1, 0), 0.8: (2, 1, 1), 0.9: (1, 1, 2), 0.96: (0, 0, 3)}
    assert report.row(0.7).precision == 0.75 and report.row(0.96).precision == 1.0
    # No threshold reaches 0.9 with a true hit: 0.96 has none.
    assert report.recommended is None
    assert calibrate(pairs, target_precision=0.75, thresholds=[0.7, 0.8]).recommended == 0.7
    with pytest.raises(ConfigurationError, match="target_precision"):
        calibrate(pairs, target_precision=1.5)


async def test_guard_in_the_loop_removes_hard_negative_hits_on_the_local_model():
    pytest.importorskip("onnxruntime")
    guarded = await async_calibrate(SMALL, thresholds=[0.5])
    bare = await async_calibrate(SMALL, thresholds=[0.5], semantic_guard=False)
    assert bare.row(0.5).false_hits == 2  # reversed conversion and Austria/Australia
    assert guarded.row(0.5).false_hits == 0
    assert guarded.row(0.5).true_hits == bare.row(0.5).true_hits == 2
    assert guarded.rejected_by() == {"entities": 1, "order": 1}
    # The follow-ups are identical, but the earlier turns differ: never a candidate.
    multi = [s for s in guarded.scored if s.pair.kind == "multi_turn"]
    assert multi[0].similarity is None
    kinds = guarded.by_kind(0.5)
    assert kinds["order"]["false_hit_rate"] == 0.0 and kinds["paraphrase"]["recall"] == 1.0


async def test_file_split_and_kind_selection():
    pytest.importorskip("onnxruntime")
    report = await async_calibrate(DATA, split="dev", kinds=["order"], thresholds=[0.6])
    assert len(report.scored) == sum(
        1 for p in json.loads(DATA.read_text())["pairs"]
        if p["split"] == "dev" and p["kind"] == "order")
    assert report.by_kind(0.6)["order"]["false_hits"] == 0


def test_cli_reports_table_and_json_and_exit_codes(tmp_path):
    pytest.importorskip("onnxruntime")
    source = tmp_path / "pairs.jsonl"
    source.write_text("\n".join(json.dumps(p) for p in SMALL) + "\n")
    out, err = io.StringIO(), io.StringIO()
    assert main(["calibrate", str(source), "--thresholds", "0.5,0.6"], stdout=out,
                stderr=err) == 0, err.getvalue()
    assert "recommended similarity_threshold=0.6" in out.getvalue()
    out = io.StringIO()
    assert main(["calibrate", str(source), "--json", "--no-guard", "--thresholds", "0.5"],
                stdout=out, stderr=err) == 1  # two false hits: no threshold reaches 0.99
    document = json.loads(out.getvalue())
    assert document["guard"] is None and document["recommended"] is None
    assert document["rows"][0]["false_hits"] == 2
    err = io.StringIO()
    assert main(["calibrate", str(tmp_path / "missing.json")], stdout=out, stderr=err) == 2
    assert "cannot read labelled pairs" in err.getvalue()
    assert main(["calibrate", str(source), "--thresholds", "high"], stdout=out,
                stderr=err) == 2
