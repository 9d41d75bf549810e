"""``ResponseStore``: stored responses kept per gateway key, bounded in size and time."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from nexus_core.config import validate_config
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
