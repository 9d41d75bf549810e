"""``fastjson.loads`` accepts, rejects and returns exactly what ``json.loads`` does."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_core import fastjson

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(JSON_VALUES, st.booleans())
def test_same_values_as_the_standard_library(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert fastjson.loads(text.encode()) == json.loads(text)
    assert fastjson.loads(text) == json.loads(text)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"temperature": NaN}',
        b'{"logprob": -Infinity}',
        b'{"seed": 123456789012345678901234567890}',
        b'{"x": "\\ud800"}',  # a lone surrogate escape
        '{"model": "m"}'.encode("utf-16"),
        b'{"a": 1, "a": 2}',
        b'{"a": 1e400}',
    ],
    ids=["nan", "infinity", "big-int", "lone-surrogate", "utf-16", "duplicate-key", "overflow"],
)
def test_what_msgspec_refuses_the_standard_library_decides(raw: bytes) -> None:
    expected = json.loads(raw)
    got = fastjson.loads(raw)
    assert json.dumps(got) == json.dumps(expected)
    if "temperature" in expected:
        assert math.isnan(got["temperature"])


@pytest.mark.parametrize("raw", [b"", b"{", b'{"a": }', b"[1,]", b"\xff\xfe{"])
def test_invalid_json_is_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        fastjson.loads(raw)


def test_absurd_nesting_is_a_recursion_error_as_with_json() -> None:
    with pytest.raises(RecursionError):
        fastjson.loads(b"[" * 100_000 + b"]" * 100_000)


@given(JSON_VALUES)
def test_dumps_writes_what_the_standard_library_reads_back(value: Any) -> None:
    data = fastjson.dumps(value)
    assert json.loads(data) == value
    if not any(isinstance(leaf, float) for leaf in _leaves(value)):  # msgspec spells 1e20
        assert data == json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def test_dumps_escapes_a_lone_surrogate_rather_than_fail() -> None:
    value = fastjson.loads(b'{"x": "a\\ud800b", "y": "\xc3\xa9"}')
    data = fastjson.dumps(value)
    assert data.isascii()
    assert json.loads(data) == value


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]
