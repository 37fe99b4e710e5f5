"""Cache keys: order never matters, answer-changing parameters always do (property-based)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from asynccache import Cache, ConfigurationError
from asynccache.keys import (
    EXCLUDED_PARAMS,
    encode_namespace,
    lease_key,
    namespace_prefix,
    request_key,
    split_stored_key,
    stored_key,
)

_KEY = Cache()  # key building is pure: one cache serves every example
PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(
    allow_nan=False, allow_infinity=False
) | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                           "content": st.text(min_size=1, max_size=40)}),
    min_size=1, max_size=4,
)
#: Parameters that change the answer; a provider-specific one is drawn separately.
ANSWER_PARAMS = ["model", "messages", "temperature", "tools", "tool_choice", "response_format",
                 "seed", "top_p", "max_tokens", "stop", "n", "input", "prompt", "logit_bias",
                 "reasoning_effort", "top_k", "safety_settings", "extra_body"]
provider_param = st.from_regex(r"[a-z][a-z_]{0,20}", fullmatch=True).filter(
    lambda name: name not in EXCLUDED_PARAMS
)
base_requests = st.fixed_dictionaries(
    {"model": st.sampled_from(["gpt-4o", "claude-3-5-sonnet", "gemini-1.5-pro"]),
     "messages": messages},
    optional={"temperature": st.floats(0, 2), "seed": st.integers(0, 2**31),
              "tools": st.lists(json_values, max_size=2), "top_p": st.floats(0, 1)},
)


def key(**kwargs: Any) -> str:
    return _KEY.get_cache_key(**kwargs)


def reorder(value: Any, rng: random.Random) -> Any:
    """The same value with every dict's insertion order shuffled, recursively."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: reorder(v, rng) for k, v in items}
    if isinstance(value, list):
        return [reorder(v, rng) for v in value]
    return value


@PROPERTY
@given(request=base_requests, extra=st.dictionaries(provider_param, json_values, max_size=4),
       seed=st.integers())
def test_keyword_and_nested_dict_order_never_change_the_key(request, extra, seed):
    kwargs = {**request, **extra}
    shuffled = reorder(kwargs, random.Random(seed))
    assert key(**kwargs) == key(**shuffled)


@PROPERTY
@given(request=base_requests, name=st.sampled_from(ANSWER_PARAMS) | provider_param,
       first=json_values.filter(lambda v: v is not None),
       second=json_values.filter(lambda v: v is not None))
def test_changing_an_answer_changing_parameter_always_changes_the_key(request, name, first,
                                                                     second):
    assume(first != second)
    assert key(**{**request, name: first}) != key(**{**request, name: second})
    assert key(**{**request, name: first}) != key(**{k: v for k, v in request.items()
                                                     if k != name})


# cache_key is excluded from the canonical request but, as a string, is a preset key that
# replaces it (tested below).
@PROPERTY
@given(request=base_requests, excluded=st.dictionaries(
    st.sampled_from(sorted(EXCLUDED_PARAMS - {"cache_key"})), json_values, min_size=1,
    max_size=5))
def test_excluded_parameters_never_change_the_key(request, excluded):
    assert key(**request, **excluded) == key(**request)


@PROPERTY
@given(request=base_requests, text=st.text(min_size=1, max_size=30))
def test_message_content_and_order_change_the_key(request, text):
    changed = [dict(m) for m in request["messages"]]
    changed[-1]["content"] += text
    assert key(**request) != key(**{**request, "messages": changed})
    if len(request["messages"]) > 1 and request["messages"][0] != request["messages"][-1]:
        flipped = list(reversed(request["messages"]))
        assert key(**request) != key(**{**request, "messages": flipped})


def test_credentials_transport_and_telemetry_are_left_out():
    request = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    noisy = {"api_key": "sk-secret", "api_base": "https://proxy.internal", "timeout": 30,
             "metadata": {"trace": "abc"}, "stream": True, "max_retries": 3,
             "extra_headers": {"x-id": "1"}, "user": "u-42", "num_retries": 2}
    assert key(**request, **noisy) == key(**request)
    assert "sk-secret" not in key(**request, **noisy)


def test_integer_and_float_temperature_share_a_key():
    request = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    assert key(**request, temperature=1) == key(**request, temperature=1.0)
    assert key(**request, temperature=0) == key(**request, temperature=0.0)
    assert key(**request, temperature=1) != key(**request, temperature=1.5)


def test_huge_integral_floats_still_make_a_key():
    assert key(model="m", max_tokens=1.8446744073709552e19) != key(model="m", max_tokens=1e19)
    assert key(model="m", max_tokens=2.0**63) == key(model="m", max_tokens=2**63)


def test_none_valued_parameters_are_the_same_as_absent_ones():
    request = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    assert key(**request, temperature=None, tools=None) == key(**request)


#: Keys made by earlier releases: a stored cache must keep answering after an upgrade,
#: so key building may get faster but never produce other bytes.
PINNED_KEYS = [
    ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Bonjour, 京都?"}],
      "temperature": 1.0, "max_tokens": 64, "stop": None},
     "e75481cae3631293f11306e7038ef7ca64a092e9c8173f003982ec27bd76d60f"),
    ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
      "logit_bias": {50256: -100, 11: 5}},
     "d3d2ea4e352f7a22be097b839789c032e28c008dab033961a659fcd0005ae22c"),
    ({"model": "gpt-4o", "input": ["a", "b"], "seed": 7, "top_p": 0.5,
      "tools": [{"type": "function", "function": {"name": "f", "parameters": {
          "type": "object", "properties": {"x": {"type": "integer"}}}}}]},
     "ffaa78309c448a62aa2434c47cd3448a38a2eff572f2c08a1e3997271b82b3ad"),
]


@pytest.mark.parametrize(("call", "pinned"), PINNED_KEYS)
def test_keys_stay_what_earlier_releases_made(call, pinned):
    assert request_key(call) == pinned
    assert key(**call) == pinned


def test_integer_dict_keys_key_like_their_string_form():
    assert key(model="m", logit_bias={50256: -100}) == key(model="m", logit_bias={"50256": -100})


def test_key_is_a_sha256_hex_digest_and_matches_request_key():
    request = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    k = key(**request)
    assert len(k) == 64 and int(k, 16) >= 0
    assert k == request_key(request)


def test_caching_groups_make_grouped_models_share_keys():
    grouped = Cache(caching_groups=[("gpt-4o", "gpt-4o-2024-08-06"), ("claude", "claude-3")])
    msgs = [{"role": "user", "content": "hi"}]
    assert grouped.get_cache_key(model="gpt-4o", messages=msgs) == grouped.get_cache_key(
        model="gpt-4o-2024-08-06", messages=msgs)
    assert grouped.get_cache_key(model="claude-3", messages=msgs) == grouped.get_cache_key(
        model="claude", messages=msgs)
    assert grouped.get_cache_key(model="gpt-4o", messages=msgs) != grouped.get_cache_key(
        model="claude", messages=msgs)
    # Without the group the two model names stay apart.
    assert key(model="gpt-4o", messages=msgs) != key(model="gpt-4o-2024-08-06", messages=msgs)


def test_key_function_replaces_the_default_and_preset_key_wins():
    calls: list[dict[str, Any]] = []

    def by_prompt(**kwargs: Any) -> str:
        calls.append(kwargs)
        return "prompt:" + kwargs["messages"][-1]["content"]

    custom = Cache(key_function=by_prompt)
    msgs = [{"role": "user", "content": "hello"}]
    assert custom.get_cache_key(model="gpt-4o", messages=msgs) == "prompt:hello"
    assert calls == [{"model": "gpt-4o", "messages": msgs}]
    assert custom.get_cache_key(model="gpt-4o", messages=msgs, cache_key="preset") == "preset"
    assert key(model="gpt-4o", messages=msgs, cache_key="mine") == "mine"
    assert len(calls) == 1  # the preset key skips the key function


def test_pydantic_response_format_keys_on_its_schema():
    class Answer(BaseModel):
        city: str
        population: int

    class SameShape(BaseModel):
        city: str
        population: int

    class Other(BaseModel):
        city: str
        population: float

    msgs = [{"role": "user", "content": "biggest city?"}]
    first = key(model="gpt-4o", messages=msgs, response_format=Answer)
    assert first == key(model="gpt-4o", messages=msgs, response_format=Answer)
    assert first != key(model="gpt-4o", messages=msgs, response_format=Other)
    assert first != key(model="gpt-4o", messages=msgs)
    # The schema carries the class title, so a different class name is a different key.
    assert first != key(model="gpt-4o", messages=msgs, response_format=SameShape)


def test_unkeyable_argument_raises_a_clear_error():
    with pytest.raises(ConfigurationError, match="cache key"):
        key(model="gpt-4o", messages=[{"role": "user", "content": object()}])
    with pytest.raises(ConfigurationError, match="keyword arguments only"):
        _KEY.get_cache_key("positional")


def test_bytes_and_sets_are_keyed_by_content():
    assert key(model="whisper-1", file=b"audio-1") != key(model="whisper-1", file=b"audio-2")
    assert key(model="m", stop={"a", "b"}) == key(model="m", stop={"b", "a"})


# -- the stored-key format ----------------------------------------------------------------


@pytest.mark.parametrize("key", ["plain", "a:b", ":lead", "x::y", "ns%3Aq:k"])
@pytest.mark.parametrize("namespace", [None, "ns", "a:b", "tenant/42"])
def test_split_stored_key_inverts_stored_key(key, namespace):
    stored = stored_key(key, namespace)
    encoded, back = split_stored_key(stored)
    assert back == key
    assert encoded == (None if namespace is None else encode_namespace(namespace))


def test_namespace_less_key_with_a_colon_never_meets_a_namespaced_key():
    assert stored_key("a:b", None) != stored_key("b", "a")
    assert not stored_key("a:b", None).startswith(namespace_prefix("a"))


def test_lease_key_follows_the_leading_colon_rule():
    assert lease_key("k", None) == ":asynccache-lease:k"
    assert lease_key("k", "eu") == "eu:asynccache-lease:k"
    assert split_stored_key(lease_key("k", None))[0] is None
