"""The Python snippets in docs/clients.md run, as written, against Nexus in front of a fake."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from nexus_core.testing import FakeBackend
from nexus_server.testing import running_server
from tests.conftest import gateway_config

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "clients.md"
#: The openai-agents SDK's own environment (scripts/install-agent-tools.sh makes it): it pins
#: versions the workspace does not test with.
AGENTS_PYTHON = ROOT / "tests" / "tools" / "openai-agents" / ".venv" / "bin" / "python"
SNIPPETS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)


def test_the_page_has_a_snippet_per_sdk() -> None:
    assert len(SNIPPETS) == 5
    assert [s.split("\n", 1)[0] for s in SNIPPETS] == [
        "from openai import OpenAI",
        "from openai import OpenAI",
        "import anthropic",
        "import ollama",
        "from agents import Agent, Runner, function_tool, set_default_openai_client, "
        "set_tracing_disabled",
    ]


@pytest.mark.parametrize(
    "snippet", SNIPPETS, ids=["openai", "openai-responses", "anthropic", "ollama", "openai-agents"]
)
def test_snippet_runs(snippet: str) -> None:
    python = sys.executable
    agents = snippet.startswith("from agents ")
    if agents:
        if not AGENTS_PYTHON.exists():
            reason = f"{AGENTS_PYTHON} is missing: scripts/install-agent-tools.sh makes it"
            if os.environ.get("CI"):
                pytest.fail(reason, pytrace=False)
            pytest.skip(reason)
        python = str(AGENTS_PYTHON)
    backend = FakeBackend("local", ["llama3.2"])
    with backend.running(), running_server(gateway_config(backend)) as server:
        code = snippet.replace("http://localhost:8000", server.url)
        result = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
        served = len(backend.inference_requests)
        history = httpx.get(server.url + "/v1/history", timeout=10).json()["data"]
    assert result.returncode == 0, result.stderr
    assert "Hello from local" in result.stdout
    if agents:  # one turn (the fake answers without calling the tool), by the Responses door
        assert served == 1
        assert [entry["front_door"] for entry in history] == ["responses"]
    else:
        assert served >= 2
