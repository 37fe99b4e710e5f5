"""The verification stage after the vector search: guard checks, judge hook, counters,
caching groups, on every semantic store (real valkey with RediSearch, embedded Qdrant).

The store tests run on every contract-suite backend whose name contains "semantic"
(tests/plugins/), so a new semantic store is covered as soon as it joins the suite.
"""

from __future__ import annotations

import asyncio

import hypothesis
import pytest
from hypothesis import strategies as st

from asynccache import Cache, ConfigurationError, parse_controls
from asynccache.semantic import LocalEmbedder
from asynccache.semantic.guard import CHECKS, SemanticGuard, SemanticVerifier
from tests.conftest import contract_backends
from tests.helpers import chat_completion

pytest.importorskip("qdrant_client")

STORES = sorted(name for name in contract_backends() if "semantic" in name)

# One hard negative per check: (stored request, looked-up request, the check that rejects).
HARD_NEGATIVES = [
    ("What are the top 5 programming languages to learn?",
     "What are the top 10 programming languages to learn?", "numbers"),
    ("How long does it take to walk 10 km?", "How long does it take to walk 10 miles?", "units"),
    ("Is ibuprofen safe during pregnancy?", "Is ibuprofen unsafe during pregnancy?", "negation"),
    ("How do I convert Celsius to Fahrenheit?", "How do I convert Fahrenheit to Celsius?",
     "order"),
    ("What is the capital of Austria?", "What is the capital of Australia?", "entities"),
    ('Translate "I love you" into Italian.', 'Translate "I miss you" into Italian.', "quoted"),
    ("What does os.path.join do?", "What does os.path.split do?", "identifiers"),
    ("How do I treat a sunburn?", "How do I prevent a sunburn?", "substitution"),
]
PARAPHRASES = [
    ("What is 15% of 80?", "Calculate fifteen percent of 80."),
    ("Convert 5 km to miles", "How many miles is 5 kilometers?"),
    ("Is ibuprofen unsafe during pregnancy?", "Is ibuprofen not safe during pregnancy?"),
    ("How do I convert Celsius to Fahrenheit?",
     "What's the formula to go from Celsius to Fahrenheit?"),
    ("What is the purpose of the United Nations?", "What does the UN do?"),
    ("What does \"carpe diem\" mean?", "Explain the meaning of \"carpe diem\"."),
    ("How do I use pandas.merge?", "Show me how pandas.merge works."),
    ("Which city is Austria's capital?", "What is the capital of Austria?"),
]


def chat(text, model="gpt-4o", **params):
    return {"model": model, "messages": [{"role": "user", "content": text}], **params}


# -- the guard alone ----------------------------------------------------------------------


@pytest.mark.parametrize(("stored", "asked", "reason"), HARD_NEGATIVES)
def test_each_check_rejects_its_hard_negative_in_both_directions(stored, asked, reason):
    guard = SemanticGuard()
    assert guard.check(asked, stored, 0.95) == reason
    assert guard.check(stored, asked, 0.95) == reason
    # Without that check (and the catch-all "substitution"), nothing else objects: each
    # check guards its own difference.
    others = [c for c in CHECKS if c not in (reason, "substitution")]
    assert SemanticGuard(others).check(asked, stored, 0.95) is None


@pytest.mark.parametrize(("stored", "asked"), PARAPHRASES)
def test_rewordings_that_keep_what_matters_are_accepted(stored, asked):
    assert SemanticGuard().check(asked, stored, 0.9) is None


@pytest.mark.parametrize(("a", "b", "reason"), [
    ("Plan a birthday party for ten kids.", "Plan a birthday party for 30 kids.", "numbers"),
    ("How many weeks is 3 months?", "How many weeks is 3 years?", "units"),
    ("Is it legal to record calls?", "Is it illegal to record calls?", "negation"),
    ("Is nuclear power renewable?", "Is nuclear power non-renewable?", "negation"),
    ("What makes a password strong?", "What makes a password weak?", "negation"),
    ("Is Python faster than Java?", "Is Java faster than Python?", "order"),
    ("Flights from London to New York", "Flights from New York to London", "order"),
    ("Explain `useEffect` cleanup", "Explain `useLayoutEffect` cleanup", "quoted"),
    ("Why does parseInt return NaN?", "Why does parseFloat return NaN?", "identifiers"),
    ("What does the --force flag do?", "What does the --dry-run flag do?", "identifiers"),
    ("Who founded Amazon?", "Who founded Netflix?", "entities"),
    ("How long do cats live?", "How long do cats sleep?", "substitution"),
    # The same sentence with content words added asks a narrower question.
    ("What is the best laptop for students?", "What is the best laptop bag for students?",
     "substitution"),
    # The opening question word says what kind of answer is wanted.
    ("What is the plot of The Great Gatsby?", "Who wrote The Great Gatsby?", "answer_type"),
    ("What are the symptoms of a cold?", "How long does a cold last?", "answer_type"),
    ("Where was the Eiffel Tower built?", "When was the Eiffel Tower built?", "answer_type"),
])
def test_more_differences_that_change_the_answer(a, b, reason):
    assert SemanticGuard().check(a, b) == reason
    assert SemanticGuard().check(b, a) == reason


@pytest.mark.parametrize(("a", "b"), [
    ("When was it built?", "What year was it constructed?"),   # both ask for a time
    ("Convert 5 km to miles", "How many miles is 5 kilometers?"),  # an imperative
    ("Can you describe impostor syndrome?", "What is impostor syndrome?"),  # yes/no form
    ("So who painted the Mona Lisa?", "Who painted the Mona Lisa?"),
])
def test_answer_type_compares_only_questions_opening_with_a_question_word(a, b):
    assert SemanticGuard(["answer_type"]).check(a, b) is None


# Rewordings the guard used to reject for a surface difference (similarity above
# ``focus_below``, as the embedding scores them).
@pytest.mark.parametrize(("a", "b"), [
    # "Which <person noun>" asks for a person as "who" does; only the opening differs.
    ('Who said "I think, therefore I am"?', 'Which philosopher said "I think, therefore I am"?'),
    ("Who painted the Mona Lisa?", "Which artist painted the Mona Lisa?"),
    # "-less" negates as "without" does.
    ("How do I make a cake without eggs?", "How do I make an eggless cake?"),
])
def test_same_question_in_other_words_is_accepted(a, b):
    assert SemanticGuard().check(a, b, 0.9) is None
    assert SemanticGuard().check(b, a, 0.9) is None


@pytest.mark.parametrize(("a", "b", "reason"), [
    # A person asked for, then a time: still different answers.
    ("Which scientist discovered penicillin?", "When was penicillin discovered?",
     "answer_type"),
    # Same kind of answer, but the rest of the question changed.
    ("Who wrote Hamlet?", "Which author wrote Macbeth?", "entities"),
    # "eggless" vs "with eggs": a negation on one side only.
    ("How do I make an eggless cake?", "How do I make a cake with eggs?", "negation"),
])
def test_question_phrase_and_suffix_rules_still_reject_other_questions(a, b, reason):
    assert SemanticGuard().check(a, b, 0.9) == reason
    assert SemanticGuard().check(b, a, 0.9) == reason


# Below ``focus_below`` (0.8) one topic asked about differently is rejected; a rewording
# whose content words align, or one sharing none of them, is left to the embedding.
@pytest.mark.parametrize(("a", "b", "verdict"), [
    ("What is the history of jazz?", "What are the instruments used in jazz?", "focus"),
    ("How do I paint a room?", "How do I choose paint colors for a room?", "focus"),
    ("How do I take care of a puppy?", "How do I choose a puppy from a litter?", "focus"),
    ("How do I fix a flat bicycle tire?", "How can I repair a punctured bike tyre?", None),
    ("What is the difference between weather and climate?",
     "How is climate different from weather?", None),
    ("How do airplanes stay in the air?", "What keeps a plane flying?", None),
    ("How do I wash a wool sweater?", "What's the right way to clean a woollen jumper?", None),
])
def test_focus_rejects_one_topic_asked_about_differently(a, b, verdict):
    guard = SemanticGuard()
    assert guard.check(b, a, 0.7) == verdict
    assert guard.check(a, b, 0.7) == verdict
    # At or above focus_below the embedding is trusted on wording, and the check needs
    # a similarity to run at all.
    assert guard.check(b, a, 0.8) is None
    assert guard.check(b, a) is None
    assert SemanticGuard(focus_below=0.9).check(b, a, 0.85) == verdict
    assert guard.describe()["focus_below"] == 0.8


def test_identical_texts_and_case_or_spacing_differences_pass():
    guard = SemanticGuard()
    assert guard.check("What is 2 + 2?", "what is  2 + 2") is None


def test_bad_guard_settings_raise_naming_them():
    with pytest.raises(ConfigurationError, match="unknown semantic guard check"):
        SemanticGuard(["numbers", "spelling"])
    with pytest.raises(ConfigurationError, match="focus_below"):
        SemanticGuard(focus_below=1.5)
    with pytest.raises(ConfigurationError, match="semantic_guard"):
        Cache(semantic_guard="yes")
    with pytest.raises(ConfigurationError, match="semantic_judge"):
        Cache(semantic_judge="gpt-4o")


async def test_a_custom_guard_that_raises_is_a_miss_counted_as_guard_error():
    class Broken(SemanticGuard):
        def check(self, query, candidate, similarity=None):
            raise ValueError("bad rule")

    verifier = SemanticVerifier(Broken())
    assert await verifier.verify("a", "b", 0.9) == "guard_error"
    assert verifier.snapshot()["rejected_by"] == {"guard_error": 1}


async def test_verifier_counts_each_verdict_by_reason_and_times_the_guard():
    verifier = SemanticVerifier(SemanticGuard())
    for stored, asked, _ in HARD_NEGATIVES:
        assert await verifier.verify(asked, stored, 0.9) is not None
    assert await verifier.verify(*PARAPHRASES[0], 0.9) is None
    snap = verifier.snapshot()
    assert snap["candidates"] == len(HARD_NEGATIVES) + 1 and snap["accepted"] == 1
    assert snap["rejected_by"] == {reason: 1 for _, _, reason in HARD_NEGATIVES}
    assert snap["guard_mean_us"] > 0
    verifier.reset()
    assert verifier.snapshot()["candidates"] == 0


# -- on every semantic store ------------------------------------------------------------


@pytest.fixture(scope="module")
def local():
    pytest.importorskip("onnxruntime")
    return LocalEmbedder()


@pytest.fixture(params=STORES)
def make(request, local):
    """``make(**settings)``: a cache of each semantic store with the local model (the
    store's contract factory isolates and closes it)."""
    factory = request.getfixturevalue(contract_backends()[request.param])

    def build(**settings):
        return factory(**{"embedding": local, "similarity_threshold": 0.5, **settings})

    return build


def test_every_semantic_store_is_covered():
    assert {"redis-semantic", "qdrant-semantic"} <= set(STORES)


async def test_every_hard_negative_kind_is_a_miss_and_counted(make):
    guarded, unguarded = make(), make(semantic_guard=False)
    for cache in (guarded, unguarded):
        for stored, _, _ in HARD_NEGATIVES:
            assert await cache.async_store(chat(stored), chat_completion(stored)) is True
    for stored, asked, reason in HARD_NEGATIVES:
        # The vector search does find the other question...
        raw = await unguarded.async_lookup(chat(asked))
        assert raw is not None and raw.matched_prompt == stored, (asked, raw)
        # ...and the guard refuses to serve its answer.
        assert await guarded.async_lookup(chat(asked)) is None, reason
    semantic = guarded.stats()["semantic"]
    assert semantic["rejected_by"] == {reason: 1 for _, _, reason in HARD_NEGATIVES}
    assert semantic["accepted"] == 0
    assert unguarded.stats()["semantic"]["guard"] is None


# One pair of each hard-negative kind of the labelled data set (from its dev half), with
# the check that rejects it; similarities 0.6 to 0.99 with the local model.
DATA_SET_KINDS = [
    ("numbers_units", "Can I take 400 mg of ibuprofen?", "Can I take 800 mg of ibuprofen?",
     "numbers"),
    ("negation", "Which birds can fly?", "Which birds can't fly?", "negation"),
    ("order", "Is gold heavier than lead?", "Is lead heavier than gold?", "order"),
    ("entities", "Where was Mozart born?", "Where was Beethoven born?", "entities"),
    ("quoted", 'What rhymes with "orange"?', 'What rhymes with "silver"?', "quoted"),
    ("identifiers", "How do I use pandas.merge?", "How do I use pandas.concat?",
     "identifiers"),
    ("near_topic", "What is the history of jazz?", "What are the instruments used in jazz?",
     "focus"),
    ("near_topic", "What is the plot of The Great Gatsby?", "Who wrote The Great Gatsby?",
     "answer_type"),
]


async def test_each_hard_negative_kind_of_the_data_set_is_a_miss(make):
    guarded, unguarded = make(), make(semantic_guard=False)
    for index, (kind, stored, asked, _) in enumerate(DATA_SET_KINDS):
        controls = parse_controls({"namespace": f"kind{index}"})
        for cache in (guarded, unguarded):
            await cache.async_store(chat(stored), chat_completion(stored), controls=controls)
        raw = await unguarded.async_lookup(chat(asked), controls=controls)
        assert raw is not None and raw.matched_prompt == stored, kind
        assert await guarded.async_lookup(chat(asked), controls=controls) is None, kind
    expected: dict[str, int] = {}
    for *_, reason in DATA_SET_KINDS:
        expected[reason] = expected.get(reason, 0) + 1
    assert guarded.stats()["semantic"]["rejected_by"] == expected


async def test_a_follow_up_matches_only_within_the_same_conversation(make):
    def follow_up(capital_of, text):
        return {"model": "gpt-4o", "messages": [
            {"role": "user", "content": f"What is the capital of {capital_of}?"},
            {"role": "assistant", "content": f"(the capital of {capital_of})"},
            {"role": "user", "content": text}]}

    for settings in ({}, {"semantic_guard": False}):
        cache = make(**settings)
        await cache.async_store(follow_up("Peru", "What is its population?"),
                                chat_completion("about 10 million"))
        # The earlier turns are part of the exact filter: another conversation's
        # identical follow-up is never even a candidate, guard or not.
        assert await cache.async_lookup(follow_up("Chile", "What is its population?")) is None
        hit = await cache.async_lookup(follow_up("Peru", "What's its population?"))
        assert hit is not None and hit.matched_prompt == "What is its population?"
        assert cache.stats()["semantic"]["rejected_by"] == {}


async def test_paraphrases_still_hit_with_the_guard_on(make):
    cache = make()
    for stored, _ in PARAPHRASES:
        await cache.async_store(chat(stored), chat_completion(stored))
    for stored, asked in PARAPHRASES:
        hit = await cache.async_lookup(chat(asked))
        assert hit is not None and hit.matched_prompt == stored, asked
        assert hit.value["choices"][0]["message"]["content"].startswith(stored)
    assert cache.stats()["semantic"]["accepted"] == len(PARAPHRASES)
    cache.reset_stats()
    assert cache.stats()["semantic"]["candidates"] == 0


async def test_the_guard_looks_past_a_rejected_nearest_candidate(make):
    # The nearest stored question is the hard negative (the sides swapped, similarity
    # 0.99); the right answer (0.90) is second nearest. One vector query returns both,
    # the guard rejects the first and the second is served.
    cache = make(similarity_threshold=0.8)
    wrong = "How do I convert Fahrenheit to Celsius?"
    right = "What's the formula to go from Celsius to Fahrenheit?"
    for stored in (wrong, right):
        await cache.async_store(chat(stored), chat_completion(stored))
    asked = chat("How do I convert Celsius to Fahrenheit?")
    hit = await cache.async_lookup(asked)
    assert hit is not None and hit.matched_prompt == right
    semantic = cache.stats()["semantic"]
    assert semantic["candidates"] == 2 and semantic["accepted"] == 1
    assert semantic["rejected_by"] == {"order": 1}
    # With one candidate only, the rejected nearest one is a miss.
    single = make(similarity_threshold=0.8, semantic_candidates=1, namespace="single")
    for stored in (wrong, right):
        await single.async_store(chat(stored), chat_completion(stored))
    assert await single.async_lookup(asked) is None
    assert single.stats()["semantic"]["rejected_by"] == {"order": 1}


def test_semantic_candidates_must_be_a_small_positive_int():
    for bad in (0, 101, 2.5, True, "3"):
        with pytest.raises(ConfigurationError, match="semantic_candidates"):
            Cache(type="qdrant-semantic", qdrant_location=":memory:", semantic_candidates=bad)


async def test_judge_sees_question_candidate_and_score_and_can_refuse(make):
    seen = []

    async def judge(query, candidate, similarity):
        seen.append((query, candidate, similarity))
        await asyncio.sleep(0)
        return "Explain" not in query

    cache = make(semantic_judge=judge)
    await cache.async_store(chat("What is machine learning?"), chat_completion("ML is ..."))
    assert await cache.async_lookup(chat("Can you tell me what machine learning is?"))
    assert await cache.async_lookup(chat("Explain machine learning")) is None
    assert [(q, c) for q, c, _ in seen] == [
        ("Can you tell me what machine learning is?", "What is machine learning?"),
        ("Explain machine learning", "What is machine learning?"),
    ]
    assert all(0.5 <= s <= 1.0 for _, _, s in seen)
    assert cache.stats()["semantic"]["rejected_by"] == {"judge": 1}


async def test_a_failing_or_slow_judge_is_a_miss_never_an_error(make):
    def broken(query, candidate, similarity):
        raise RuntimeError("reranker down")

    never = asyncio.Event()

    async def stuck(query, candidate, similarity):
        await never.wait()

    for judge, settings in ((broken, {}), (stuck, {"semantic_judge_timeout": 0.05})):
        cache = make(semantic_judge=judge, **settings)
        await cache.async_store(chat("What is machine learning?"), chat_completion("ML"))
        assert await cache.async_lookup(chat("Explain machine learning")) is None
        assert cache.stats()["semantic"]["rejected_by"] == {"judge_error": 1}


async def test_the_judge_is_only_asked_about_candidates_the_guard_accepted(make):
    asked = []

    async def judge(query, candidate, similarity):
        asked.append(query)
        return True

    cache = make(semantic_judge=judge)
    stored, hard_negative, reason = HARD_NEGATIVES[3]
    await cache.async_store(chat(stored), chat_completion(stored))
    assert await cache.async_lookup(chat(hard_negative)) is None
    assert asked == []
    assert cache.stats()["semantic"]["rejected_by"] == {reason: 1}


async def test_caching_groups_share_semantic_entries(make):
    groups = [("gpt-4o", "gpt-4o-2024-08-06")]
    grouped = make(caching_groups=groups)
    await grouped.async_store(chat("What is machine learning?", model="gpt-4o-2024-08-06"),
                              chat_completion("ML is ..."))
    hit = await grouped.async_lookup(chat("Can you explain what machine learning is?",
                                          model="gpt-4o"))
    assert hit is not None and hit.matched_prompt == "What is machine learning?"
    assert await grouped.async_lookup(chat("Can you explain what machine learning is?",
                                           model="gpt-4o-mini")) is None
    ungrouped = make(namespace="ungrouped")  # the store may be shared with `grouped`
    await ungrouped.async_store(chat("What is machine learning?", model="gpt-4o-2024-08-06"),
                                chat_completion("ML is ..."))
    assert await ungrouped.async_lookup(chat("Can you explain what machine learning is?",
                                             model="gpt-4o")) is None


async def test_guard_compares_the_embedded_text_of_multi_turn_requests(make):
    cache = make(embed_what="all_messages")
    earlier = [{"role": "user", "content": "How do I convert Celsius to Fahrenheit?"},
               {"role": "assistant", "content": "Multiply by 9/5 and add 32."}]
    flipped = [{"role": "user", "content": "How do I convert Fahrenheit to Celsius?"},
               {"role": "assistant", "content": "Multiply by 9/5 and add 32."}]
    follow_up = {"role": "user", "content": "And for 100 degrees?"}
    await cache.async_store({"model": "gpt-4o", "messages": [*earlier, follow_up]},
                            chat_completion("212"))
    assert await cache.async_lookup({"model": "gpt-4o", "messages": [*flipped, follow_up]}) is None
    assert cache.stats()["semantic"]["rejected_by"] == {"order": 1}


# -- properties ---------------------------------------------------------------------------

_WORDS = st.sampled_from([
    "How", "do", "I", "convert", "Celsius", "to", "Fahrenheit", "from", "not", "unsafe",
    "safe", "5", "five", "km", "miles", "Austria", "Australia", '"quoted"', "os.path.join",
    "useEffect", "than", "faster", "Python", "Java", "?", ",", "the", "a", "egg", "boil",
    "poach", "it's", "don't", "15%", "1,000", "2nd", "\u2019", "\u201c", "é", "\n",
])
_TEXTS = st.one_of(st.lists(_WORDS, max_size=14).map(" ".join), st.text(max_size=60))


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(_TEXTS, _TEXTS)
def test_guard_verdicts_are_symmetric_and_a_text_always_matches_itself(a, b):
    guard = SemanticGuard()
    assert guard.check(a, a) is None
    assert (guard.check(a, b) is None) == (guard.check(b, a) is None)


def test_long_prompts_are_checked_without_blowing_up():
    paragraph = ("Compare Python to Java than Rust from Go into C, with numbers 1, 2 and 3, "
                 "Names Like Paris and London, and code such as os.path.join(). ")
    long_text = paragraph * 200  # ~28,000 characters
    assert SemanticGuard().check(long_text, long_text + " Is it not safe?") == "negation"
