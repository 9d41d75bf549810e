"""``nexus models load|unload|migrate`` and ``nexus operations``: the installed command against a
real Nexus in front of two llama-server fakes in router mode."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from nexus_core.testing import FakeLlamaCpp
from nexus_server.testing import RunningServer, running_server
from tests.conftest import NEXUS


def run_nexus(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    """The installed ``nexus`` script, without the developer's NEXUS_* variables."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    return subprocess.run(
        [NEXUS, *args, "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )


@pytest.fixture
def fleet() -> Iterator[tuple[RunningServer, FakeLlamaCpp, FakeLlamaCpp]]:
    a = FakeLlamaCpp("a", ["m", "n"], router=True, load_seconds=0.3)
    b = FakeLlamaCpp("b", ["m"], router=True, load_seconds=0.3)
    with a.running(), b.running():
        config = {
            "discovery": {"enabled": False},
            "health_check": {"interval_seconds": 3600},
            "state": {"backend": "memory"},
            "backends": [
                {"name": fake.name, "url": fake.url, "type": "llamacpp"} for fake in (a, b)
            ],
        }
        with running_server(config) as nexus:
            deadline = time.monotonic() + 10
            while not all(
                entry["checked_at"]
                for entry in httpx.get(nexus.url + "/admin/fleet").json()["data"]
            ):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            yield nexus, a, b


def test_load_migrate_unload_and_list_the_operations(
    fleet: tuple[RunningServer, FakeLlamaCpp, FakeLlamaCpp],
) -> None:
    nexus, a, b = fleet
    loaded = run_nexus("models", "load", "m", "--backend", "a", url=nexus.url)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.startswith("loaded m on a in ")
    # Not a terminal: one progress line per step, each naming the operation.
    progress = loaded.stderr.splitlines()
    assert progress[0].startswith("op_")
    assert " load m on a: " in progress[0]
    assert any(line.endswith("100% succeeded") for line in progress), progress
    assert a.states["m"] == "loaded"

    moved = run_nexus("models", "migrate", "m", "--from", "a", "--to", "b", url=nexus.url)
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.startswith("moved m from a to b in ")
    assert moved.stderr.splitlines()[-1].endswith(" migrate m from a to b: 100% succeeded")
    assert (a.states["m"], b.states["m"]) == ("unloaded", "loaded")

    started = run_nexus("models", "unload", "m", "-b", "b", "--no-wait", "--json", url=nexus.url)
    assert started.returncode == 0, started.stderr
    operation = json.loads(started.stdout)
    assert (operation["kind"], operation["backend"], operation["origin"]) == (
        "unload",
        "b",
        "admin",
    )
    assert operation["state"] in ("pending", "running")

    deadline = time.monotonic() + 10
    while b.states["m"] != "unloaded":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    listed = run_nexus("operations", url=nexus.url)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert rows[0] == [
        "ID",
        "KIND",
        "MODEL",
        "BACKEND",
        "TARGET",
        "STATE",
        "PROGRESS",
        "ORIGIN",
        "STARTED",
    ]
    assert [row[1:8] for row in rows[1:]] == [
        ["unload", "m", "b", "-", "succeeded", "100%", "admin"],
        ["migrate", "m", "a", "b", "succeeded", "100%", "admin"],
        ["load", "m", "a", "-", "succeeded", "100%", "admin"],
    ]
    as_json = json.loads(run_nexus("operations", "--json", url=nexus.url).stdout)
    assert as_json[0]["id"] == operation["id"]
    # The listing of models works as before.
    models = run_nexus("models", url=nexus.url)
    assert models.returncode == 0
    assert models.stdout.splitlines()[0].split()[0] == "MODEL"


def test_a_failed_or_refused_operation_exits_1_with_one_line(
    fleet: tuple[RunningServer, FakeLlamaCpp, FakeLlamaCpp],
) -> None:
    nexus, a, _ = fleet
    a.crash_on_load.add("n")
    failed = run_nexus("models", "load", "n", "--backend", "a", url=nexus.url)
    assert (failed.returncode, failed.stdout) == (1, "")
    last = failed.stderr.splitlines()[-1]
    assert last.startswith("error: load of n on a failed while loading: llama-server could not")

    refused = run_nexus("models", "load", "m", "--backend", "zz", url=nexus.url)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == "error: No backend named 'zz'\n"

    listed = run_nexus("operations", url=nexus.url)
    assert "failed (load_failed)" in listed.stdout
