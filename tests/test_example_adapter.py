"""Third-party proof: examples/nexus-backend-echo, installed like any package, is found by its
entry point alone, shows up in ``nexus plugins``, and answers chat completions.

The example is installed into a temporary directory (not the test environment) and put on the
``PYTHONPATH`` of subprocesses, so the run leaves the environment as it found it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "nexus-backend-echo"
ECHO_ENTRY = {
    "name": "echo",
    "distribution": "nexusgw-backend-echo",
    "version": "0.1.0",
    "module": "nexus_backend_echo",
    "backend_types": ["echo"],
    "error": None,
}
REPORT_SCRIPT = (
    "import dataclasses, json\n"
    "from nexus_core.plugins import plugin_report\n"
    "print(json.dumps([dataclasses.asdict(p) for p in plugin_report()]))\n"
)
CHAT_SCRIPT = """
import asyncio, json
from nexus_core.adapters import BackendError, Endpoint, Timeouts
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.plugins import backend_types

async def main():
    factory = backend_types()["echo"]
    config = BackendConfig(name="e", url="http://127.0.0.1:9", type="echo")
    adapter = factory(config, HttpClients())
    probe = await adapter.probe()
    body = json.dumps({
        "model": "echo",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello there, nexus"}]},
        ],
        "stream_options": {"include_usage": True},
    }).encode()
    whole = await adapter.send(Endpoint.CHAT, body, stream=False, timeouts=Timeouts())
    stream = await adapter.send(Endpoint.CHAT, body, stream=True, timeouts=Timeouts())
    events = [event.decode() async for event in stream.events]
    try:
        await adapter.send(Endpoint.EMBEDDINGS, b"{}", stream=False, timeouts=Timeouts())
        error = None
    except BackendError as exc:
        error = {"status": exc.status, "kind": exc.kind.value, "body": json.loads(exc.body)}
    print(json.dumps({
        "type_name": factory.type_name,
        "status": probe.status.value,
        "models": [model.id for model in probe.models],
        "content_type": whole.content_type,
        "whole": json.loads(whole.body),
        "stream_content_type": stream.content_type,
        "events": events,
        "error": error,
    }))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def echo_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example adapter installed (wheel built by hatchling, offline) into its own directory."""
    uv = shutil.which("uv")
    assert uv is not None, "uv must be on PATH to install the example adapter"
    target = tmp_path_factory.mktemp("echo-site")
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--python",
            sys.executable,
            "--no-deps",
            "--no-build-isolation",
            "--offline",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert any(target.glob("nexusgw_backend_echo-*.dist-info/entry_points.txt"))
    return target


def run_python(args: list[str], site: Path | None) -> str:
    """Run this interpreter with ``site`` (if any) on PYTHONPATH and no plugin variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_installed_example_is_listed_by_nexus_plugins(echo_site: Path) -> None:
    report = json.loads(run_python(["-m", "nexus_server.cli", "plugins", "--json"], echo_site))
    assert ECHO_ENTRY in report
    assert all(entry["error"] is None for entry in report)
    # Without the install, the same command does not know it: the entry point is what found it.
    without = json.loads(run_python(["-m", "nexus_server.cli", "plugins", "--json"], None))
    assert "echo" not in [entry["name"] for entry in without]
    assert len(without) == len(report) - 1


def test_installed_example_is_in_the_library_report(echo_site: Path) -> None:
    report = json.loads(run_python(["-c", REPORT_SCRIPT], echo_site))
    assert ECHO_ENTRY in report


def test_installed_example_answers_chat_completions(echo_site: Path) -> None:
    out: dict[str, Any] = json.loads(run_python(["-c", CHAT_SCRIPT], echo_site))
    assert out["type_name"] == "echo"
    assert (out["status"], out["models"]) == ("healthy", ["echo"])

    whole = out["whole"]
    assert out["content_type"] == "application/json"
    assert whole["object"] == "chat.completion"
    assert whole["model"] == "echo"
    assert whole["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hello there, nexus"},
            "finish_reason": "stop",
        }
    ]
    assert whole["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}

    assert out["stream_content_type"] == "text/event-stream"
    events: list[str] = out["events"]
    assert all(event.startswith("data: ") and event.endswith("\n\n") for event in events)
    assert events[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(event[len("data: ") :]) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(
        chunk["choices"][0]["delta"].get("content", "") for chunk in chunks if chunk["choices"]
    )
    assert text == "hello there, nexus"
    assert len(chunks) > 4  # one event per word, not one blob
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    # include_usage: a last chunk with no choices and the usage; null usage before it.
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == whole["usage"]
    assert all(chunk["usage"] is None for chunk in chunks[:-1])

    assert out["error"] == {
        "status": 404,
        "kind": "client_error",
        "body": {
            "error": {
                "message": "echo does not serve embeddings",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        },
    }


def test_adapter_guide_shows_the_example_verbatim() -> None:
    guide = (EXAMPLE.parents[1] / "docs" / "adapter-authors.md").read_text()
    for path in ("pyproject.toml", "src/nexus_backend_echo/__init__.py"):
        source = (EXAMPLE / path).read_text()
        assert f"\n{source}```\n" in guide, f"docs/adapter-authors.md no longer shows {path}"
