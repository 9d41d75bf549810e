"""Gateway key settings are strict, made through the API or read back from the state store.

JSON has no integer type of its own and a Python boolean is an integer: ``true`` must never
become a limit of one request per minute. A stored key whose settings cannot be read is not
loaded (fail closed: its requests get 401, not an unlimited key), and is logged once.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import pytest

from nexus_core.auth import KeyRing, KeyRingError, checked_settings
from nexus_core.config import AuthConfig
from nexus_core.state import MemoryStore

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("requests_per_minute", True),
        ("requests_per_minute", "60"),
        ("requests_per_minute", 1.5),
        ("requests_per_minute", -1),
        ("tokens_per_minute", False),
        ("tokens_per_minute", 0),
        ("monthly_budget_usd", True),
        ("monthly_budget_usd", "5.0"),
        ("monthly_budget_usd", math.inf),
        ("monthly_budget_usd", math.nan),
        ("monthly_budget_usd", -0.5),
        ("models", "gpt-*"),
        ("models", [None]),
    ],
)
async def test_create_refuses_a_setting_of_the_wrong_kind_naming_it(field: str, value: Any) -> None:
    ring = KeyRing(AuthConfig(enabled=True), MemoryStore(), environ={})
    with pytest.raises(KeyRingError) as refused:
        await ring.create("team", **{field: value})
    assert refused.value.status == 400
    assert refused.value.param == field
    assert field in refused.value.message
    assert ring.listing() == []


async def test_create_keeps_whole_numbers_and_nulls() -> None:
    ring = KeyRing(AuthConfig(enabled=True), MemoryStore(), environ={})
    key, plaintext = await ring.create(
        "team", requests_per_minute=60, tokens_per_minute=None, monthly_budget_usd=5
    )
    assert (key.requests_per_minute, key.tokens_per_minute, key.monthly_budget_usd) == (
        60,
        None,
        5.0,
    )
    assert type(key.monthly_budget_usd) is float
    assert ring.identify(plaintext) is key


@pytest.mark.parametrize("name", ["team\n", "-team", "a/b", "x" * 65])
async def test_create_refuses_a_name_outside_the_key_name_set(name: str) -> None:
    ring = KeyRing(AuthConfig(enabled=True), MemoryStore(), environ={})
    with pytest.raises(KeyRingError) as refused:
        await ring.create(name)
    assert refused.value.param == "name"


async def test_a_stored_key_with_settings_of_the_wrong_kind_is_not_loaded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    maker = KeyRing(AuthConfig(enabled=True), store, environ={})
    _, good_plaintext = await maker.create("good", requests_per_minute=10)
    bad, bad_plaintext = await maker.create("bad", requests_per_minute=10)
    # What another (older, or tampered with) writer left in the shared store.
    stored = json.loads(bad.stored())
    stored["requests_per_minute"] = True
    await store.put("keys", "bad", json.dumps(stored))
    ring = KeyRing(AuthConfig(enabled=True), store, environ={})
    with caplog.at_level(logging.ERROR, logger="nexus.auth"):
        await ring.load()
        await ring.sync()
    assert ring.identify(good_plaintext) is not None
    assert ring.identify(bad_plaintext) is None
    unreadable = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(unreadable) == 1
    assert "requests_per_minute" in unreadable[0]


def test_checked_settings_returns_the_values_typed() -> None:
    assert checked_settings(["a*"], 1, 2, 0) == (("a*",), 1, 2, 0.0)
    assert checked_settings(None, None, None, None) == ((), None, None, None)
