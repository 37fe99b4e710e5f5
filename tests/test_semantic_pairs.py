"""The labelled pair data set (benchmarks/data/semantic_pairs.json) and its loader."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from asynccache import ConfigurationError
from asynccache.semantic.pairs import load_pairs, parse_pair

DATA = Path(__file__).parent.parent / "benchmarks" / "data" / "semantic_pairs.json"
HARD_NEGATIVE_KINDS = ("numbers_units", "negation", "order", "entities", "quoted",
                       "identifiers")


def test_data_set_size_kinds_and_stratified_splits():
    pairs = load_pairs(DATA)
    assert len(pairs) >= 500
    declared = json.loads(DATA.read_text())["kinds"]
    assert {p.kind for p in pairs} == set(declared)
    by_kind = Counter(p.kind for p in pairs)
    assert by_kind["paraphrase"] >= 100 and all(p.same for p in pairs if p.kind == "paraphrase")
    for kind in (*HARD_NEGATIVE_KINDS, "near_topic"):
        assert sum(not p.same for p in pairs if p.kind == kind) >= 40, kind
    assert {p.same for p in pairs if p.kind == "multi_turn"} == {True, False}
    # Every (kind, label) group is split half and half (within one pair).
    groups = Counter((p.kind, p.same, p.split) for p in pairs)
    for kind, same in {(p.kind, p.same) for p in pairs}:
        assert abs(groups[kind, same, "dev"] - groups[kind, same, "test"]) <= 1, (kind, same)


def test_no_duplicate_pair_and_no_pair_in_both_splits():
    pairs = load_pairs(DATA)
    seen: dict[tuple[str, ...], str | None] = {}
    for pair in pairs:
        identity = (pair.a, pair.b, *(m["content"] for m in pair.a_context),
                    "|", *(m["content"] for m in pair.b_context))
        assert identity not in seen, f"duplicate pair {pair.a!r} / {pair.b!r}"
        seen[identity] = pair.split
        assert pair.a != pair.b or pair.a_context != pair.b_context
    dev = {(p.a, p.b) for p in pairs if p.split == "dev" and not p.a_context}
    test = {(p.a, p.b) for p in pairs if p.split == "test" and not p.a_context}
    assert not dev & test
    assert not {(b, a) for a, b in dev} & test  # a reversed pair is the same pair


def test_load_filters_split_and_kinds_and_reads_json_lines(tmp_path):
    dev = load_pairs(DATA, split="dev", kinds=["negation"])
    assert dev and {(p.split, p.kind) for p in dev} == {("dev", "negation")}
    lines = tmp_path / "pairs.jsonl"
    lines.write_text('{"a": "hi", "b": "hello", "label": true}\n\n'
                     '{"a": "x", "b": "y", "paraphrase": false, "kind": "k"}\n')
    loaded = load_pairs(lines)
    assert [(p.same, p.kind) for p in loaded] == [(True, "unlabelled"), (False, "k")]


@pytest.mark.parametrize(("raw", "named"), [
    ({"a": "", "b": "x", "same": True}, "'a'"),
    ({"a": "x", "b": "y"}, "label"),
    ({"a": "x", "b": "y", "same": "yes"}, "label"),
    ({"a": "x", "b": "y", "same": True, "split": "train"}, "split"),
    ({"a": "x", "b": "y", "same": True, "a_context": "earlier"}, "a_context"),
    (["a", "b"], "object"),
])
def test_bad_pairs_raise_naming_the_field(raw, named):
    with pytest.raises(ConfigurationError, match=named):
        parse_pair(raw)


def test_unreadable_or_empty_files_raise(tmp_path):
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_pairs(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json\n")
    with pytest.raises(ConfigurationError, match="neither JSON"):
        load_pairs(broken)
    with pytest.raises(ConfigurationError, match="no labelled pairs"):
        load_pairs(DATA, kinds=["no-such-kind"])
