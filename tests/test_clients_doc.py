"""The Python snippets in docs/clients.md run, as written, against Nexus in front of a fake."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from nexus_core.testing import FakeBackend
from nexus_server.testing import running_server
from tests.conftest import gateway_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "clients.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)


def test_the_page_has_a_snippet_per_sdk() -> None:
    assert len(SNIPPETS) == 4
    assert [s.split("\n", 1)[0] for s in SNIPPETS] == [
        "from openai import OpenAI",
        "from openai import OpenAI",
        "import anthropic",
        "import ollama",
    ]


@pytest.mark.parametrize(
    "snippet", SNIPPETS, ids=["openai", "openai-responses", "anthropic", "ollama"]
)
def test_snippet_runs(snippet: str) -> None:
    backend = FakeBackend("local", ["llama3.2"])
    with backend.running(), running_server(gateway_config(backend)) as server:
        code = snippet.replace("http://localhost:8000", server.url)
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        served = len(backend.inference_requests)
    assert result.returncode == 0, result.stderr
    assert "Hello from local" in result.stdout
    assert served >= 2
