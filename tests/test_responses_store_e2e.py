"""Stored responses end to end: the openai SDK's ``responses.retrieve``, ``responses.delete`` and
``responses.input_items.list`` against a real Nexus, per gateway key, shared by two replicas on
one real ``redis-server``, answered 503 when the store cannot answer.

Most tests seed records through the server's own ``ResponseStore``, on its event loop, as the
door does; the conversation tests at the end go through ``POST /v1/responses`` itself
(``store``, ``previous_response_id``) in front of a fake backend.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import schemathesis
from schemathesis.checks import response_schema_conformance

from nexus_core.testing import FakeBackend
from nexus_core.testing.redis import redis_server, redis_server_binary
from nexus_server.responses_store import ResponseStore
from nexus_server.testing import RunningServer, running_server
from tests.conftest import gateway_config

TEAM_A = "nxk-responses-team-a-0123456789"
TEAM_B = "nxk-responses-team-b-9876543210"
ADMIN = "nxk-responses-admin-5555555555"


@pytest.fixture(autouse=True)
def keys_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXUS_TEST_TEAM_A", TEAM_A)
    monkeypatch.setenv("NEXUS_TEST_TEAM_B", TEAM_B)
    monkeypatch.setenv("NEXUS_TEST_ADMIN", ADMIN)


def with_auth(config: dict[str, Any]) -> dict[str, Any]:
    config["auth"] = {
        "enabled": True,
        "admin_key_env": "NEXUS_TEST_ADMIN",
        "keys": [
            {"name": "team-a", "key_env": "NEXUS_TEST_TEAM_A"},
            {"name": "team-b", "key_env": "NEXUS_TEST_TEAM_B"},
        ],
    }
    return config


def client(server: RunningServer, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=30)


def answer(response_id: str, text: str = "Paris.") -> dict[str, Any]:
    """A response object as the door answers it."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": 1_800_000_000,
        "status": "completed",
        "model": "llama3",
        "output": [
            {
                "type": "message",
                "id": f"msg_{response_id}",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "store": True,
        "usage": {
            "input_tokens": 5,
            "output_tokens": 2,
            "total_tokens": 7,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


def save(
    server: RunningServer,
    response: dict[str, Any],
    owner: str | None,
    items: list[dict[str, Any]] | None = None,
) -> None:
    """Store ``response`` as the door does, on the server's loop."""
    conversation = items if items is not None else [{"role": "user", "content": "Capital?"}]
    saved = server.call(
        ResponseStore(server.gateway).save(response, [*conversation, *response["output"]], owner)
    )
    assert saved is True


def test_retrieve_and_delete_with_the_openai_sdk() -> None:
    with running_server(gateway_config()) as server:
        save(server, answer("resp_one"), None)
        sdk = client(server)
        retrieved = sdk.responses.retrieve("resp_one")
        assert retrieved.id == "resp_one"
        assert retrieved.output_text == "Paris."
        assert retrieved.usage is not None
        assert retrieved.usage.total_tokens == 7
        deleted = httpx.delete(
            f"{server.url}/v1/responses/resp_one", headers={"Host": "127.0.0.1"}, timeout=30
        )
        assert deleted.json() == {"id": "resp_one", "object": "response", "deleted": True}
        with pytest.raises(openai.NotFoundError):
            sdk.responses.retrieve("resp_one")
        save(server, answer("resp_two"), None)
        assert sdk.responses.delete("resp_two") is None  # what the SDK makes of the answer
        with pytest.raises(openai.NotFoundError):
            sdk.responses.delete("resp_two")


def test_a_missing_response_is_openais_404() -> None:
    with running_server(gateway_config()) as server:
        for method in ("GET", "DELETE"):
            got = httpx.request(
                method,
                f"{server.url}/v1/responses/resp_nowhere",
                headers={"Host": "127.0.0.1"},
                timeout=30,
            )
            assert got.status_code == 404
            assert got.json() == {
                "error": {
                    "message": "Response with id 'resp_nowhere' not found.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
            assert got.headers["x-request-id"]
        listed = httpx.get(
            f"{server.url}/v1/responses/resp_nowhere/input_items",
            headers={"Host": "127.0.0.1"},
            timeout=30,
        )
        assert listed.status_code == 404


def test_a_stored_response_is_not_replayed_as_a_stream() -> None:
    with running_server(gateway_config()) as server:
        save(server, answer("resp_one"), None)
        with pytest.raises(openai.BadRequestError, match="does not replay"):
            client(server).responses.retrieve("resp_one", stream=True)


def test_input_items_are_a_cursor_list_the_sdk_pages_through() -> None:
    with running_server(gateway_config()) as server:
        said = [{"role": "user", "content": f"line {n}"} for n in range(5)]
        save(server, answer("resp_long"), None, items=said)
        sdk = client(server)
        newest_first = list(sdk.responses.input_items.list("resp_long", limit=2))
        texts = [item.content[0].text for item in newest_first]  # type: ignore[union-attr]
        assert texts == [f"line {n}" for n in (4, 3, 2, 1, 0)]
        page = sdk.responses.input_items.list("resp_long", limit=3, order="asc")
        assert [item.id for item in page.data] == ["item_0", "item_1", "item_2"]
        assert page.has_more is True
        rest = sdk.responses.input_items.list("resp_long", after="item_2", order="asc")
        assert [item.id for item in rest.data] == ["item_3", "item_4"]
        assert rest.has_more is False
        with pytest.raises(openai.BadRequestError, match="limit must be from 1 to 100"):
            sdk.responses.input_items.list("resp_long", limit=101)


def test_a_keys_stored_responses_are_its_own() -> None:
    with running_server(with_auth(gateway_config())) as server:
        save(server, answer("resp_a"), "team-a")
        assert client(server, TEAM_A).responses.retrieve("resp_a").id == "resp_a"
        other = client(server, TEAM_B)
        with pytest.raises(openai.NotFoundError, match="Response with id 'resp_a' not found"):
            other.responses.retrieve("resp_a")
        with pytest.raises(openai.NotFoundError):
            other.responses.delete("resp_a")
        with pytest.raises(openai.NotFoundError):
            other.responses.input_items.list("resp_a")
        with pytest.raises(openai.AuthenticationError):
            client(server, "nxk-unknown").responses.retrieve("resp_a")
        # Still there for its own key after the other's tries, and for the admin key.
        assert client(server, TEAM_A).responses.retrieve("resp_a").output_text == "Paris."
        assert client(server, ADMIN).responses.retrieve("resp_a").id == "resp_a"
        client(server, TEAM_A).responses.delete("resp_a")
        with pytest.raises(openai.NotFoundError):
            client(server, ADMIN).responses.retrieve("resp_a")


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    if redis_server_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; .ci/run installs it")
        pytest.skip("redis-server is not installed")
    with redis_server(tmp_path) as url:
        yield url


def test_two_replicas_on_one_redis_share_stored_responses(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_TEST_REDIS", redis_url)
    config = with_auth(gateway_config())
    config["state"] = {"backend": "redis", "redis_url_env": "NEXUS_TEST_REDIS"}
    with running_server(config) as one, running_server(config) as two:
        save(one, answer("resp_shared", "Shared."), "team-a")
        assert client(two, TEAM_A).responses.retrieve("resp_shared").output_text == "Shared."
        with pytest.raises(openai.NotFoundError):
            client(two, TEAM_B).responses.retrieve("resp_shared")
        client(two, TEAM_A).responses.delete("resp_shared")
        with pytest.raises(openai.NotFoundError):
            client(one, TEAM_A).responses.retrieve("resp_shared")


def test_a_store_that_cannot_answer_is_a_503(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = gateway_config()
    path = tmp_path / "state.sqlite3"
    config["state"] = {"backend": "sqlite", "path": str(path)}
    with running_server(config) as server:
        save(server, answer("resp_locked"), None)
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
            with pytest.raises(openai.InternalServerError) as failed:
                client(server).responses.delete("resp_locked")
            other.execute("ROLLBACK")
        assert failed.value.status_code == 503
        assert failed.value.response.headers["retry-after"] == "5"
        assert failed.value.response.json()["error"]["code"] == "state_unavailable"
        assert "stored responses are kept there" in failed.value.message
        request_id = failed.value.response.headers["x-request-id"]
        logged = [r.getMessage() for r in caplog.records if r.name == "nexus.state"]
        assert any(
            line.startswith(f"{request_id} the sqlite state store failed (DELETE ")
            and "/v1/responses/resp_locked" in line
            for line in logged
        ), logged
        # The lock gone, the response is still there and can be deleted.
        assert client(server).responses.retrieve("resp_locked").id == "resp_locked"
        client(server).responses.delete("resp_locked")


def test_the_openapi_document_describes_the_real_answers() -> None:
    with running_server(with_auth(gateway_config())) as server:
        save(server, answer("resp_doc"), "team-a")
        schema = schemathesis.openapi.from_url(
            server.url + "/openapi/openapi.json", headers={"Host": "127.0.0.1"}
        )
        team = {"Authorization": f"Bearer {TEAM_A}"}
        calls = [
            ("/v1/responses/{response_id}", "GET", "resp_doc", {}, 200),
            ("/v1/responses/{response_id}/input_items", "GET", "resp_doc", {"limit": 1}, 200),
            ("/v1/responses/{response_id}", "DELETE", "resp_doc", {}, 200),
            ("/v1/responses/{response_id}", "GET", "resp_doc", {}, 404),
            ("/v1/responses/{response_id}/input_items", "GET", "resp_doc", {}, 404),
        ]
        for path, method, response_id, query, status in calls:
            case = schema[path][method].Case(
                path_parameters={"response_id": response_id}, query=query
            )
            got = case.call(base_url=server.url, headers=team, timeout=30)
            case.validate_response(got, checks=[response_schema_conformance])
            assert got.status_code == status, (path, method, got.text)


# -- conversations through the door ----------------------------------------------------------


def _messages(backend: FakeBackend) -> list[tuple[str, str]]:
    """The roles and texts of the last chat request the backend received."""
    chat = backend.inference_requests[-1].json
    return [(m["role"], m["content"]) for m in chat["messages"]]


def test_previous_response_id_continues_a_conversation_through_the_door() -> None:
    backend = FakeBackend("a", ["fake-model"])
    with backend.running(), running_server(gateway_config(backend)) as server:
        sdk = client(server)
        first = sdk.responses.create(
            model="fake-model", instructions="Be brief.", input="My name is Ada."
        )
        assert first.store is True
        # The second turn streams; the stored first turn goes before its input, without the
        # first turn's instructions (OpenAI does not carry them over either).
        with sdk.responses.stream(
            model="fake-model", input="What is my name?", previous_response_id=first.id
        ) as stream:
            second = stream.get_final_response()
        assert second.previous_response_id == first.id
        assert _messages(backend) == [
            ("user", "My name is Ada."),
            ("assistant", "Hello from a"),
            ("user", "What is my name?"),
        ]
        # Each turn is kept: retrieved as answered, its input items the conversation so far.
        kept = sdk.responses.retrieve(second.id)
        assert (kept.id, kept.output_text) == (second.id, "Hello from a")
        items = sdk.responses.input_items.list(second.id, order="asc").data
        texts = [part.text for item in items for part in item.content]  # type: ignore[union-attr]
        assert texts == ["My name is Ada.", "Hello from a", "What is my name?"]
        # A third turn on the second carries both earlier turns.
        sdk.responses.create(model="fake-model", input="Thanks.", previous_response_id=second.id)
        assert [role for role, _ in _messages(backend)] == [
            "user",
            "assistant",
            "user",
            "assistant",
            "user",
        ]
        # Deleted: it cannot be continued any more, and nothing reached the backend.
        sdk.responses.delete(first.id)
        sent = len(backend.inference_requests)
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.responses.create(model="fake-model", input="Hi", previous_response_id=first.id)
        error = caught.value.body
        assert isinstance(error, dict)
        assert (error["code"], error["param"]) == (
            "previous_response_not_found",
            "previous_response_id",
        )
        assert error["message"] == f"Previous response with id '{first.id}' not found."
        assert len(backend.inference_requests) == sent


def test_store_false_keeps_nothing() -> None:
    backend = FakeBackend("a", ["fake-model"])
    with backend.running(), running_server(gateway_config(backend)) as server:
        sdk = client(server)
        answer_ = sdk.responses.create(model="fake-model", input="Hi", store=False)
        assert answer_.store is False
        with pytest.raises(openai.NotFoundError):
            sdk.responses.retrieve(answer_.id)
        with pytest.raises(openai.BadRequestError):
            sdk.responses.create(model="fake-model", input="Hi", previous_response_id=answer_.id)


def test_another_key_cannot_continue_a_conversation() -> None:
    backend = FakeBackend("a", ["fake-model"])
    with backend.running(), running_server(with_auth(gateway_config(backend))) as server:
        mine = client(server, TEAM_A).responses.create(model="fake-model", input="A secret.")
        with pytest.raises(openai.BadRequestError) as caught:
            client(server, TEAM_B).responses.create(
                model="fake-model", input="What was it?", previous_response_id=mine.id
            )
        assert caught.value.code == "previous_response_not_found"
        assert all("A secret." not in r.body.decode() for r in backend.inference_requests[1:])
        follow = client(server, TEAM_A).responses.create(
            model="fake-model", input="What was it?", previous_response_id=mine.id
        )
        assert follow.status == "completed"
        assert _messages(backend)[0] == ("user", "A secret.")


# -- conversations as chains of responses ------------------------------------------------------


def sqlite_bytes(path: Path) -> int:
    """The bytes of the stored responses the SQLite file holds (committed, read by another
    connection)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        (total,) = db.execute(
            "SELECT coalesce(sum(length(CAST(value AS BLOB))), 0) FROM expiring "
            "WHERE collection = 'responses'"
        ).fetchone()
    return int(total)


def redis_bytes(url: str) -> int:
    """The bytes of the stored responses a Redis server holds (``STRLEN`` of their keys)."""
    import redis

    with contextlib.closing(redis.Redis.from_url(url)) as db:
        return sum(int(db.strlen(key)) for key in db.scan_iter("nexus:expiring:responses:*"))


def assert_linear(held: list[int]) -> None:
    """Each turn added about the same number of bytes: its own record, not the conversation."""
    growth = [after - before for before, after in itertools.pairwise([0, *held])]
    assert min(growth) > 0, growth
    # Ids and texts are of fixed width; usage figures and the depth gain a digit now and then.
    assert max(growth[1:]) - min(growth[1:]) <= 16, growth
    assert held[-1] <= len(held) * (min(growth[1:]) + 16)


def sqlite_config(backend: FakeBackend, path: Path) -> dict[str, Any]:
    config = gateway_config(backend)
    config["state"] = {"backend": "sqlite", "path": str(path)}
    return config


def test_a_twenty_turn_conversation_is_stored_linearly(tmp_path: Path) -> None:
    backend = FakeBackend("a", ["fake-model"])
    path = tmp_path / "state.sqlite3"
    with backend.running(), running_server(sqlite_config(backend, path)) as server:
        sdk = client(server)
        held: list[int] = []
        previous: str | None = None
        for number in range(1, 21):
            said = f"Turn {number:02d}: " + "tell me more. " * 10
            if previous is None:
                answer_ = sdk.responses.create(model="fake-model", input=said)
            else:
                answer_ = sdk.responses.create(
                    model="fake-model", input=said, previous_response_id=previous
                )
            previous = answer_.id
            held.append(sqlite_bytes(path))
        assert_linear(held)
        # The twentieth turn was asked with the whole conversation, in order.
        asked = _messages(backend)
        assert len(asked) == 39
        assert [role for role, _ in asked] == ["user", "assistant"] * 19 + ["user"]
        assert [text[:7] for role, text in asked if role == "user"] == [
            f"Turn {n:02d}" for n in range(1, 21)
        ]
        # Its input items are the whole conversation too, paged by the SDK.
        items = list(sdk.responses.input_items.list(previous, limit=7, order="asc"))
        assert len(items) == 39
        # Sent without ids, the questions are listed by their place in the conversation.
        assert [item.id for item in items[::2]] == [f"item_{n}" for n in range(0, 39, 2)]
        assert len({item.id for item in items}) == 39
        texts = [part.text for item in items for part in item.content]  # type: ignore[union-attr]
        assert texts[-1].startswith("Turn 20: ")
        assert texts[0].startswith("Turn 01: ")


def test_a_conversation_goes_on_across_replicas_on_one_redis(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_TEST_REDIS", redis_url)
    backend = FakeBackend("a", ["fake-model"])
    with backend.running():
        config = with_auth(gateway_config(backend))
        config["state"] = {"backend": "redis", "redis_url_env": "NEXUS_TEST_REDIS"}
        with running_server(config) as one, running_server(config) as two:
            _a_conversation_across(one, two, redis_url, backend)


def _a_conversation_across(
    one: RunningServer, two: RunningServer, redis_url: str, backend: FakeBackend
) -> None:
    """Eight turns of one conversation, each on the other replica."""
    held: list[int] = []
    previous: str | None = None
    for number in range(1, 9):
        replica = (one, two)[number % 2]  # every turn on the other replica
        said = f"Turn {number:02d} on replica {number % 2}."
        answer_ = client(replica, TEAM_A).responses.create(
            model="fake-model", input=said, previous_response_id=previous or openai.omit
        )
        previous = answer_.id
        held.append(redis_bytes(redis_url))
    assert_linear(held)
    assert previous is not None
    assert [text for role, text in _messages(backend) if role == "user"] == [
        f"Turn {n:02d} on replica {n % 2}." for n in range(1, 9)
    ]
    listed_ = client(one, TEAM_A).responses.input_items.list(previous, limit=100)
    assert len(listed_.data) == 15  # 8 questions and 7 answers, newest first
    assert listed_.data[0].content[0].text == "Turn 08 on replica 0."  # type: ignore[union-attr]
    # Every link is team-a's: team-b continues nothing, on either replica.
    for replica in (one, two):
        with pytest.raises(openai.BadRequestError) as caught:
            client(replica, TEAM_B).responses.create(
                model="fake-model", input="And?", previous_response_id=previous
            )
        assert caught.value.code == "previous_response_not_found"
        with pytest.raises(openai.NotFoundError):
            client(replica, TEAM_B).responses.input_items.list(previous)
    # The admin key lists a key's conversation, through its links.
    assert len(client(two, ADMIN).responses.input_items.list(previous, limit=100).data) == 15


def _turns(sdk: openai.OpenAI, count: int) -> list[str]:
    """``count`` turns of one conversation through the door; their ids."""
    ids: list[str] = []
    for number in range(1, count + 1):
        answer_ = sdk.responses.create(
            model="fake-model",
            input=f"Turn {number}.",
            previous_response_id=ids[-1] if ids else openai.omit,
        )
        ids.append(answer_.id)
    return ids


def test_a_conversation_past_its_depth_is_refused_before_any_backend() -> None:
    backend = FakeBackend("a", ["fake-model"])
    with backend.running():
        config = gateway_config(backend)
        config["responses"] = {"max_chain_depth": 3}
        with running_server(config) as server:
            sdk = client(server)
            ids = _turns(sdk, 3)
            sent = len(backend.inference_requests)
            with pytest.raises(openai.BadRequestError) as caught:
                sdk.responses.create(
                    model="fake-model", input="Turn 4.", previous_response_id=ids[-1]
                )
            error = caught.value.body
            assert isinstance(error, dict)
            assert (error["code"], error["param"], error["type"]) == (
                "conversation_too_long",
                "previous_response_id",
                "invalid_request_error",
            )
            assert error["message"] == (
                f"The conversation of response '{ids[-1]}' is too long to continue: it holds "
                "3 responses, and [responses] max_chain_depth is 3. Start a new "
                "conversation (send the whole input without previous_response_id)."
            )
            assert len(backend.inference_requests) == sent
            # The last turn is still listed whole, and an earlier one can still be continued.
            assert len(sdk.responses.input_items.list(ids[-1]).data) == 5
            sdk.responses.create(model="fake-model", input="Again.", previous_response_id=ids[0])


def test_a_conversation_past_its_bytes_is_refused_before_any_backend() -> None:
    backend = FakeBackend("a", ["fake-model"])
    with backend.running():
        config = gateway_config(backend)
        config["responses"] = {"max_conversation_bytes": 4096}
        with running_server(config) as server:
            sdk = client(server)
            ids: list[str] = []
            refused: openai.BadRequestError | None = None
            while refused is None and len(ids) < 20:
                try:
                    answer_ = sdk.responses.create(
                        model="fake-model",
                        input=f"Turn {len(ids) + 1}. " + "Go on. " * 50,
                        previous_response_id=ids[-1] if ids else openai.omit,
                    )
                except openai.BadRequestError as exc:
                    refused = exc
                else:
                    ids.append(answer_.id)
            assert refused is not None
            assert refused.code == "conversation_too_long"
            assert "max_conversation_bytes is 4096" in refused.message
            assert 1 < len(ids) < 20
            assert len(backend.inference_requests) == len(ids)


def test_a_broken_conversation_names_the_response_that_is_gone() -> None:
    backend = FakeBackend("a", ["fake-model"])
    with backend.running(), running_server(gateway_config(backend)) as server:
        sdk = client(server)
        ids = _turns(sdk, 4)
        sdk.responses.delete(ids[1])
        sent = len(backend.inference_requests)
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.responses.create(model="fake-model", input="And?", previous_response_id=ids[3])
        error = caught.value.body
        assert isinstance(error, dict)
        assert (error["code"], error["param"]) == (
            "previous_response_not_found",
            "previous_response_id",
        )
        assert error["message"].startswith(
            f"Previous response with id '{ids[1]}' not found: response '{ids[3]}' continues a "
            "conversation that needs it, and it has expired or was deleted."
        )
        assert len(backend.inference_requests) == sent
        # The later turns are still there on their own; their input items are not.
        assert sdk.responses.retrieve(ids[3]).output_text == "Hello from a"
        with pytest.raises(openai.BadRequestError, match=f"'{ids[1]}' not found"):
            sdk.responses.input_items.list(ids[2])
        # What came before the deleted response goes on.
        sdk.responses.create(model="fake-model", input="Go on.", previous_response_id=ids[0])
        assert [text for _, text in _messages(backend)] == ["Turn 1.", "Hello from a", "Go on."]


def test_a_record_stored_whole_before_the_upgrade_is_continued() -> None:
    backend = FakeBackend("a", ["fake-model"])
    with backend.running(), running_server(with_auth(gateway_config(backend))) as server:
        old = answer("resp_old", "Paris.")
        history = [
            {"role": "user", "content": "Capital of France?"},
            *old["output"],
            {"role": "user", "content": "And of Italy?"},
            {"role": "assistant", "content": "Rome."},
        ]
        # As the previous version wrote every record: the whole conversation in one record.
        record = json.dumps({"owner": "team-a", "response": old, "items": history})
        server.call(
            server.gateway.accountant.store.put("responses", "resp_old", record, ttl_seconds=600)
        )
        sdk = client(server, TEAM_A)
        assert sdk.responses.retrieve("resp_old").output_text == "Paris."
        follow = sdk.responses.create(
            model="fake-model", input="And of Spain?", previous_response_id="resp_old"
        )
        assert _messages(backend) == [
            ("user", "Capital of France?"),
            ("assistant", "Paris."),
            ("user", "And of Italy?"),
            ("assistant", "Rome."),
            ("user", "And of Spain?"),
        ]
        again = sdk.responses.create(
            model="fake-model", input="Thanks.", previous_response_id=follow.id
        )
        items = sdk.responses.input_items.list(again.id, order="asc", limit=100).data
        assert len(items) == 7
        with pytest.raises(openai.BadRequestError):
            client(server, TEAM_B).responses.create(
                model="fake-model", input="Hi", previous_response_id=follow.id
            )
