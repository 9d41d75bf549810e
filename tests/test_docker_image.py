"""The Docker image runs the Rust Nexus's documented command: read from the Dockerfile, statically.

``docker run -p 8000:8000 -v $(pwd)/nexus.toml:/home/nexus/nexus.toml IMAGE serve --config
nexus.toml`` (the Rust Nexus's README and getting-started guide) must work with our image: the
arguments after the image name are a ``nexus`` command line (ENTRYPOINT ``nexus``), and the
relative ``nexus.toml`` is the mounted file (the working directory is ``/home/nexus``). There is no
Docker engine here: this reads the Dockerfile and docs/installation.md. That ``nexus serve -c
nexus.toml`` reads the file in its working directory is run for real in test_rust_nexus_e2e.py.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
INSTALLATION = ROOT / "docs" / "installation.md"
DOCKERIGNORE = ROOT / ".dockerignore"


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions in order, as (KEYWORD, arguments), continuations joined."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def last(keyword: str) -> str:
    """The arguments of the last instruction ``keyword`` (the one in force in the image)."""
    found = [rest for name, rest in instructions() if name == keyword]
    assert found, f"no {keyword} in the Dockerfile"
    return found[-1]


def exec_form(arguments: str) -> list[str]:
    """A JSON-array (exec form) argument list; the shell form would run under /bin/sh -c."""
    value: Any = json.loads(arguments)
    assert isinstance(value, list), arguments
    assert all(isinstance(item, str) for item in value)
    return value


def test_the_entrypoint_is_nexus_and_the_command_serves() -> None:
    assert exec_form(last("ENTRYPOINT")) == ["nexus"]
    command = exec_form(last("CMD"))
    assert command[0] == "serve"
    # Listening on every interface is what makes -p 8000:8000 reach it.
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert "8000" in last("EXPOSE").split()


def test_the_working_directory_is_the_unprivileged_users_home() -> None:
    useradd = next(rest for name, rest in instructions() if name == "RUN" and "useradd" in rest)
    words = shlex.split(useradd)
    home = words[words.index("--home-dir") + 1]
    user = words[-1]
    assert home == "/home/nexus"
    assert last("USER") == user
    assert last("WORKDIR") == home


def documented_runs() -> list[list[str]]:
    """Every ``docker run`` command line of docs/installation.md, as words."""
    text = INSTALLATION.read_text(encoding="utf-8")
    return [shlex.split(line) for line in re.findall(r"^docker run [^\n`]+$", text, re.M)]


def test_the_documented_mount_is_the_file_serve_config_names() -> None:
    workdir = PurePosixPath(last("WORKDIR"))
    runs = documented_runs()
    with_config = [run for run in runs if "--config" in run]
    assert with_config, "docs/installation.md shows no `serve --config` run"
    for run in runs:
        mounts = [run[i + 1] for i, word in enumerate(run) if word == "-v"]
        if not mounts:
            continue
        target = PurePosixPath(mounts[0].split(":")[1])
        # The path the Rust Nexus's README mounts the file at.
        assert target == PurePosixPath("/home/nexus/nexus.toml")
        if "--config" in run:
            named = PurePosixPath(run[run.index("--config") + 1])
            assert workdir / named == target  # the relative name is the mounted file
            image = run.index("nexus", run.index(mounts[0]))
            assert run[image + 1] == "serve"  # arguments after the image: a nexus command
        else:
            assert target == workdir / "nexus.toml"  # found without flags, as ./nexus.toml


def test_a_local_configuration_never_goes_into_the_image() -> None:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    assert "nexus.toml" in {line.strip() for line in lines if not line.startswith("#")}
