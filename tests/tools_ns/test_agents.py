"""Real coding agents, each driving real requests through a real Nexus to a fake vLLM.

Run by ``tests/test_real_tools.py`` in a network namespace with loopback only: a tool that tries
to reach the internet (update checks, telemetry, model price lists) fails at once instead of
leaving this machine. Each tool is pointed at Nexus with its documented variables or flags and
run non-interactively, with a clean environment and its own ``HOME``.

The backend is a vLLM with a 32k context (it refuses a prompt plus ``max_tokens`` over it) whose
chat template refuses a system message that is not first, so what the agents send by default
(``max_tokens`` of 32000, Claude Code's later system messages) would fail without Nexus's help.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus_core.testing import Behaviour, FakeVLLM
from nexus_server.testing import RunningServer, running_server
from tests.conftest import gateway_config
from tests.tools_ns.tools import ROOT, TOOLS, clean_env, missing, run

CONTEXT = 32768
REASONING = "The user wants a short greeting."
ANSWER = "Hello from vllm"


@dataclass
class Stack:
    """Nexus in front of a fake vLLM."""

    server: RunningServer
    vllm: FakeVLLM

    def chats(self) -> list[dict[str, Any]]:
        """The chat requests the backend received."""
        return [
            r.json for r in self.vllm.inference_requests if r.path.endswith("/chat/completions")
        ]


def _need(name: str) -> None:
    reason = missing(name)
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def stack() -> Iterator[Stack]:
    vllm = FakeVLLM(
        "vllm",
        ["fake-model", "embed-model"],
        max_model_len=CONTEXT,
        behaviour=Behaviour(system_first=True),
    )
    with vllm.running():
        backend = {
            "name": "vllm",
            "url": vllm.url,
            "type": "vllm",
            "models": [{"id": "embed-model", "embeddings": True}],
        }
        config = gateway_config(backend)
        config["server"]["first_byte_timeout_seconds"] = 10.0
        with running_server(config) as server:
            yield Stack(server, vllm)


def _one_system_message_first(chat: dict[str, Any]) -> bool:
    roles = [m.get("role") for m in chat["messages"]]
    return "system" not in roles[1:]


def test_llm_with_llm_ollama_through_the_ollama_door(stack: Stack, tmp_path: Path) -> None:
    """simonw's ``llm`` with ``llm-ollama``, ``OLLAMA_HOST`` pointing at Nexus."""
    _need("llm")
    llm = TOOLS["llm"]
    env = clean_env(
        tmp_path / "home", OLLAMA_HOST=stack.server.url, LLM_USER_PATH=str(tmp_path / "llm")
    )
    models = run([llm, "models"], env, tmp_path).stdout
    assert "ollama/fake-model" in models
    # Tools are offered to a model whose tool support is unknown (/api/show lists "tools"):
    # llm-ollama refuses tools for a model that does not list it.
    shout = "def shout(text: str) -> str:\n    return text.upper()\n"
    answer = run(
        [llm, "-m", "ollama/fake-model", "--functions", shout, "Shout hi"], env, tmp_path
    ).stdout
    assert answer.strip() == ANSWER
    sent = stack.chats()[-1]
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["shout"]
    # An embedding model is listed as one ("embedding"), so llm registers it.
    assert "ollama/embed-model" in run([llm, "embed-models"], env, tmp_path).stdout
    vector = json.loads(
        run([llm, "embed", "-m", "ollama/embed-model", "-c", "hello"], env, tmp_path).stdout
    )
    assert len(vector) == stack.vllm.embeddings_dim


def test_aider_through_the_openai_door(stack: Stack, tmp_path: Path) -> None:
    """aider with ``--openai-api-base`` (its documented way to an OpenAI-compatible API)."""
    _need("aider")
    project = tmp_path / "project"
    project.mkdir()
    env = clean_env(
        tmp_path / "home",
        # litellm's model list from the package, not the network.
        LITELLM_LOCAL_MODEL_COST_MAP="True",
    )
    output = run(
        [
            TOOLS["aider"],
            "--model",
            "openai/fake-model",
            "--openai-api-base",
            stack.server.base_url,
            "--openai-api-key",
            "sk-aider",
            "--message",
            "Say hi",
            "--yes-always",
            "--no-git",
            "--no-check-update",
            "--analytics-disable",
            "--no-show-model-warnings",
            "--map-tokens",
            "0",
            "--no-pretty",
            "--no-fancy-input",
        ],
        env,
        project,
    ).stdout
    assert ANSWER in output
    chat = stack.chats()[-1]
    assert chat["stream"] is True
    assert chat["messages"][0]["role"] == "system"


def test_claude_code_through_the_anthropic_door(stack: Stack, tmp_path: Path) -> None:
    """Claude Code's print mode (``-p``), with ``ANTHROPIC_BASE_URL``, ``ANTHROPIC_API_KEY``
    and ``ANTHROPIC_MODEL``; ``ANTHROPIC_DEFAULT_HAIKU_MODEL`` for its small model."""
    _need("claude")
    stack.vllm.behave(Behaviour(system_first=True, reasoning=REASONING))
    project = tmp_path / "project"
    project.mkdir()
    env = clean_env(
        tmp_path / "home",
        ANTHROPIC_BASE_URL=stack.server.url,
        ANTHROPIC_API_KEY="sk-ant-nexus",
        ANTHROPIC_MODEL="fake-model",
        ANTHROPIC_DEFAULT_HAIKU_MODEL="fake-model",
        # No update checks, telemetry or error reports (they would fail here anyway).
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_AUTOUPDATER="1",
    )
    output = run(
        [TOOLS["claude"], "-p", "Say hi", "--output-format", "stream-json", "--verbose"],
        env,
        project,
    ).stdout
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    result = events[-1]
    assert result["type"] == "result"
    assert result["is_error"] is False, result
    assert result["result"] == ANSWER
    chats = stack.chats()
    assert chats
    # Whatever Claude Code sent, the strict template saw one system message, first.
    assert all(_one_system_message_first(chat) for chat in chats)
    # Its max_tokens, over what the 32k context leaves after its long prompt, was clamped.
    assert all(chat["max_tokens"] < CONTEXT for chat in chats)
    blocks = [
        block
        for event in events
        if event.get("type") == "assistant"
        for block in event["message"]["content"]
    ]
    # Claude Code turns adaptive thinking on: the backend's reasoning came back as thinking.
    thinking = [block for block in blocks if block["type"] == "thinking"]
    assert [block["thinking"] for block in thinking] == [REASONING]


def test_opencode_through_the_openai_door(stack: Stack, tmp_path: Path) -> None:
    """opencode's ``run`` with an OpenAI-compatible provider in its project config file."""
    _need("opencode")
    project = tmp_path / "project"
    project.mkdir()
    config = {
        "$schema": "https://opencode.ai/config.json",
        "autoupdate": False,
        "share": "disabled",
        "provider": {
            "nexus": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Nexus",
                "options": {"baseURL": stack.server.base_url, "apiKey": "sk-opencode"},
                "models": {"fake-model": {"name": "Fake model"}},
            }
        },
    }
    (project / "opencode.json").write_text(json.dumps(config), encoding="utf-8")
    env = clean_env(
        tmp_path / "home",
        OPENCODE_DISABLE_AUTOUPDATE="1",
        OPENCODE_DISABLE_MODELS_FETCH="1",
        OPENCODE_DISABLE_LSP_DOWNLOAD="1",
        OPENCODE_DISABLE_SHARE="1",
    )
    output = run([TOOLS["opencode"], "run", "-m", "nexus/fake-model", "Say hi"], env, project)
    assert ANSWER in output.stdout
    chats = stack.chats()
    assert chats
    assert chats[-1]["model"] == "fake-model"
    assert all(_one_system_message_first(chat) for chat in chats)


WEATHER = "It is sunny and 21 degrees in Paris."


def _responses(stack: Stack) -> list[dict[str, Any]]:
    """The requests Nexus's history shows for the Responses door, oldest first."""
    history = httpx.get(stack.server.url + "/v1/history", timeout=10).json()["data"]
    return [entry for entry in reversed(history) if entry.get("front_door") == "responses"]


def test_openai_agents_default_model_through_the_responses_door(
    stack: Stack, tmp_path: Path
) -> None:
    """The openai-agents SDK with its default model class (the Responses API), its default
    client pointed at Nexus, running an agent with one function tool to its final answer."""
    _need("openai-agents")
    call = {
        "id": "call_weather",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    stack.vllm.behave(Behaviour(system_first=True, tool_calls=[call], times=1))
    stack.vllm.behave(Behaviour(system_first=True, content=WEATHER))
    script = ROOT / "tests" / "tools" / "openai-agents" / "run_agent.py"
    output = run(
        [TOOLS["openai-agents"], script, stack.server.base_url, "fake-model"],
        clean_env(tmp_path / "home"),
        tmp_path,
    ).stdout
    result = json.loads(output.strip().splitlines()[-1])
    assert result == {"final": WEATHER, "calls": ["Paris"]}
    # Both turns came through the Responses door; the second carried the tool's output.
    assert len(_responses(stack)) == 2
    second = stack.chats()[-1]
    tool_messages = [m for m in second["messages"] if m.get("role") == "tool"]
    assert [m["tool_call_id"] for m in tool_messages] == ["call_weather"]
    assert "Sunny and 21 degrees in Paris" in tool_messages[0]["content"]


def test_codex_through_the_responses_door(stack: Stack, tmp_path: Path) -> None:
    """The Codex CLI's ``exec`` with a model provider of ``wire_api = "responses"`` in its
    ``config.toml``; its web search (a hosted tool no chat backend runs) turned off."""
    _need("codex")
    stack.vllm.behave(Behaviour(system_first=True, reasoning=REASONING))
    project = tmp_path / "project"
    project.mkdir()
    codex_home = tmp_path / "home" / ".codex"
    codex_home.mkdir(parents=True)
    (codex_home / "config.toml").write_text(
        'model = "fake-model"\n'
        'model_provider = "nexus"\n'
        'web_search = "disabled"\n'
        "[model_providers.nexus]\n"
        'name = "Nexus"\n'
        f'base_url = "{stack.server.base_url}"\n'
        'wire_api = "responses"\n'
        'env_key = "NEXUS_API_KEY"\n',
        encoding="utf-8",
    )
    env = clean_env(tmp_path / "home", CODEX_HOME=str(codex_home), NEXUS_API_KEY="sk-codex")
    output = run([TOOLS["codex"], "exec", "--skip-git-repo-check", "Say hi"], env, project)
    assert ANSWER in output.stdout
    chats = stack.chats()
    assert chats
    # Its developer messages reached the strict template as one system message, first.
    assert all(_one_system_message_first(chat) for chat in chats)
    assert all(chat["stream"] is True for chat in chats)
    # Its namespace of sub-agent tools became plain function tools.
    assert all(tool["type"] == "function" for chat in chats for tool in chat.get("tools", []))
