"""Third-party proof: examples/nexus-backend-llamacpppython, installed like any package, passes its
own test suite (the adapter contract included), is found by its entry point alone, shows up in
``nexus plugins``, and carries requests through a running Nexus configured by a nexus.toml.

The example is installed into a temporary directory (not the test environment) and put on the
``PYTHONPATH`` of subprocesses, so the run leaves the environment as it found it. The root pytest
configuration does not collect ``examples/``: this file is how CI runs the example's own tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from nexus_core.testing.contract import AdapterContract

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "nexus-backend-llamacpppython"
ENTRY = {
    "name": "llamacpppython",
    "distribution": "nexusgw-backend-llamacpppython",
    "version": "0.1.0",
    "module": "nexus_backend_llamacpppython",
    "backend_types": ["llamacpppython"],
    "error": None,
}
REPORT_SCRIPT = """
import dataclasses, json
import nexus_backend_llamacpppython
from nexus_core.plugins import plugin_report
report = [dataclasses.asdict(p) for p in plugin_report()]
print(json.dumps({"report": report, "file": nexus_backend_llamacpppython.__file__}))
"""
# One backend typed explicitly, one left to auto-detection.
NEXUS_TOML = """
[discovery]
enabled = false

[health_check]
interval_seconds = 3600

[[backends]]
name = "laptop"
url = "LAPTOP_URL"
type = "llamacpppython"
max_concurrent = 1

[[backends]]
name = "desktop"
url = "DESKTOP_URL"
"""
ROUTE_SCRIPT = """
import json, sys, tomllib
import httpx, openai
from nexus_backend_llamacpppython.testing import FakeLlamaCppPython
from nexus_server.testing import running_server

hello = [{"role": "user", "content": "Hi"}]
with (
    FakeLlamaCppPython("laptop", ["tiny"]).running() as laptop,
    FakeLlamaCppPython("desktop", ["small"]).running() as desktop,
):
    toml = sys.argv[1].replace("LAPTOP_URL", laptop.url).replace("DESKTOP_URL", desktop.url)
    with running_server(tomllib.loads(toml)) as server:
        types = {b.name: [b.type_name, type(b.adapter).__name__] for b in server.gateway.registry}
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="tiny", messages=hello)
        stream = client.chat.completions.create(
            model="small", messages=hello, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk.model_dump() for chunk in stream]
        too_long = httpx.post(
            server.base_url + "/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "word " * 600}]},
        )
    print(json.dumps({
        "types": types,
        "backend": raw.headers["x-nexus-backend"],
        "answer": raw.parse().choices[0].message.content,
        "chunks": chunks,
        "too_long": [too_long.status_code, too_long.headers["x-nexus-backend"], too_long.json()],
        "received": [len(laptop.inference_requests), len(desktop.inference_requests)],
    }))
"""


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example installed (wheel built by hatchling, offline) into a directory of its own."""
    uv = shutil.which("uv")
    assert uv is not None, "uv must be on PATH to install the example adapter"
    target = tmp_path_factory.mktemp("example-site")
    subprocess.run(
        [
            *(uv, "pip", "install", "--python", sys.executable),
            *("--no-deps", "--no-build-isolation", "--offline", "--target", str(target)),
            str(EXAMPLE),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert any(target.glob("nexusgw_backend_llamacpppython-*.dist-info/entry_points.txt"))
    return target


def run_python(
    args: list[str], site: Path | None, *, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run this interpreter with ``site`` (if any) on PYTHONPATH and no ``NEXUS_*`` variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # leave no __pycache__ in examples/
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def checked(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_installed_example_passes_its_own_tests(example_site: Path, tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    command = ["-m", "pytest", str(EXAMPLE / "tests"), "-q", "-p", "no:cacheprovider"]
    result = run_python([*command, f"--junitxml={junit}"], example_site, cwd=EXAMPLE, timeout=300)
    output = checked(result)
    summary = output.strip().splitlines()[-1]
    counts = {word: int(number) for number, word in re.findall(r"(\d+) (\w+)", summary)}
    assert set(counts) <= {"passed", "warning", "warnings"}, summary
    # Every contract test ran and passed in both contract classes, with the example's own tests.
    ran = {
        (case.get("classname", "").rsplit(".", 1)[-1], case.get("name", "").split("[")[0])
        for case in ET.parse(junit).getroot().iter("testcase")
    }
    contract = {name for name in dir(AdapterContract) if name.startswith("test_contract_")}
    for suite in ("TestContract", "TestContractWithApiKey"):
        assert {(suite, name) for name in contract} <= ran
    own = {name for suite, name in ran if suite == "test_llamacpppython"}
    assert len(own) >= 5, own
    assert counts["passed"] == len(list(ET.parse(junit).getroot().iter("testcase")))


def test_installed_example_is_listed_by_nexus_plugins(example_site: Path) -> None:
    command = ["-m", "nexus_server.cli", "plugins", "--json"]
    report = json.loads(checked(run_python(command, example_site)))
    assert ENTRY in report
    assert all(entry["error"] is None for entry in report)
    # Without the install, the same command does not know it: the entry point is what found it.
    without = json.loads(checked(run_python(command, None)))
    assert "llamacpppython" not in [entry["name"] for entry in without]
    assert len(without) == len(report) - 1


def test_installed_example_is_in_the_library_report(example_site: Path) -> None:
    out = json.loads(checked(run_python(["-c", REPORT_SCRIPT], example_site)))
    assert ENTRY in out["report"]
    assert Path(out["file"]).is_relative_to(example_site)  # the install, not examples/.../src


def test_nexus_toml_naming_the_type_is_accepted_only_when_installed(
    example_site: Path, tmp_path: Path
) -> None:
    config = tmp_path / "nexus.toml"
    config.write_text(
        NEXUS_TOML.replace("LAPTOP_URL", "http://127.0.0.1:8000").replace(
            "DESKTOP_URL", "http://127.0.0.1:8001"
        )
    )
    command = ["-m", "nexus_server.cli", "config", "check", str(config)]
    checked(run_python(command, example_site))
    refused = run_python(command, None)
    assert refused.returncode == 1
    assert "unknown backend type 'llamacpppython'" in refused.stderr


def test_installed_example_routes_requests_through_nexus(example_site: Path) -> None:
    result = run_python(["-c", ROUTE_SCRIPT, NEXUS_TOML], example_site, timeout=120)
    out: dict[str, Any] = json.loads(checked(result))
    assert out["types"] == {
        "laptop": ["llamacpppython", "LlamaCppPythonAdapter"],
        "desktop": ["llamacpppython", "LlamaCppPythonAdapter"],  # auto-detected
    }
    assert (out["backend"], out["answer"]) == ("laptop", "Hello from laptop")

    chunks: list[dict[str, Any]] = out["chunks"]
    text = "".join(chunk["choices"][0]["delta"]["content"] or "" for chunk in chunks)
    assert text == "Hello from desktop"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # The server ignores include_usage and Nexus invents nothing: no usage chunk.
    assert all(chunk["choices"] and chunk["usage"] is None for chunk in chunks)

    status, backend, body = out["too_long"]
    assert (status, backend) == (400, "laptop")
    assert body["error"]["code"] == "context_length_exceeded"
    assert out["received"] == [2, 1]


def test_writing_adapters_guide_shows_the_example_verbatim() -> None:
    guide = (ROOT / "docs" / "writing-adapters.md").read_text(encoding="utf-8")
    for path in (
        "pyproject.toml",
        "src/nexus_backend_llamacpppython/__init__.py",
        "src/nexus_backend_llamacpppython/testing.py",
        "tests/test_llamacpppython.py",
    ):
        source = (EXAMPLE / path).read_text(encoding="utf-8")
        assert f"\n{source}```\n" in guide, f"docs/writing-adapters.md no longer shows {path}"
