"""Per-call cache controls and the cache modes."""

from __future__ import annotations

import math

import pytest

from asynccache import Cache, CacheControls, CacheMode, ConfigurationError, parse_controls
from asynccache.config import NOT_GIVEN


def test_no_controls_is_the_default():
    assert parse_controls(None) == CacheControls()
    assert parse_controls({}) == CacheControls()
    assert parse_controls(None).ttl is NOT_GIVEN
    assert parse_controls(None).namespace is NOT_GIVEN


@pytest.mark.parametrize(("controls", "expected"), [
    ({"no-cache": True}, CacheControls(no_cache=True)),
    ({"no-store": True}, CacheControls(no_store=True)),
    ({"use-cache": True}, CacheControls(use_cache=True)),
    ({"no-cache": False}, CacheControls(no_cache=False)),
    ({"ttl": 600}, CacheControls(ttl=600.0)),
    ({"ttl": 0.5}, CacheControls(ttl=0.5)),
    ({"ttl": None}, CacheControls(ttl=None)),
    ({"ttl": math.inf}, CacheControls(ttl=None)),
    ({"s-maxage": 60}, CacheControls(s_maxage=60.0)),
    ({"s-maxage": 0}, CacheControls(s_maxage=0.0)),
    ({"namespace": "eu"}, CacheControls(namespace="eu")),
    ({"namespace": None}, CacheControls(namespace=None)),
    ({"similarity-threshold": 0.9}, CacheControls(similarity_threshold=0.9)),
    ({"similarity-threshold": 0}, CacheControls(similarity_threshold=0.0)),
    ({"similarity-threshold": 1}, CacheControls(similarity_threshold=1.0)),
    # "_" for "-", any case: what Python users tend to type
    ({"no_cache": True, "S_MAXAGE": 5, "use_cache": True},
     CacheControls(no_cache=True, s_maxage=5.0, use_cache=True)),
])
def test_every_valid_control(controls, expected):
    assert parse_controls(controls) == expected


def test_parsed_controls_pass_through_and_are_immutable():
    parsed = parse_controls({"ttl": 5})
    assert parse_controls(parsed) is parsed
    with pytest.raises(AttributeError):
        parsed.ttl = 10  # type: ignore[misc]


@pytest.mark.parametrize(("controls", "named"), [
    ({"ttl": -1}, "ttl"),
    ({"ttl": 0}, "ttl"),
    ({"ttl": math.nan}, "ttl"),
    ({"ttl": "60"}, "ttl"),
    ({"ttl": True}, "ttl"),
    ({"s-maxage": -5}, "s-maxage"),
    ({"s-maxage": "5"}, "s-maxage"),
    ({"s-maxage": math.nan}, "s-maxage"),
    ({"no-cache": "yes"}, "no-cache"),
    ({"no-store": 1}, "no-store"),
    ({"use_cache": None}, "use_cache"),
    ({"namespace": 5}, "namespace"),
    ({"similarity-threshold": 1.5}, "similarity-threshold"),
    ({"similarity-threshold": -0.1}, "similarity-threshold"),
    ({"similarity-threshold": "high"}, "similarity-threshold"),
    ({"similarity-threshold": True}, "similarity-threshold"),
    ({"no-cahce": True}, "no-cahce"),
    ({"max-age": 5}, "max-age"),
])
def test_invalid_controls_raise_a_value_error_naming_the_control(controls, named):
    with pytest.raises(ConfigurationError, match=named) as caught:
        parse_controls(controls)
    assert isinstance(caught.value, ValueError)


def test_unknown_control_lists_the_known_ones():
    with pytest.raises(ConfigurationError, match=r"known controls: .*no-cache.*ttl"):
        parse_controls({"bogus": 1})


@pytest.mark.parametrize("bad", [["ttl", 5], "no-cache", 5])
def test_controls_must_be_a_mapping(bad):
    with pytest.raises(ConfigurationError, match="dict"):
        parse_controls(bad)


@pytest.mark.parametrize(("mode", "controls", "reads", "writes"), [
    (CacheMode.default_on, {}, True, True),
    (CacheMode.default_on, {"no-cache": True}, False, True),
    (CacheMode.default_on, {"no-store": True}, True, False),
    (CacheMode.default_on, {"no-cache": True, "no-store": True}, False, False),
    (CacheMode.default_off, {}, False, False),
    (CacheMode.default_off, {"use-cache": True}, True, True),
    (CacheMode.default_off, {"use-cache": True, "no-cache": True}, False, True),
    (CacheMode.default_off, {"use-cache": True, "no-store": True}, True, False),
    (CacheMode.default_off, {"no-store": False}, False, False),
])
def test_modes_decide_reads_and_writes(mode, controls, reads, writes):
    parsed = parse_controls(controls)
    assert parsed.reads(mode) is reads
    assert parsed.writes(mode) is writes


def test_cache_mode_accepts_names_and_rejects_others():
    assert Cache(mode="default_off").mode is CacheMode.default_off
    assert Cache().mode is CacheMode.default_on
    with pytest.raises(ConfigurationError, match="mode"):
        Cache(mode="sometimes")


def test_cache_controls_method_parses_and_supported_call_types():
    cache = Cache(supported_call_types=["acompletion"])
    assert cache.controls({"ttl": 5}).ttl == 5.0
    with pytest.raises(ConfigurationError, match="ttl"):
        cache.controls({"ttl": -5})
    assert cache.caches_call_type("acompletion")
    assert not cache.caches_call_type("aembedding")
    assert Cache().caches_call_type("aembedding")
