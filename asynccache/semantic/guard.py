"""Verification of a semantic candidate: does the cached request ask the same question?

An embedding places "convert Celsius to Fahrenheit" next to "convert Fahrenheit to
Celsius", "top 5" next to "top 10" and "safe" next to "unsafe". After the vector search
finds a candidate above the threshold, :class:`SemanticGuard` compares the two texts on
what changes the answer and rejects the candidate when they differ in:

* ``quoted``: quoted strings (``"carpe diem"`` vs ``"memento mori"``);
* ``identifiers``: code identifiers (``os.path.join``, ``useEffect``, ``my_list``,
  ``map()``, ``--force``, ``std::vector``);
* ``numbers``: numbers, digits or words (``5`` = ``five``, ``a quarter`` = ``0.25``);
* ``units``: units of measure, currencies and, after a number, time units
  (``km`` = ``kilometres``, ``$`` = ``dollars``);
* ``negation``: negation (``not``, ``never``, ``without``, ``n't``...), negating prefixes
  (``unsafe`` vs ``safe``), the suffix ``-less`` (``eggless`` vs ``eggs``) and opposites
  (``better`` vs ``worse``);
* ``order``: the order of the two sides of a conversion or comparison (``X to Y``,
  ``from X to Y``, ``X into Y``, ``X than Y``);
* ``entities``: names (capitalised words inside a sentence, acronyms: ``Austria`` vs
  ``Australia``);
* ``answer_type``: two questions opening with question words that ask for different
  kinds of answer (*who* / *which philosopher*: a person, *when* / *what year*: a time,
  *where*: a place, *how many* / *how much*: a quantity, *how long*: a duration, any
  other: open): "What is the plot of X?" vs "Who wrote X?". Statements, imperatives and
  yes/no questions are not compared;
* ``substitution``: the same sentence with a few content words swapped for others
  ("How do I *treat* a sunburn?" vs "How do I *prevent* a sunburn?"), or added to it
  ("the best laptop" vs "the best laptop *bag*"), unless only the question phrases
  differ and ask for the same kind of answer ("*Who* painted X?" vs "*Which artist*
  painted X?"). Embeddings score such pairs as high as true paraphrases (often above
  0.9), so no threshold separates them; the price is that a rewording which only swaps
  a word for a synonym, leaving every other word in place, is a miss;
* ``focus``: below ``focus_below`` similarity (default 0.8), two questions on one topic
  that ask about different things ("What is the *history* of jazz?" vs "What
  *instruments* are used in jazz?"): they share content words, and one of them carries
  at least as many content words the other lacks (compared after case, stop words,
  request words such as "explain" or "tips", plural and tense endings, and common
  synonyms). Below that similarity a candidate is served only when its content words
  mostly align with the question's, or when it is a complete rewording sharing none of
  them (then the embedding alone vouches for it). Above it, wording differences are
  left to the embedding.

It is pure, local and offline: regular expressions and small (English) word lists, tens
of microseconds per candidate (a few hundred when both texts are new). In other
languages only numbers, quoted strings, identifiers and capitalised names are compared.
It is conservative by design: when in doubt it rejects, which costs one upstream call,
never a wrong answer.

The interface is narrow so every semantic store can use it:
``guard.check(query_text, candidate_text, similarity) -> reason | None``.

>>> guard = SemanticGuard()
>>> guard.check("How do I convert Celsius to Fahrenheit?",
...             "How do I convert Fahrenheit to Celsius?", 0.97)
'order'
>>> guard.check("Is ibuprofen safe during pregnancy?",
...             "Is ibuprofen unsafe during pregnancy?", 0.95)
'negation'
>>> guard.check("What is 15% of 80?", "Calculate fifteen percent of 80.", 0.86) is None
True
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..controls import validate_threshold
from ..exceptions import ConfigurationError

__all__ = [
    "CHECKS", "DEFAULT_FOCUS_BELOW", "Judge", "SemanticGuard", "SemanticVerifier", "features",
    "parse_guard", "parse_judge",
]

logger = logging.getLogger("asynccache")

#: Every check, in the order they run (the first failing one names the rejection).
CHECKS: tuple[str, ...] = ("quoted", "identifiers", "numbers", "units", "negation", "order",
                           "entities", "answer_type", "substitution", "focus")

#: Below this similarity the ``focus`` check demands that the content words align.
DEFAULT_FOCUS_BELOW = 0.8

# -- word lists ---------------------------------------------------------------------------

_SMALL_NUMBERS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "dozen": 12, "half": 0.5, "quarter": 0.25,
}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_ORDINALS = {
    # "first" is left out: "the first steps" is rarely a count, and "first" vs "second"
    # still differ (one side has an ordinal, the other none).
    "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "twelfth": 12, "twentieth": 20, "hundredth": 100,
}

# Units that name a measure by themselves ("convert pounds to kilograms").
_UNITS = {
    "km": "km", "kms": "km", "kilometer": "km", "kilometers": "km", "kilometre": "km",
    "kilometres": "km", "mile": "mile", "miles": "mile", "mi": "mile", "meter": "m",
    "meters": "m", "metre": "m", "metres": "m", "cm": "cm", "centimeter": "cm",
    "centimeters": "cm", "centimetre": "cm", "centimetres": "cm", "mm": "mm",
    "millimeter": "mm", "millimeters": "mm", "inch": "inch", "inches": "inch", "foot": "ft",
    "feet": "ft", "ft": "ft", "yard": "yard", "yards": "yard", "kg": "kg", "kgs": "kg",
    "kilo": "kg", "kilos": "kg", "kilogram": "kg", "kilograms": "kg", "gram": "g",
    "grams": "g", "mg": "mg", "milligram": "mg", "milligrams": "mg", "pound": "lb",
    "pounds": "lb", "lb": "lb", "lbs": "lb", "ounce": "oz", "ounces": "oz", "oz": "oz",
    "ton": "ton", "tons": "ton", "tonne": "ton", "tonnes": "ton", "liter": "l", "liters": "l",
    "litre": "l", "litres": "l", "ml": "ml", "milliliter": "ml", "milliliters": "ml",
    "millilitre": "ml", "millilitres": "ml", "gallon": "gal", "gallons": "gal",
    "pint": "pint", "pints": "pint", "acre": "acre", "acres": "acre", "hectare": "ha",
    "hectares": "ha", "celsius": "celsius", "centigrade": "celsius",
    "fahrenheit": "fahrenheit", "kelvin": "kelvin", "knot": "knot", "knots": "knot",
    "mph": "mph", "kph": "kmh", "kmh": "kmh", "bpm": "bpm", "calorie": "kcal",
    "calories": "kcal", "kcal": "kcal", "joule": "joule", "joules": "joule", "watt": "watt",
    "watts": "watt", "byte": "byte", "bytes": "byte", "kb": "kb", "kilobyte": "kb",
    "kilobytes": "kb", "mb": "mb", "megabyte": "mb", "megabytes": "mb", "gb": "gb",
    "gigabyte": "gb", "gigabytes": "gb", "tb": "tb", "terabyte": "tb", "terabytes": "tb",
    "dollar": "usd", "dollars": "usd", "usd": "usd", "euro": "eur", "euros": "eur",
    "eur": "eur", "yen": "jpy", "jpy": "jpy", "gbp": "gbp", "sterling": "gbp",
    "rupee": "inr", "rupees": "inr", "yuan": "cny", "franc": "chf", "francs": "chf",
    "bitcoin": "btc", "btc": "btc",
}
# Words that are units only right after a number ("3 months", "2 cups", "15 percent").
_UNITS_AFTER_NUMBER = {
    "second": "s", "seconds": "s", "sec": "s", "secs": "s", "s": "s", "minute": "min",
    "minutes": "min", "min": "min", "mins": "min", "hour": "h", "hours": "h", "hr": "h",
    "hrs": "h", "h": "h", "day": "day", "days": "day", "week": "week", "weeks": "week",
    "month": "month", "months": "month", "year": "year", "years": "year", "cup": "cup",
    "cups": "cup", "tablespoon": "tbsp", "tablespoons": "tbsp", "tbsp": "tbsp",
    "teaspoon": "tsp", "teaspoons": "tsp", "tsp": "tsp", "percent": "percent",
    "per": "per", "degree": "degree", "degrees": "degree", "c": "celsius", "f": "fahrenheit",
    "k": "thousand", "m": "m", "g": "g", "l": "l",
}
_SYMBOL_UNITS = {"%": "percent", "$": "usd", "€": "eur", "£": "gbp", "¥": "jpy", "°": "degree"}

_NEGATIONS = {"not", "no", "never", "without", "none", "nothing", "nobody", "neither", "nor",
              "cannot", "nowhere", "non"}
_NEGATING_PREFIXES = ("non-", "non", "un", "in", "im", "il", "ir", "dis", "ab")
_OPPOSITES = (
    ("better", "worse"), ("best", "worst"), ("good", "bad"), ("strong", "weak"),
    ("stronger", "weaker"), ("more", "less"), ("most", "least"), ("before", "after"),
    ("increase", "decrease"), ("maximum", "minimum"), ("max", "min"), ("pros", "cons"),
    ("true", "false"), ("hot", "cold"), ("hotter", "colder"), ("fast", "slow"),
    ("faster", "slower"), ("buy", "sell"), ("win", "lose"), ("add", "remove"),
    ("enable", "disable"), ("open", "close"), ("start", "stop"), ("always", "never"),
    ("safe", "dangerous"), ("cheap", "expensive"), ("cheaper", "more expensive"),
    ("high", "low"), ("higher", "lower"), ("large", "small"), ("larger", "smaller"),
    ("bigger", "smaller"), ("big", "small"), ("long", "short"), ("longer", "shorter"),
    ("easy", "hard"), ("easier", "harder"), ("include", "exclude"), ("allow", "deny"),
    ("accept", "reject"), ("upload", "download"), ("import", "export"), ("push", "pull"),
    ("encrypt", "decrypt"), ("encode", "decode"), ("compress", "decompress"),
    ("love", "hate"), ("like", "dislike"), ("friend", "enemy"), ("inside", "outside"),
)
_OPPOSITE = {a: b for a, b in _OPPOSITES} | {b: a for a, b in _OPPOSITES}

# The two sides of these words are ordered: "X to Y" is not "Y to X".
_FORWARD_CONNECTORS = {"to", "into", "than", "->", "→"}
_BACKWARD_CONNECTORS = {"from"}
_CLAUSE_BREAK = re.compile(r"[,;:?!.()\[\]]+(?:\s|$)|\s-\s|\n")

_STOPWORDS = frozenset(word for word in """
a an the and or but if of at by for with about against between through during above below
up down on off over under again further then once here there when where why how all any
both each few other some such only own same so too very can will just should now is are
was were be been being have has had having do does did doing i me my myself we our you
your he him his she her it its they them their what which who whom this that these those
am would could might must shall may also way
best good better please tell explain give show find help need want know let like much many
quoted
""".split())  # noqa: SIM905 (a word list reads better as text)

# Words that phrase a request without saying what it asks about ("Explain X", "tips for
# X", "the best way to X", "how does X work"): the focus check ignores them.
_REQUEST_WORDS = frozenset("""
explain explained describe define definition tell show give list way ways reason reasons tip
tips advice strategy strategies step steps process method methods proper right correct
effective effectively easy easily simple simply quick quickly mean means meaning meant does
did done happen happens actually really exactly basically possible someone something thing
things use using used make makes making get getting go going work works working guide
overview summary summarize summarise difference different differ compare comparison
""".split())  # noqa: SIM905

# Common equivalences the focus check treats as one word (after the crude stem).
_EQUIVALENCES = (
    "fix repair mend", "bike bicycle", "tyre tire", "car vehicle automobile",
    "phone smartphone cellphone mobile", "holiday vacation", "autumn fall", "film movie",
    "kid child children", "buy purchase", "begin start", "big large huge",
    "small little tiny", "reduce lower decrease", "stop prevent avoid", "remove eliminate",
    "fast quick rapid", "job career", "doctor physician", "house home", "cv resume",
    "rule guideline", "benefit advantage", "drawback disadvantage downside",
    "cost price", "error mistake", "ill sick", "illness disease", "pc computer",
    "laptop notebook", "photo picture", "learn study", "choose pick select", "quit leave",
    "clean wash", "sweater jumper",
)
_CANONICAL = {word: group.split()[0] for group in _EQUIVALENCES for word in group.split()}

# The kind of answer a question opening with these words asks for; any other opening
# question word ("what", "which", "why", "how") asks an open question.
_ANSWER_TYPES = (
    (re.compile(r"(?:who|whom|whose)\b"), "person"),
    # "Which philosopher said X?" asks for a person as "Who said X?" does.
    (re.compile(r"(?:what|which) (?:person|people|man|woman|author|writer|poet|"
                r"philosopher|scientist|inventor|artist|painter|composer|president|king|"
                r"queen|leader|actor|actress|singer|player)\b"), "person"),
    (re.compile(r"(?:when\b|(?:what|which) (?:year|date|time|day|month|century)\b)"), "time"),
    (re.compile(r"where\b"), "place"),
    (re.compile(r"how (?:many|much)\b"), "quantity"),
    (re.compile(r"how long\b"), "duration"),
    (re.compile(r"(?:what|which|why|how)\b|what's\b"), "open"),
)
_LEAD_IN = re.compile(r"^(?:(?:and|so|but|also|then|ok|okay|please|hey|hi)\b[\s,]*)*")


def _answer_type(lowered: str) -> tuple[str | None, int]:
    """What a text opening with a question word asks for, else ``None`` (statements,
    imperatives and yes/no questions are not compared), and how many words open it up
    to the end of the question phrase ("Which philosopher": 2)."""
    start = _LEAD_IN.sub("", lowered.lstrip(" \"'(\u201c"))
    for pattern, kind in _ANSWER_TYPES:
        found = pattern.match(start)
        if found:
            opening = lowered[: len(lowered) - len(start) + found.end()]
            return kind, len(_WORD.findall(opening))
    return None, 0


# -- text features -------------------------------------------------------------------------

_QUOTED = re.compile(
    r"\"([^\"\n]{1,200})\"|“([^”\n]{1,200})”|\u2018([^\u2019\n]{1,200})\u2019|`([^`\n]{1,200})`"
    r"|(?<![\w'])'([^'\n]{1,200})'(?![\w])"
)
_IDENTIFIER = re.compile(
    r"(?<![\w.])(?:"
    r"[A-Za-z_$][\w$]*(?:(?:\.|::)[A-Za-z_$][\w$]*)+(?:\(\))?"  # os.path.join, std::vector
    r"|[A-Za-z_$][\w$]*\(\)"                                 # map()
    r"|_*[A-Za-z][A-Za-z0-9]*_[\w]*"                          # my_list, MAX_RETRIES, __init__
    r"|[a-z]+[A-Z][A-Za-z0-9]*"                               # camelCase
    r"|[A-Z][a-z0-9]+[A-Z][A-Za-z0-9]*"                       # PascalCase with inner capital
    r"|@[A-Za-z_]\w*"                                         # @decorator
    r")"
    r"|(?<!\S)--?[A-Za-z][\w-]*"                              # --force, -la
)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_LEADING_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_WORD = re.compile(r"\d+(?:\.\d+)?[a-z]*|[a-z][a-z0-9]*(?:['\u2019][a-z]+)?|[%$€£¥°]|->|→")
_CAPITALISED = re.compile(r"[A-Z][\w'\u2019&-]*")
_SENTENCE_START = set(".?!:;\"'“\u2018(\n")
_COMMON_ABBREVIATIONS = frozenset({"e.g", "i.e", "etc", "vs", "mr.", "dr."})


@dataclass(frozen=True)
class _Features:
    normalised: str
    quoted: frozenset[str]
    identifiers: frozenset[str]
    numbers: tuple[str, ...]
    units: frozenset[str]
    negations: int
    words: frozenset[str]
    initials: str
    ordered: frozenset[tuple[str, str]]
    entities: frozenset[str]
    tokens: tuple[str, ...]
    content: frozenset[str]
    answer_type: str | None
    opening: int


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(round(value, 6))


def _numbers_and_units(words: list[str]) -> tuple[tuple[str, ...], frozenset[str]]:
    numbers: list[str] = []
    units: set[str] = set()
    current: float | None = None  # a number spelt in words, being read
    total = 0.0
    previous_numeric = False

    def flush() -> None:
        nonlocal current, total
        if current is not None:
            numbers.append(_format_number(total + current))
        current, total = None, 0.0

    for word in words:
        if word[0].isdigit():
            flush()
            digits = _LEADING_NUMBER.match(word)
            assert digits is not None
            numbers.append(_format_number(float(digits.group())))
            suffix = word[digits.end():]
            if suffix in ("st", "nd", "rd", "th"):
                numbers[-1] += "th"
            elif suffix in _UNITS:
                units.add(_UNITS[suffix])
            elif suffix in _UNITS_AFTER_NUMBER:
                units.add(_UNITS_AFTER_NUMBER[suffix])
            previous_numeric = True
            continue
        if word in _SMALL_NUMBERS:
            current = (current or 0.0) + _SMALL_NUMBERS[word]
            previous_numeric = True
            continue
        if word in _SCALES and current is not None:
            if _SCALES[word] >= 1000:
                total, current = total + current * _SCALES[word], 0.0
            else:
                current *= _SCALES[word]
            continue
        flush()
        if word in _ORDINALS and not (word == "second" and previous_numeric):
            numbers.append(f"{_ORDINALS[word]}th")
        elif word in _UNITS:
            units.add(_UNITS[word])
        elif previous_numeric and word in _UNITS_AFTER_NUMBER:
            units.add(_UNITS_AFTER_NUMBER[word])
        elif word in _SYMBOL_UNITS:
            units.add(_SYMBOL_UNITS[word])
        previous_numeric = False
    flush()
    return tuple(sorted(numbers)), frozenset(units)


def _negation_count(words: list[str]) -> int:
    return sum(1 for w in words if w in _NEGATIONS or w.endswith("n't") or w.endswith("n\u2019t"))


_SIDE_WORDS = 8


def _ordered_pairs(text: str) -> frozenset[tuple[str, str]]:
    """Directed (first side, second side) word pairs around ordered connectors."""
    pairs: set[tuple[str, str]] = set()
    for clause in _CLAUSE_BREAK.split(text):
        tokens = _WORD.findall(clause)
        positions = [i for i, t in enumerate(tokens)
                     if t in _FORWARD_CONNECTORS or t in _BACKWARD_CONNECTORS]
        if not positions:
            continue
        bounds = [-1, *positions, len(tokens)]
        for n, at in enumerate(positions):
            # "Is X faster than Y": the whole clause before "than" is the first side.
            start = 0 if tokens[at] == "than" else bounds[n] + 1
            # The words nearest the connector name its sides; the cap keeps a long
            # prompt from making a quadratic number of pairs.
            left = [t for t in tokens[start:at] if _is_content(t)][-_SIDE_WORDS:]
            right = [t for t in tokens[at + 1: bounds[n + 2]] if _is_content(t)][:_SIDE_WORDS]
            forward = tokens[at] not in _BACKWARD_CONNECTORS
            for x in left:
                for y in right:
                    if x != y:
                        pairs.add((x, y) if forward else (y, x))
    return frozenset(pairs)


def _is_content(token: str) -> bool:
    return (token not in _STOPWORDS and token not in _FORWARD_CONNECTORS
            and token not in _BACKWARD_CONNECTORS and not token[0].isdigit()
            and token.isalnum())


def _entities(text: str) -> frozenset[str]:
    """Names: runs of capitalised words ("United States"), inside a sentence or acronyms."""
    found: set[str] = set()
    run: list[str] = []
    run_end = -1
    run_counts = run_at_start = False

    def close() -> None:
        nonlocal run_counts
        if run_at_start and len(run) > 1 and run[0].lower() in _STOPWORDS:
            del run[0]  # "Is Python ...": the question word is not part of the name
            run_counts = True
        if run and (run_counts or len(run) > 1):
            found.add(_strip_possessive(" ".join(run).lower().replace("\u2019", "'")))
        run.clear()

    for match in _CAPITALISED.finditer(text):
        word, start = match.group(), match.start()
        if start > 0 and (text[start - 1].isalnum() or text[start - 1] in "._"):
            continue  # inside a word or an identifier
        if word in ("I", "I'm", "I've", "I'd", "QUOTED"):
            close()
            continue
        if run and start == run_end + 1 and text[run_end] == " ":
            run.append(word)
            run_counts = True  # "United States" at the start of a sentence is still a name
        else:
            close()
            at = start - 1
            while at >= 0 and text[at].isspace():
                at -= 1
            at_sentence_start = at < 0 or text[at] in _SENTENCE_START
            run.append(word)
            run_at_start = at_sentence_start
            run_counts = not at_sentence_start or (len(word) >= 2 and word.isupper())
        run_end = match.end()
    close()
    return frozenset(found)


def _strip_possessive(word: str) -> str:
    return word[:-2] if word.endswith("'s") else word.rstrip("'")


@functools.lru_cache(maxsize=8192)
def features(text: str) -> _Features:
    """What the guard compares in one text (cached: stored prompts come back often)."""
    quoted: set[str] = set()

    def take(match: re.Match[str]) -> str:
        value = next(g for g in match.groups() if g is not None)
        quoted.add(" ".join(value.casefold().split()).strip(" .,!?"))
        return " QUOTED "

    rest = _QUOTED.sub(take, text)
    identifiers = frozenset(
        m.group() for m in _IDENTIFIER.finditer(rest)
        if m.group().lower().rstrip(".") not in _COMMON_ABBREVIATIONS
    )
    lowered = _THOUSANDS.sub("", rest).lower().replace("\u2019", "'")
    words = _WORD.findall(lowered)
    numbers, units = _numbers_and_units(words)
    answer_type, opening = _answer_type(lowered)
    plain = [_strip_possessive(w) for w in words]
    return _Features(
        normalised=" ".join(text.casefold().split()).rstrip(" .?!"),
        quoted=frozenset(quoted), identifiers=identifiers, numbers=numbers, units=units,
        negations=_negation_count(words), words=frozenset(plain),
        initials="".join(w[0] for w in plain if w[0].isalpha()),
        ordered=_ordered_pairs(lowered), entities=_entities(rest),
        tokens=tuple(_stem(w) for w in plain),
        content=frozenset(
            _CANONICAL.get(w, _CANONICAL.get(_stem(w), _stem(w))) for w in plain
            if _is_content(w) and w not in _REQUEST_WORDS and w not in _NEGATIONS
            and w != "quoted"
        ),
        answer_type=answer_type, opening=opening,
    )


def _stem(word: str) -> str:
    """A crude stem, enough to see "eggs" and "egg" as one word."""
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _prefix_negations(words: frozenset[str], other: frozenset[str]) -> int:
    """Words of ``words`` that negate a word of ``other`` by a prefix ("unsafe" vs "safe")
    or by the suffix "-less" ("eggless" vs "eggs")."""
    count = 0
    for word in words - other:
        if word.endswith("less") and len(word) >= 7 and (
            word[:-4] in other or word[:-4] + "s" in other
        ):
            count += 1
            continue
        for prefix in _NEGATING_PREFIXES:
            if word.startswith(prefix) and len(word) - len(prefix) >= 3 and (
                word[len(prefix):] in other
            ):
                count += 1
                break
    return count


def _opposed(words: frozenset[str], other: frozenset[str]) -> bool:
    for word in words - other:
        opposite = _OPPOSITE.get(word)
        if opposite is not None and opposite in other and opposite not in words:
            return True
    return False


def _missing_entity(entities: frozenset[str], other: _Features) -> bool:
    """Whether a name of one text is absent from the other (as words or as an acronym)."""
    for entity in entities:
        parts = [_strip_possessive(p) for p in re.split(r"[^a-z0-9']+", entity) if p]
        if all(p in other.words for p in parts):
            continue
        if len(parts) == 1 and parts[0].isalpha() and len(parts[0]) >= 2 and (
            parts[0] in other.initials
        ):
            continue  # "CBT" vs "cognitive behavioural therapy"
        if len(parts) >= 2 and "".join(p[0] for p in parts) in other.words:
            continue  # "United Nations" vs "UN"
        return True
    return False


# -- the guard ----------------------------------------------------------------------------


class SemanticGuard:
    """Rejects a semantic candidate whose request differs in what changes the answer.

    ``checks``: which checks run (default all of :data:`CHECKS`).
    :meth:`check` returns ``None`` to accept, or the name of the failing check.
    """

    def __init__(self, checks: Iterable[str] = CHECKS, *,
                 focus_below: float = DEFAULT_FOCUS_BELOW) -> None:
        chosen = tuple(checks)
        unknown = [c for c in chosen if c not in CHECKS]
        if unknown:
            raise ConfigurationError(
                f"unknown semantic guard check(s) {unknown}; choose from {list(CHECKS)}"
            )
        self.checks = tuple(c for c in CHECKS if c in chosen)
        self.focus_below = validate_threshold(focus_below, "focus_below")

    def check(self, query: str, candidate: str, similarity: float | None = None) -> str | None:
        """``None`` if ``candidate``'s request asks what ``query`` asks, else the reason.

        ``similarity`` is the store's cosine similarity: the ``focus`` check only runs
        below ``focus_below`` (and not at all when it is ``None``).
        """
        a, b = features(query), features(candidate)
        if a.normalised == b.normalised:
            return None
        for name in self.checks:
            if name == "focus":
                if similarity is not None and similarity < self.focus_below and (
                    _fails_focus(a, b)
                ):
                    return name
            elif _FAILS[name](a, b):
                return name
        return None

    def describe(self) -> dict[str, Any]:
        return {"checks": list(self.checks), "focus_below": self.focus_below}


def _fails_negation(a: _Features, b: _Features) -> bool:
    left = a.negations + _prefix_negations(a.words, b.words)
    right = b.negations + _prefix_negations(b.words, a.words)
    return left != right or _opposed(a.words, b.words)


def _fails_order(a: _Features, b: _Features) -> bool:
    return any((y, x) in b.ordered and (x, y) not in b.ordered and (y, x) not in a.ordered
               for x, y in a.ordered)


def _fails_substitution(a: _Features, b: _Features) -> bool:
    if a.answer_type == b.answer_type and a.answer_type not in (None, "open") and (
        a.tokens[a.opening:] == b.tokens[b.opening:]
    ):
        # Only the question phrase differs and asks for the same kind of answer
        # ("Who said X?" vs "Which philosopher said X?").
        return False
    return _swapped_words(a.tokens, b.tokens)


_FAILS: dict[str, Callable[[_Features, _Features], bool]] = {
    "quoted": lambda a, b: a.quoted != b.quoted,
    "identifiers": lambda a, b: a.identifiers != b.identifiers,
    "numbers": lambda a, b: a.numbers != b.numbers,
    "units": lambda a, b: a.units != b.units,
    "negation": _fails_negation,
    "order": _fails_order,
    "entities": lambda a, b: _missing_entity(a.entities, b) or _missing_entity(b.entities, a),
    "answer_type": lambda a, b: (a.answer_type is not None and b.answer_type is not None
                                 and a.answer_type != b.answer_type),
    "substitution": _fails_substitution,
}


_MAX_SWAP = 3


def _same_root(x: str, y: str) -> bool:
    """Whether two stemmed words are one word in another form ("procrastinat" and
    "procrastination", "minimalism" and "minimalist")."""
    if x == y:
        return True
    shorter, longer = (x, y) if len(x) <= len(y) else (y, x)
    if len(shorter) >= 4 and longer.startswith(shorter) and len(longer) - len(shorter) <= 4:
        return True
    return len(shorter) >= 6 and shorter[:6] == longer[:6]


def _fails_focus(a: _Features, b: _Features) -> bool:
    """One topic, different questions: the texts share content words, and one of them
    carries at least as many content words the other lacks ("history of jazz" vs
    "instruments used in jazz"; "paint a room" vs "choose paint colours for a room").
    Texts sharing no content word at all are left to the embedding (a full rewording)."""
    own_a = {x for x in a.content if not any(_same_root(x, y) for y in b.content)}
    own_b = {y for y in b.content if not any(_same_root(x, y) for x in a.content)}
    shared = min(len(a.content) - len(own_a), len(b.content) - len(own_b))
    return shared > 0 and max(len(own_a), len(own_b)) >= shared


def _swapped_words(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether ``a`` and ``b`` are one sentence with a span of a few words replaced by
    another span whose content words are all different, or with content words added."""
    shortest = min(len(a), len(b))
    prefix = 0
    while prefix < shortest and a[prefix] == b[prefix]:
        prefix += 1
    suffix = 0
    while suffix < shortest - prefix and a[-1 - suffix] == b[-1 - suffix]:
        suffix += 1
    if prefix + suffix < 2:
        return False  # no shared sentence around the change
    left, right = a[prefix: len(a) - suffix], b[prefix: len(b) - suffix]
    if not (len(left) <= _MAX_SWAP and len(right) <= _MAX_SWAP and (left or right)):
        return False
    left_content = [w for w in left if _is_content(w) and w not in _REQUEST_WORDS]
    right_content = [w for w in right if _is_content(w) and w not in _REQUEST_WORDS]
    if not (left_content and right_content):
        # Content words added to the same sentence narrow the question.
        return bool(left_content or right_content)
    # Words that share a root ("unsafe" / "safe") are left to the negation check.
    return not any(
        x.endswith(y) or y.endswith(x) for x in left_content for y in right_content
    )

# -- guard + judge, with counters ---------------------------------------------------------

#: ``judge(query_text, candidate_text, similarity) -> bool`` (async or not): True accepts.
Judge = Callable[[str, str, float], Awaitable[bool] | bool]


def parse_guard(value: Any) -> SemanticGuard | None:
    """``semantic_guard`` setting: True (default checks), False/None (off), a check list,
    or a :class:`SemanticGuard` (or any object with the same ``check`` method)."""
    if value is True:
        return SemanticGuard()
    if value is False or value is None:
        return None
    if callable(getattr(value, "check", None)):
        return value
    if isinstance(value, list | tuple | set | frozenset) and all(isinstance(c, str)
                                                                 for c in value):
        return SemanticGuard(value)
    raise ConfigurationError(
        "semantic_guard must be True, False, a list of checks or a SemanticGuard, "
        f"got {value!r}"
    )


def parse_judge(value: Any) -> Judge | None:
    """``semantic_judge`` setting: ``None`` or a callable taking (query, candidate, score)."""
    if value is None:
        return None
    if not callable(value):
        raise ConfigurationError(
            f"semantic_judge must be a callable (query, candidate, similarity) -> bool, "
            f"got {value!r}"
        )
    return value


class SemanticVerifier:
    """The verification stage after the vector search: guard, then the optional judge.

    Counts every verdict: ``candidates``, ``accepted``, ``rejected`` by reason (a guard
    check name, ``"judge"``, ``"judge_error"`` when the judge raised or timed out,
    ``"guard_error"`` when a custom guard raised) and the guard's time. A failure
    rejects (a miss), never fails the lookup.
    """

    def __init__(self, guard: SemanticGuard | None, judge: Judge | None = None,
                 judge_timeout: float | None = 10.0) -> None:
        self.guard = guard
        self.judge = judge
        self.judge_timeout = judge_timeout
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._guard_seconds = 0.0

    def screen(self, query: str, candidate: str, similarity: float) -> str | None:
        """The guard's verdict on one of several candidates, before the one to serve is
        chosen: a rejection is counted here, an acceptance is left to :meth:`verify`
        (which runs once on the chosen candidate, judge included)."""
        if self.guard is None:
            return None
        reason = self._run_guard(query, candidate, similarity)
        if reason is not None:
            with self._lock:
                self._counts["candidates"] += 1
                self._rejected[reason] += 1
        return reason

    def _run_guard(self, query: str, candidate: str, similarity: float) -> str | None:
        assert self.guard is not None
        started = time.perf_counter()
        try:
            reason = self.guard.check(query, candidate, similarity)
        except Exception:  # a custom guard's bug is a miss, never a failed call
            logger.warning("semantic guard failed; the candidate is treated as a miss",
                           exc_info=True)
            reason = "guard_error"
        elapsed = time.perf_counter() - started
        with self._lock:
            self._guard_seconds += elapsed
            self._counts["guard_checks"] += 1
        return reason

    async def verify(self, query: str, candidate: str, similarity: float) -> str | None:
        """``None`` to serve the candidate, else the reason it is rejected (counted)."""
        reason = None if self.guard is None else self._run_guard(query, candidate, similarity)
        if reason is None and self.judge is not None:
            reason = await self._ask_judge(query, candidate, similarity)
        with self._lock:
            self._counts["candidates"] += 1
            if reason is None:
                self._counts["accepted"] += 1
            else:
                self._rejected[reason] += 1
        return reason

    async def _ask_judge(self, query: str, candidate: str, similarity: float) -> str | None:
        assert self.judge is not None
        try:
            verdict = self.judge(query, candidate, similarity)
            if inspect.isawaitable(verdict):
                verdict = await asyncio.wait_for(_awaited(verdict), self.judge_timeout)
        except Exception:
            logger.warning("semantic judge failed; the candidate is treated as a miss",
                           exc_info=True)
            return "judge_error"
        return None if verdict else "judge"

    def snapshot(self) -> dict[str, Any]:
        """Counters for ``cache.stats()["semantic"]``."""
        with self._lock:
            checks = self._counts["guard_checks"]
            return {
                "candidates": self._counts["candidates"],
                "accepted": self._counts["accepted"],
                "rejected": sum(self._rejected.values()),
                "rejected_by": dict(sorted(self._rejected.items())),
                "guard": None if self.guard is None else self.guard.describe().get("checks"),
                "judge": None if self.judge is None else getattr(
                    self.judge, "__qualname__", type(self.judge).__name__),
                "guard_mean_us": round(self._guard_seconds / checks * 1e6, 2) if checks else 0.0,
            }

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._rejected.clear()
            self._guard_seconds = 0.0


async def _awaited(value: Awaitable[Any]) -> Any:
    return await value
