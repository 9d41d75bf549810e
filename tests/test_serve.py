"""`nexus serve` as a process: zero-config start, and SIGTERM draining in-flight streams."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from nexus_core.testing import Behaviour, FakeBackend, free_port
from nexus_core.testing.net import closed_port_url


@contextmanager
def nexus_process(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``nexus serve`` in ``cwd`` on a free port, output (stdout and stderr) on a pipe."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    environment.update({"NEXUS_DISCOVERY": "false", **(env or {})})
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "nexus_server.cli", "serve", "--host", "127.0.0.1"),
            *("--port", str(port), *args),
        ],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "nexus serve did not start"
                time.sleep(0.05)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_serve_with_no_config_answers_health_and_models(tmp_path: Path) -> None:
    # Nothing listens where it looks for a local Ollama (whatever runs on this machine's 11434).
    nowhere = {"NEXUS_LOCAL_OLLAMA_URL": closed_port_url()}
    with nexus_process(tmp_path, env=nowhere) as (process, url):
        health = httpx.get(url + "/health")
        models = httpx.get(url + "/v1/models")
        ready = httpx.get(url + "/health/ready")
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        output = process.stdout.read() if process.stdout else ""
    assert health.status_code == 200
    assert health.json()["backends"]["total"] == 0  # no Ollama answered: no backend
    assert models.json() == {"object": "list", "data": []}
    assert ready.status_code == 503
    assert code == 0
    assert f"listening on http://127.0.0.1:{url.rsplit(':', 1)[1]}" in output
    assert f"no local Ollama at {nowhere['NEXUS_LOCAL_OLLAMA_URL']}" in output


@pytest.mark.slow
def test_serve_with_no_config_looks_for_ollama_on_its_default_port(tmp_path: Path) -> None:
    with nexus_process(tmp_path) as (process, url):
        assert httpx.get(url + "/health").status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        output = process.stdout.read() if process.stdout else ""
    # Found or not (a developer's machine may run one), the log names where it looked.
    assert "local Ollama at http://localhost:11434" in output


@pytest.mark.slow
def test_sigterm_lets_an_open_stream_finish(tmp_path: Path) -> None:
    with FakeBackend("slow").running() as backend:
        backend.behave(Behaviour(delay_between_events=0.3))
        config = tmp_path / "nexus.toml"
        config.write_text(f'[[backends]]\nname = "slow"\nurl = "{backend.url}"\n')
        with nexus_process(tmp_path, "--config", str(config)) as (process, url):
            body: list[bytes] = []
            first = threading.Event()

            def consume() -> None:
                payload = {"model": "fake-model", "messages": [], "stream": True}
                with httpx.stream("POST", url + "/v1/chat/completions", json=payload) as reply:
                    for chunk in reply.iter_raw():
                        body.append(chunk)
                        first.set()

            reader = threading.Thread(target=consume)
            reader.start()
            assert first.wait(10)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(httpx.TransportError):
                httpx.get(url + "/health", timeout=2)  # no new requests while draining
            reader.join(timeout=20)
            code = process.wait(timeout=30)
    assert code == 0
    streamed = b"".join(body)
    assert streamed.endswith(b"data: [DONE]\n\n")
    events = [json.loads(line[6:]) for line in streamed.split(b"\n") if line.startswith(b"data: {")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == "Hello from slow"
