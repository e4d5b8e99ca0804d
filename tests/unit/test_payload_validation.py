"""Payload validation: the encode-first fast path gives exactly the full walk's verdicts.

``encode_payload`` encodes first and walks the payload (``_check``) only when the encoded
text cannot rule a problem out. These cases sit where a wrong shortcut would let a bad
payload through or change an error: nested keys, NULs, depth counted from brackets,
cycles, look-alikes inside strings.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from pgqrs import ValidationError, _validation


def encode(payload: object, max_depth: int = 32) -> str:
    return _validation.encode_payload(payload, max_bytes=1 << 20, max_depth=max_depth)


def walked_error(payload: dict[str, Any], max_depth: int = 32) -> str:
    """The message the full walk alone gives for ``payload``."""
    with pytest.raises(ValidationError) as caught:
        _validation._check(payload, max_depth)
    return str(caught.value)


def cyclic() -> dict[str, Any]:
    payload: dict[str, Any] = {"items": []}
    payload["items"].append(payload)
    return payload


@pytest.mark.parametrize(("payload", "max_depth"), [
    ({1: "top-level int key"}, 32),
    ({None: "top-level None key"}, 32),
    ({"a": {2.5: "nested float key"}}, 32),
    ({"a": [{"b": {True: "key deep in a list"}}]}, 32),
    ({"a\x00": "NUL in a key"}, 32),
    ({"a": {"b\x00": 1}}, 32),
    ({"a": ["x", "y\x00z"]}, 32),
    ({"a": [[[1]]]}, 3),  # 4 levels: lists count as much as objects
    ({"a": {"b": {}}}, 2),
    ({"a": [1, {"b": [2]}]}, 3),
    ({"x": math.nan}, 32),
    ({"x": [1, -math.inf]}, 32),
    ({"x": {"y": {1, 2}}}, 32),
    ({"x": b"bytes"}, 32),
])
def test_rejections_are_the_walks(payload: dict[str, Any], max_depth: int) -> None:
    with pytest.raises(ValidationError) as caught:
        encode(payload, max_depth)
    assert str(caught.value) == walked_error(payload, max_depth)


def test_a_cycle_is_reported_as_too_deep() -> None:
    with pytest.raises(ValidationError, match="nested deeper than 32"):
        encode(cyclic())


def test_very_deep_nesting_is_reported_as_too_deep_not_a_crash() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(50_000):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(ValidationError, match="nested deeper than 32"):
        encode(deep)


@pytest.mark.parametrize("payload", [
    {"text": "looks like \\u0000 but is a backslash"},  # escaped as \\u0000: walked, accepted
    {"text": "{[{[{[ brackets in a string ]}]}]}"},  # counted as nesting: walked, accepted
    {"a": {"b": {"c": [1, 2, {"d": None}]}}},
    {"list": [[1, 2], [3, [4, [5]]]], "t": (1, "x")},
    {"é": "ünïcödé ✓", "n": -0.0, "big": 10**30, "f": 1e300, "b": False},
    {},
])
def test_accepted_payloads_encode_as_json_dumps(payload: dict[str, Any]) -> None:
    assert encode(payload, max_depth=6) == json.dumps(
        payload, allow_nan=False, separators=(",", ":"), ensure_ascii=False)


def test_depth_limit_counts_exactly() -> None:
    assert encode({"a": [[1]]}, max_depth=3) == '{"a":[[1]]}'
    with pytest.raises(ValidationError, match="nested deeper than 2"):
        encode({"a": [[1]]}, max_depth=2)


def test_a_lone_surrogate_is_rejected() -> None:
    with pytest.raises(ValidationError, match="lone surrogate"):
        encode({"a": "\ud800"})


def test_default_options_are_shared_and_checked_ones_are_not() -> None:
    assert _validation.options() is _validation.DEFAULT_OPTIONS
    assert _validation.options(priority=3).priority == 3
    for bad in (False, 0.0):
        with pytest.raises(ValidationError, match="priority"):
            _validation.options(priority=bad)
