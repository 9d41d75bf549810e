"""Fixtures for the tests against real ``llama-server`` processes and a generated tiny model.

The binary comes from ``scripts/build-llama-server.sh`` (``NEXUS_LLAMA_SERVER``, else the build
cache). Without it these tests skip on a developer machine and fail in CI (``CI`` set) or when
``NEXUS_LLAMA_SERVER`` names a binary that does not run: CI must never pass by skipping them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.real.llama_server import (
    BINARY_ENV,
    LaunchLlama,
    LlamaServer,
    binary_problem,
    find_binary,
    start_llama_server,
)


def unavailable(reason: str, *, required: bool) -> NoReturn:
    """Fail when the real server is required here, else skip with the reason."""
    if required or os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def llama_server_binary() -> Path:
    """The ``llama-server`` binary, checked to run."""
    binary, explicit = find_binary()
    problem = binary_problem(binary)
    if problem is not None:
        source = f"{BINARY_ENV}={binary}" if explicit else f"no {BINARY_ENV}; default {binary}"
        unavailable(
            f"real llama-server unavailable ({source}): {problem}. "
            f"Build it with scripts/build-llama-server.sh and export {BINARY_ENV}=<its last line>.",
            required=explicit,
        )
    return binary


@pytest.fixture(scope="session")
def tiny_model(llama_server_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight GGUF, generated once per session."""
    try:
        from tests.real.tiny_model import find_vocab, write_tiny_model
    except ImportError as exc:
        unavailable(
            f"cannot generate the tiny model: {exc} (the gguf and numpy packages are needed)",
            required=bool(os.environ.get(BINARY_ENV)),
        )
    try:
        vocab = find_vocab(llama_server_binary)
    except FileNotFoundError as exc:
        unavailable(str(exc), required=bool(os.environ.get(BINARY_ENV)))
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.gguf", vocab)


@pytest.fixture
def launch_llama(
    llama_server_binary: Path, tiny_model: Path, tmp_path: Path
) -> Iterator[LaunchLlama]:
    """``launch_llama(name, *extra_args, wait=True)`` starts a server; all stop after the test."""
    servers: list[LlamaServer] = []

    def launch(name: str, *extra_args: str, wait: bool = True) -> LlamaServer:
        server = start_llama_server(llama_server_binary, tiny_model, name, tmp_path, *extra_args)
        servers.append(server)
        if wait:
            server.wait_healthy()
        return server

    yield launch
    for server in servers:
        server.stop()
