"""``ResponseStore``: stored responses kept per gateway key, bounded in size and time."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_core.config import validate_config
from nexus_core.errors import GatewayError
from nexus_core.gateway import Gateway
from nexus_core.state import MemoryStore, SqliteStore, StateStore
from nexus_server.responses_routes import listed
from nexus_server.responses_store import COLLECTION, ResponseStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def gateway(state: StateStore | None = None, **responses: Any) -> Gateway:
    config = {"discovery": {"enabled": False}, "state": {"backend": "memory"}}
    return Gateway(validate_config({**config, "responses": responses}), state=state)


def response(response_id: str = "resp_1", text: str = "Paris.") -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "status": "completed",
        "model": "llama3",
        "output": [
            {
                "type": "message",
                "id": "msg_out",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
    }


QUESTION = {"role": "user", "content": "Capital of France?"}


def conversation(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [QUESTION, *answer["output"]]


async def test_a_saved_response_comes_back_with_its_conversation() -> None:
    store = ResponseStore(gateway())
    answer = response()
    assert await store.save(answer, conversation(answer), "team-a") is True
    stored = await store.load("resp_1", "team-a")
    assert stored is not None
    assert stored.response == answer
    assert stored.items == conversation(answer)
    assert stored.owner == "team-a"
    assert stored.input_items == [QUESTION]


async def test_another_keys_response_is_not_there() -> None:
    store = ResponseStore(gateway())
    answer = response()
    await store.save(answer, conversation(answer), "team-a")
    assert await store.load("resp_1", "team-b") is None
    assert await store.load("resp_1", None) is None  # made with a key: not for keyless callers
    assert await store.delete("resp_1", "team-b") is False
    assert await store.load("resp_1", "team-a") is not None  # still there for its owner
    assert await store.load("resp_1", None, any_owner=True) is not None  # the admin key
    assert await store.delete("resp_1", "team-a") is True
    assert await store.load("resp_1", "team-a") is None
    assert await store.delete("resp_1", "team-a") is False


async def test_a_record_over_the_limit_is_not_kept(caplog: pytest.LogCaptureFixture) -> None:
    store = ResponseStore(gateway(max_record_bytes=4096))
    small = response("resp_small")
    assert await store.save(small, conversation(small), None) is True
    big = response("resp_big", text="é" * 2000)  # 2000 characters, 4000 bytes of UTF-8
    with caplog.at_level(logging.WARNING, logger="nexus.responses"):
        assert await store.save(big, conversation(big), None) is False
    assert await store.load("resp_big", None) is None
    assert "response resp_big is not stored" in caplog.text
    assert "max_record_bytes (4096)" in caplog.text


async def test_what_json_holds_comes_back_exactly() -> None:
    store = ResponseStore(gateway())
    answer = response(text="naïve 😀 \u2028")
    answer["metadata"] = {"big": 2**70, "ratio": 0.1, "none": None}
    await store.save(answer, conversation(answer), None)
    stored = await store.load("resp_1", None)
    assert stored is not None
    assert stored.response == answer


async def test_records_expire_after_the_retention() -> None:
    clock = Clock()
    store = ResponseStore(gateway(MemoryStore(clock=clock), retention_seconds=3600))
    answer = response()
    await store.save(answer, conversation(answer), None)
    clock.now += 3599
    assert await store.load("resp_1", None) is not None
    clock.now += 1
    assert await store.load("resp_1", None) is None


async def test_with_store_off_nothing_is_kept_or_found() -> None:
    state = MemoryStore()
    on = ResponseStore(gateway(state))
    answer = response()
    await on.save(answer, conversation(answer), None)
    off = ResponseStore(gateway(state, store=False))
    assert off.enabled is False
    assert await off.load("resp_1", None) is None
    assert await off.save(response("resp_2"), [], None) is False
    assert await state.get(COLLECTION, "resp_2") is None


async def test_ids_are_bounded_and_unreadable_records_are_missing() -> None:
    state = MemoryStore()
    store = ResponseStore(gateway(state))
    with pytest.raises(ValueError, match="id of 1 to 256 characters"):
        await store.save({"id": "r" * 257}, [], None)
    assert await store.load("r" * 257, None) is None
    await state.put(COLLECTION, "resp_bad", "{not json", ttl_seconds=60)
    await state.put(COLLECTION, "resp_odd", json.dumps({"owner": None}), ttl_seconds=60)
    assert await store.load("resp_bad", None) is None
    assert await store.load("resp_odd", None) is None


async def test_a_restart_keeps_stored_responses_in_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    first = SqliteStore(path)
    await first.open()
    answer = response()
    await ResponseStore(gateway(first)).save(answer, conversation(answer), "team-a")
    await first.close()
    second = SqliteStore(path)
    await second.open()
    try:
        stored = await ResponseStore(gateway(second)).load("resp_1", "team-a")
        assert stored is not None
        assert stored.response == answer
    finally:
        await second.close()


def test_listed_items_have_ids_and_written_out_messages() -> None:
    assert listed(QUESTION, 0) == {
        "role": "user",
        "content": [{"type": "input_text", "text": "Capital of France?"}],
        "type": "message",
        "id": "item_0",
    }
    call = {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "f", "arguments": "{}"}
    assert listed(call, 3) == call
    said = listed({"role": "assistant", "content": "Hi"}, 1)
    assert said["content"] == [{"type": "output_text", "text": "Hi"}]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"retention_seconds": 0}, "responses.retention_seconds"),
        ({"max_record_bytes": 100}, "responses.max_record_bytes"),
        ({"keep": True}, "responses.keep"),
    ],
)
def test_bad_responses_settings_are_refused(section: dict[str, Any], message: str) -> None:
    from nexus_core.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        validate_config({"responses": section})


def test_the_defaults_are_openais() -> None:
    config = validate_config({}).responses
    assert config.store is True
    assert config.retention_seconds == 30 * 24 * 3600
    assert config.max_record_bytes == 16 * 1024 * 1024


# -- conversations as chains of responses ----------------------------------------------------


def turn_answer(number: int, text: str = "Fine.") -> dict[str, Any]:
    """The response of turn ``number`` (its id ``resp_<number>``)."""
    return response(f"resp_{number}", text=text) | {
        "previous_response_id": f"resp_{number - 1}" if number > 1 else None
    }


def said(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": text}


async def talk(
    store: ResponseStore, turns: list[list[dict[str, Any]]], owner: str | None = None
) -> list[list[dict[str, Any]]]:
    """Save one response per turn as the door does (each continuing the one before); the
    whole conversation each response ends, as the old records held it."""
    wholes: list[list[dict[str, Any]]] = []
    previous = None
    for number, asked in enumerate(turns, start=1):
        answer = turn_answer(number, text=f"answer {number}")
        assert await store.save(answer, [*asked, *answer["output"]], owner, previous=previous)
        before = wholes[-1] if wholes else []
        wholes.append([*before, *asked, *answer["output"]])
        previous = await store.load(answer["id"], owner)
        assert previous is not None
    return wholes


def stored_bytes(path: Path) -> int:
    """What the SQLite file holds of stored responses: the bytes of their values (read by
    another connection: what is committed)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        (total,) = db.execute(
            "SELECT coalesce(sum(length(CAST(value AS BLOB))), 0) FROM expiring "
            "WHERE collection = ?",
            (COLLECTION,),
        ).fetchone()
    return int(total)


async def test_each_turn_is_stored_once_so_a_conversation_grows_linearly(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite3"
    state = SqliteStore(path)
    await state.open()
    try:
        store = ResponseStore(gateway(state))
        held = [0]
        previous = None
        for number in range(1, 21):
            answer = turn_answer(number, text=f"answer {number:02d} " + "x" * 200)
            asked = [said(f"question {number:02d} " + "y" * 200)]
            await store.save(answer, [*asked, *answer["output"]], None, previous=previous)
            previous = await store.load(answer["id"], None)
            assert previous is not None
            held.append(stored_bytes(path))
        growth = [after - before for before, after in itertools.pairwise(held)]
        # Every turn adds its own record and nothing else: the same size each turn (the
        # link and the depth add a few bytes from the second), never the conversation again.
        assert max(growth[1:]) - min(growth[1:]) <= 8, growth
        assert held[-1] <= 20 * max(growth)
        # The last turn still loads the whole conversation, in order.
        assert previous.depth == 20
        texts = [item["content"] for item in previous.input_items if item.get("role") == "user"]
        assert texts == [f"question {n:02d} " + "y" * 200 for n in range(1, 21)]
        # What the old layout would have held: every record the whole conversation so far.
        old = sum(
            len(json.dumps({"owner": None, "response": {}, "items": previous.items[: 2 * n]}))
            for n in range(1, 21)
        )
        assert held[-1] * 4 < old
    finally:
        await state.close()


async def test_a_conversation_loads_whole_from_any_of_its_responses() -> None:
    store = ResponseStore(gateway())
    wholes = await talk(store, [[said("one")], [said("two"), said("two b")], [said("three")]])
    for number, whole in enumerate(wholes, start=1):
        loaded = await store.load(f"resp_{number}", None)
        assert loaded is not None
        assert loaded.items == whole
        assert loaded.depth == number
        assert loaded.previous == (f"resp_{number - 1}" if number > 1 else None)
        # Read alone, a record holds its own turn only.
        alone = await store.record(f"resp_{number}", None)
        assert alone is not None
        assert alone.items == whole[len(wholes[number - 2]) if number > 1 else 0 :]


async def test_a_record_in_the_old_layout_still_loads_and_continues() -> None:
    state = MemoryStore()
    store = ResponseStore(gateway(state))
    old_answer = response("resp_old", text="Paris.")
    history = [said("Capital of France?"), *old_answer["output"]]
    # Written as every record was before conversations were linked: the whole conversation.
    old = {"owner": "team-a", "response": old_answer, "items": history}
    await state.put(COLLECTION, "resp_old", json.dumps(old), ttl_seconds=3600)
    loaded = await store.load("resp_old", "team-a")
    assert loaded is not None
    assert (loaded.items, loaded.depth, loaded.previous) == (history, 1, None)
    follow = response("resp_new", text="Berlin.")
    asked = [said("And Germany?")]
    assert await store.save(follow, [*asked, *follow["output"]], "team-a", previous=loaded)
    whole = await store.load("resp_new", "team-a")
    assert whole is not None
    assert whole.items == [*history, *asked, *follow["output"]]
    assert whole.input_items == [*history, *asked]


async def test_deleting_a_middle_response_breaks_only_what_continued_it() -> None:
    store = ResponseStore(gateway())
    await talk(store, [[said(f"turn {n}")] for n in range(1, 6)])
    assert await store.delete("resp_3", None) is True
    for number in (1, 2):
        assert await store.load(f"resp_{number}", None) is not None
    assert await store.load("resp_3", None) is None
    for number in (4, 5):
        with pytest.raises(GatewayError) as broken:
            await store.load(f"resp_{number}", None)
        error = broken.value.envelope()["error"]
        assert (broken.value.status, error["code"], error["param"]) == (
            400,
            "previous_response_not_found",
            "previous_response_id",
        )
        assert error["message"].startswith(
            f"Previous response with id 'resp_3' not found: response 'resp_{number}' continues"
        )
        # Still retrievable on its own.
        assert await store.record(f"resp_{number}", None) is not None


async def test_each_turn_expires_on_its_own() -> None:
    clock = Clock()
    store = ResponseStore(gateway(MemoryStore(clock=clock), retention_seconds=3600))
    first = turn_answer(1)
    await store.save(first, [said("one"), *first["output"]], None)
    clock.now += 1800
    previous = await store.load("resp_1", None)
    second = turn_answer(2)
    await store.save(second, [said("two"), *second["output"]], None, previous=previous)
    clock.now += 1800  # the first turn's hour is up; the second has half an hour left
    assert await store.record("resp_1", None) is None
    assert await store.record("resp_2", None) is not None
    with pytest.raises(GatewayError, match="'resp_1' not found: response 'resp_2' continues"):
        await store.load("resp_2", None)
    clock.now += 1800
    assert await store.record("resp_2", None) is None


async def test_a_link_to_another_keys_record_is_a_missing_link() -> None:
    state = MemoryStore()
    store = ResponseStore(gateway(state))
    theirs = turn_answer(1, "Their secret.")
    await store.save(theirs, [said("secret"), *theirs["output"]], "team-b")
    # A record of team-a that links into team-b's (the door never writes one; forged here).
    forged = {
        "owner": "team-a",
        "response": turn_answer(2),
        "turn": [said("tell me")],
        "previous": "resp_1",
        "depth": 2,
    }
    await state.put(COLLECTION, "resp_2", json.dumps(forged), ttl_seconds=60)
    for owner, any_owner in (("team-a", False), (None, True)):
        with pytest.raises(GatewayError, match="'resp_1' not found: response 'resp_2'"):
            await store.load("resp_2", owner, any_owner=any_owner)
    assert await store.load("resp_2", "team-b") is None  # not even seen by the link's owner


async def test_the_admin_key_walks_a_keys_conversation() -> None:
    store = ResponseStore(gateway())
    wholes = await talk(store, [[said("a")], [said("b")], [said("c")]], owner="team-a")
    loaded = await store.load("resp_3", None, any_owner=True, to_list=True)
    assert loaded is not None
    assert loaded.items == wholes[-1]
    assert await store.load("resp_3", "team-b") is None


async def test_a_conversation_at_its_depth_cannot_be_continued() -> None:
    store = ResponseStore(gateway(max_chain_depth=3))
    await talk(store, [[said("one")], [said("two")]])
    previous = await store.load("resp_2", None)
    third = turn_answer(3)
    await store.save(third, [said("three"), *third["output"]], None, previous=previous)
    with pytest.raises(GatewayError) as refused:
        await store.load("resp_3", None)
    error = refused.value.envelope()["error"]
    assert (error["code"], error["param"]) == ("conversation_too_long", "previous_response_id")
    assert "max_chain_depth is 3" in error["message"]
    listed_ = await store.load("resp_3", None, to_list=True)  # listing it is still fine
    assert listed_ is not None
    assert listed_.depth == 3


async def test_a_conversation_over_its_bytes_cannot_be_continued() -> None:
    limit = 4096
    store = ResponseStore(gateway(max_conversation_bytes=limit))
    previous = None
    total = 0
    number = 0
    while total <= limit:
        number += 1
        answer = turn_answer(number, text="z" * 500)
        await store.save(answer, [said("q" * 500), *answer["output"]], None, previous=previous)
        own = await store.record(answer["id"], None)
        assert own is not None
        total += own.size
        if total <= limit:
            previous = await store.load(answer["id"], None)
            assert previous is not None
            assert previous.size == total  # the bytes of its records, counted as read
    assert number > 1
    with pytest.raises(GatewayError) as refused:
        await store.load(answer["id"], None)
    error = refused.value.envelope()["error"]
    assert (error["code"], error["param"]) == ("conversation_too_long", "previous_response_id")
    assert f"max_conversation_bytes is {limit}" in error["message"]
    # It was stored by continuing one under the limit: it can still be listed.
    assert await store.load(answer["id"], None, to_list=True) is not None


async def test_a_walk_is_bounded_even_through_forged_records() -> None:
    state = MemoryStore()
    store = ResponseStore(gateway(state, max_chain_depth=50))
    # Two records continuing each other (with depths that lie): the walk stops at the bound.
    for me, other in (("resp_a", "resp_b"), ("resp_b", "resp_a")):
        record = {
            "owner": None,
            "response": response(me),
            "turn": [],
            "previous": other,
            "depth": 2,
        }
        await state.put(COLLECTION, me, json.dumps(record), ttl_seconds=60)
    with pytest.raises(GatewayError, match="max_chain_depth is 50"):
        await store.load("resp_a", None, to_list=True)


@pytest.mark.parametrize(
    "record",
    [
        {"owner": None, "response": {}, "turn": [], "previous": "resp_0", "depth": 1},
        {"owner": None, "response": {}, "turn": [], "previous": 5, "depth": 2},
        {"owner": None, "response": {}, "turn": {}, "previous": "resp_0", "depth": 2},
        {"owner": 3, "response": {}, "items": []},
        {"owner": None, "response": [], "items": []},
    ],
)
async def test_a_record_of_neither_shape_is_missing(record: dict[str, Any]) -> None:
    state = MemoryStore()
    await state.put(COLLECTION, "resp_x", json.dumps(record), ttl_seconds=60)
    assert await ResponseStore(gateway(state)).record("resp_x", None) is None


turns_strategy = st.lists(
    st.lists(st.text(max_size=20).map(said), min_size=1, max_size=3), min_size=1, max_size=8
)


@settings(max_examples=40, deadline=None)
@given(turns=turns_strategy, gone=st.integers(0, 7))
def test_a_chain_loads_what_the_whole_records_held(
    turns: list[list[dict[str, Any]]], gone: int
) -> None:
    """Whatever the turns, each response loads the conversation a whole record would have held;
    with one response deleted, those before it still load, those after it name it."""

    async def check() -> None:
        store = ResponseStore(gateway())
        wholes = await talk(store, turns)
        for number, whole in enumerate(wholes, start=1):
            loaded = await store.load(f"resp_{number}", None, to_list=True)
            assert loaded is not None
            assert loaded.items == whole
        deleted = gone % len(turns) + 1
        await store.delete(f"resp_{deleted}", None)
        for number in range(1, len(turns) + 1):
            if number < deleted:
                assert await store.load(f"resp_{number}", None) is not None
            elif number == deleted:
                assert await store.load(f"resp_{number}", None) is None
            else:
                with pytest.raises(GatewayError, match=f"'resp_{deleted}' not found"):
                    await store.load(f"resp_{number}", None)

    anyio.run(check)


async def test_a_setting_lowered_since_bounds_listing_too() -> None:
    state = MemoryStore()
    await talk(ResponseStore(gateway(state)), [[said("one")], [said("two")], [said("three")]])
    lowered = ResponseStore(gateway(state, max_chain_depth=2))
    with pytest.raises(GatewayError, match="too long to list: it holds 3 responses"):
        await lowered.load("resp_3", None, to_list=True)
    assert await lowered.load("resp_2", None, to_list=True) is not None
    assert await lowered.record("resp_3", None) is not None  # retrieving needs no walk
