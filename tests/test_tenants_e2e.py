"""Tenants: with [auth] on, a gateway key sees its own requests and the models it may use.

Two gateway keys (each with a ``models`` allow-list, one with a monthly budget) and the admin key
talk to a real Nexus (a thread) in front of a fake Ollama, through the real ``openai`` and
``ollama`` clients. Each key's ``/v1/history``, ``/v1/stats``, ``/v1/models`` and Ollama listings
hold only its own; the admin key sees everything. Key settings are strict: ``POST /admin/keys``
refuses a boolean, a string or a fraction as a limit, naming the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest

from nexus_core.testing import FakeOllama
from nexus_server.testing import RunningServer, running_server
from tests.conftest import gateway_config

MESSAGES: list[Any] = [{"role": "user", "content": "Hi"}]
KEY_A = "nxk-team-a-secret-0123456789abcdef"
KEY_B = "nxk-team-b-secret-0123456789abcdef"
ADMIN_KEY = "nxk-admin-secret-fedcba9876543210"
MODELS = ["llama3:latest", "mistral:latest", "secret:latest"]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    monkeypatch.setenv("NEXUS_TEST_KEY_A", KEY_A)
    monkeypatch.setenv("NEXUS_TEST_KEY_B", KEY_B)
    monkeypatch.setenv("NEXUS_TEST_ADMIN_KEY", ADMIN_KEY)
    box = FakeOllama("box", [{"id": model, "loaded": True} for model in MODELS])
    with box.running():
        config = gateway_config({"name": "box", "url": box.url, "type": "ollama"})
        config["auth"] = {
            "enabled": True,
            "admin_key_env": "NEXUS_TEST_ADMIN_KEY",
            "keys": [
                {
                    "name": "team-a",
                    "key_env": "NEXUS_TEST_KEY_A",
                    "models": ["llama3*"],
                    "monthly_budget_usd": 5.0,
                },
                {"name": "team-b", "key_env": "NEXUS_TEST_KEY_B", "models": ["mistral*"]},
            ],
        }
        with running_server(config) as running:
            yield running


def sdk(server: RunningServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)


def get(server: RunningServer, path: str, key: str) -> Any:
    answer = httpx.get(server.url + path, headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def traffic(server: RunningServer) -> None:
    """team-a: two answers (one streamed) and one refusal; team-b: one answer."""
    a, b = sdk(server, KEY_A), sdk(server, KEY_B)
    a.chat.completions.create(model="llama3:latest", messages=MESSAGES)
    list(a.chat.completions.create(model="llama3:latest", messages=MESSAGES, stream=True))
    with pytest.raises(openai.PermissionDeniedError):
        a.chat.completions.create(model="secret:latest", messages=MESSAGES)
    b.chat.completions.create(model="mistral:latest", messages=MESSAGES)


def test_a_key_sees_only_its_own_requests_in_history_and_stats(server: RunningServer) -> None:
    traffic(server)
    history_a = get(server, "/v1/history", KEY_A)["data"]
    assert [(h["key"], h["model"], h["status"]) for h in history_a] == [
        ("team-a", "secret:latest", 403),
        ("team-a", "llama3:latest", 200),
        ("team-a", "llama3:latest", 200),
    ]
    history_b = get(server, "/v1/history", KEY_B)["data"]
    assert [(h["key"], h["model"], h["status"]) for h in history_b] == [
        ("team-b", "mistral:latest", 200)
    ]
    everything = get(server, "/v1/history", ADMIN_KEY)["data"]
    assert sorted(h["key"] for h in everything) == ["team-a", "team-a", "team-a", "team-b"]

    stats_a = get(server, "/v1/stats", KEY_A)
    assert stats_a["key"] == "team-a"
    assert stats_a["requests"] == {"total": 3, "errors": 1}
    # Its own figures per model: the refusal counts for the model it asked for.
    assert [(m["model"], m["requests"], m["errors"], m["streams"]) for m in stats_a["models"]] == [
        ("llama3:latest", 2, 0, 1),
        ("secret:latest", 1, 1, 0),
    ]
    [backend] = stats_a["backends"]
    assert backend["name"] == "box"
    assert backend["status"] == "healthy"
    assert backend["requests"] == 2
    # Nothing fleet-wide that would show the other tenant's traffic.
    for field in ("pending", "max_concurrent", "upstream_errors"):
        assert field not in backend
    assert "keys" not in stats_a
    assert stats_a["queue"] is None
    assert stats_a["budget"]["limit_usd"] == 5.0
    assert stats_a["budget"]["spent_usd"] == 0
    assert stats_a["budget"]["remaining_usd"] == 5.0
    assert "hard_limit_action" not in stats_a["budget"]  # the fleet's budget is not its own

    stats_b = get(server, "/v1/stats", KEY_B)
    assert stats_b["requests"] == {"total": 1, "errors": 0}
    assert [m["model"] for m in stats_b["models"]] == ["mistral:latest"]
    assert stats_b["budget"] is None

    fleet = get(server, "/v1/stats", ADMIN_KEY)
    assert fleet["requests"] == {"total": 4, "errors": 1}
    assert [m["model"] for m in fleet["models"]] == MODELS
    assert fleet["backends"][0]["pending"] == 0
    assert [(k["name"], k["requests"], k["errors"]) for k in fleet["keys"]] == [
        ("team-a", 3, 1),
        ("team-b", 1, 0),
    ]
    assert fleet["budget"]["hard_limit_action"] == "warn"
    assert fleet["queue"]["depth"] == 0


def test_a_key_lists_only_the_models_it_may_use(server: RunningServer) -> None:
    a, b = sdk(server, KEY_A), sdk(server, KEY_B)
    assert [model.id for model in a.models.list()] == ["llama3:latest"]
    assert [model.id for model in b.models.list()] == ["mistral:latest"]
    assert a.models.retrieve("llama3:latest").id == "llama3:latest"
    with pytest.raises(openai.NotFoundError) as hidden:
        a.models.retrieve("secret:latest")
    assert hidden.value.status_code == 404
    assert "secret:latest" in hidden.value.message
    assert "mistral" not in hidden.value.message  # the models it may use, not the others
    admin = [m["id"] for m in get(server, "/v1/models", ADMIN_KEY)["data"]]
    assert admin == MODELS
    assert get(server, "/v1/models/secret:latest", ADMIN_KEY)["id"] == "secret:latest"


def test_a_key_lists_only_its_models_on_the_ollama_door(server: RunningServer) -> None:
    def client(key: str) -> ollama.Client:
        return ollama.Client(host=server.url, headers={"Authorization": f"Bearer {key}"})

    a, admin = client(KEY_A), client(ADMIN_KEY)
    assert [m.model for m in a.list().models] == ["llama3:latest"]
    assert [m.model for m in a.ps().models] == ["llama3:latest"]
    assert a.show("llama3:latest").modelinfo is not None
    with pytest.raises(ollama.ResponseError) as hidden:
        a.show("secret:latest")
    assert hidden.value.status_code == 404
    assert hidden.value.error == "model 'secret:latest' not found"
    assert [m.model for m in client(KEY_B).list().models] == ["mistral:latest"]
    assert [m.model for m in admin.list().models] == MODELS
    assert [m.model for m in admin.ps().models] == MODELS
    assert admin.show("secret:latest").modelinfo is not None
    # Without a valid key: 401, whatever the listing.
    for path in ("/api/tags", "/api/ps", "/v1/models", "/v1/stats", "/v1/history"):
        assert httpx.get(server.url + path, headers={"x-api-key": "nxk-wrong"}).status_code == 401


# -- key settings are strict ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("requests_per_minute", True),
        ("requests_per_minute", False),
        ("requests_per_minute", "60"),
        ("requests_per_minute", 1.5),
        ("requests_per_minute", 60.0),
        ("requests_per_minute", -1),
        ("requests_per_minute", 0),
        ("requests_per_minute", {}),
        ("requests_per_minute", []),
        ("tokens_per_minute", True),
        ("tokens_per_minute", "1000"),
        ("monthly_budget_usd", True),
        ("monthly_budget_usd", "5"),
        ("monthly_budget_usd", -1),
        ("models", "llama*"),
        ("models", [True]),
        ("models", [""]),
        ("request_per_minute", 60),  # a misspelt limit must not make a key without one
    ],
)
def test_invalid_key_settings_are_a_400_naming_the_field(
    server: RunningServer, field: str, value: Any
) -> None:
    admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    answer = admin.post("/admin/keys", json={"name": "new-team", field: value})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == field
    assert field in error["message"]
    keys = admin.get("/admin/keys").json()["data"]
    assert "new-team" not in [key["name"] for key in keys]


def test_valid_key_settings_and_nulls_make_a_key(server: RunningServer) -> None:
    admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    made = admin.post(
        "/admin/keys",
        json={
            "name": "new-team",
            "models": ["llama3*"],
            "requests_per_minute": 60,
            "tokens_per_minute": None,
            "monthly_budget_usd": 2,
        },
    )
    assert made.status_code == 201, made.text
    key = made.json()
    assert (key["requests_per_minute"], key["tokens_per_minute"]) == (60, None)
    assert key["monthly_budget_usd"] == 2.0
    new = sdk(server, key["key"])
    assert [model.id for model in new.models.list()] == ["llama3:latest"]
    new.chat.completions.create(model="llama3:latest", messages=MESSAGES)
    assert get(server, "/v1/stats", key["key"])["requests"] == {"total": 1, "errors": 0}
