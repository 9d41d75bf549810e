"""Two ``nexus serve`` on one machine keep their own state: spend, keys and run-time backends.

Each test gives the processes a state directory of its own (``XDG_STATE_HOME``) and leaves
``[state]`` out of the configuration, so the default file is what is tested.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from nexus_core.state import SqliteStore
from nexus_core.testing import FakeBackend
from nexus_core.testing.net import closed_port_url
from tests.conftest import NEXUS, nexus_serve
from tests.test_serve import nexus_process

pytestmark = pytest.mark.slow


def write_config(path: Path, backend: FakeBackend) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'[[backends]]\nname = "{backend.name}"\nurl = "{backend.url}"\ntype = "generic"\n',
        encoding="utf-8",
    )
    return path


def nexus(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The real ``nexus`` command line with ``env`` and none of the developer's NEXUS_*."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    environment.update(env)
    return subprocess.run(
        [NEXUS, *args], capture_output=True, text=True, timeout=60, env=environment, check=False
    )


def names(url: str) -> list[str]:
    data = httpx.get(url + "/admin/backends", timeout=10).json()["data"]
    return sorted(b["name"] for b in data)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0


def state_file_in(text: str) -> str:
    """The SQLite file a start log line or ``nexus config check`` names."""
    found = re.search(r"in the SQLite file (\S+?)(?=,|\s|$)", text, re.MULTILINE)
    assert found is not None, text
    return found.group(1)


def test_two_instances_keep_their_backends_apart_across_restarts(tmp_path: Path) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    with (
        FakeBackend("one").running() as one,
        FakeBackend("two").running() as two,
        FakeBackend("extra", models=["phi3"]).running() as extra,
    ):
        first = write_config(tmp_path / "first" / "nexus.toml", one)
        second = write_config(tmp_path / "second" / "nexus.toml", two)
        with nexus_serve(first, env=env) as (a, url_a), nexus_serve(second, env=env) as (b, url_b):
            added = nexus("backends", "add", extra.url, "--name", "extra", "--url", url_a, env=env)
            assert added.returncode == 0, added.stderr
            assert names(url_a) == ["extra", "one"]
            assert names(url_b) == ["two"]
            stop(a)
            stop(b)
        log_a = first.with_suffix(".log").read_text()
        log_b = second.with_suffix(".log").read_text()
        # Started again (on other ports): each finds its own backends, and only those.
        with nexus_serve(first, env=env) as (a, url_a), nexus_serve(second, env=env) as (b, url_b):
            assert names(url_a) == ["extra", "one"]
            assert names(url_b) == ["two"]
            stop(a)
            stop(b)
    file_a, file_b = state_file_in(log_a), state_file_in(log_b)
    assert file_a != file_b
    assert Path(file_a).parent == Path(file_b).parent == tmp_path / "xdg" / "nexus"
    # `nexus config check` names the same file as the server's start line.
    checked = nexus("config", "check", str(first), env=env)
    assert checked.returncode == 0, checked.stderr
    assert state_file_in(checked.stdout) == file_a
    assert "this instance's own (configuration file " in checked.stdout


def test_workers_of_one_instance_share_its_file(tmp_path: Path) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    with FakeBackend("one").running() as one, FakeBackend("extra").running() as extra:
        config = write_config(tmp_path / "nexus.toml", one)
        with nexus_serve(config, "--workers", "2", env=env) as (process, url):
            added = nexus("backends", "add", extra.url, "--name", "extra", "--url", url, env=env)
            assert added.returncode == 0, added.stderr
            time.sleep(2.5)  # the workers catch up with each other every 2 s
            # A new connection each time: the kernel hands them to either worker.
            seen = {tuple(names(url)) for _ in range(8)}
            assert seen == {("extra", "one")}
            stop(process)
    log = config.with_suffix(".log").read_text()
    files = {state_file_in(line) for line in log.splitlines() if "in the SQLite file" in line}
    assert len(files) == 1  # both workers named the same file
    databases = [p.name for p in (tmp_path / "xdg" / "nexus").iterdir() if p.suffix == ".sqlite3"]
    assert databases == [Path(files.pop()).name]


def test_without_a_configuration_file_the_port_names_the_file(tmp_path: Path) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path / "xdg"), "NEXUS_LOCAL_OLLAMA_URL": closed_port_url()}
    with nexus_process(tmp_path, env=env) as (process, url):
        port = url.rsplit(":", 1)[1]
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        output = process.stdout.read() if process.stdout else ""
    assert state_file_in(output) == str(tmp_path / "xdg" / "nexus" / f"port-{port}.sqlite3")


def test_the_first_instance_started_keeps_the_file_earlier_versions_shared(
    tmp_path: Path,
) -> None:
    xdg = tmp_path / "xdg"
    env = {"XDG_STATE_HOME": str(xdg)}
    with (
        FakeBackend("one").running() as one,
        FakeBackend("two").running() as two,
        FakeBackend("extra", models=["phi3"]).running() as extra,
    ):
        # What an earlier version left in the one shared file: a backend added at run time.
        saved = json.dumps({"name": "extra", "url": extra.url, "type": "generic"})

        async def leave_old_file() -> None:
            old = SqliteStore(xdg / "nexus" / "state.sqlite3")
            await old.open()
            await old.put("backends", "extra", saved)
            await old.close()

        asyncio.run(leave_old_file())
        first = write_config(tmp_path / "first.toml", one)
        second = write_config(tmp_path / "second.toml", two)
        with nexus_serve(first, env=env) as (a, url_a):
            with nexus_serve(second, env=env) as (b, url_b):
                assert names(url_a) == ["extra", "one"]
                assert names(url_b) == ["two"]
                stop(b)
            stop(a)
        # Restarted, in the other order: the file stays with the instance that took it.
        with nexus_serve(second, env=env) as (b, url_b):
            with nexus_serve(first, env=env) as (a, url_a):
                assert names(url_a) == ["extra", "one"]
                assert names(url_b) == ["two"]
                stop(a)
            stop(b)
    owner = (xdg / "nexus" / "state.sqlite3.owner").read_text()
    assert owner == f"configuration file {first}\n"
    checked = nexus("config", "check", str(first), env=env)
    assert state_file_in(checked.stdout) == str(xdg / "nexus" / "state.sqlite3")
    assert "kept from earlier versions by this instance" in checked.stdout
