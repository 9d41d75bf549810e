"""Real ``llama-server`` processes for end-to-end tests: find the binary, start, wait, kill."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from nexus_core.testing import free_port

BINARY_ENV = "NEXUS_LLAMA_SERVER"
# Where scripts/build-llama-server.sh puts it (a symlink into the venv it builds).
LLAMA_VERSION = "11434.0.0"
DEFAULT_CACHE = Path.home() / ".cache" / "nexus" / f"llama-server-{LLAMA_VERSION}"
ALIAS = "tiny"
# Two slots of 512 tokens each: llama-server reports the per-slot context as meta.n_ctx.
CONTEXT = 1024
SLOTS = 2
# One thread each: with several servers on a small, busy CI machine, llama.cpp's spinning worker
# threads starve each other (requests then take seconds instead of milliseconds).
BASE_ARGS = (
    *("-c", str(CONTEXT), "-np", str(SLOTS), "--metrics", "--no-webui", "--alias", ALIAS),
    *("--threads", "1"),
)
EMBEDDING_ARGS = ("--embeddings", "--pooling", "mean")


def find_binary() -> tuple[Path, bool]:
    """The binary (``NEXUS_LLAMA_SERVER``, else the build cache) and whether it was asked for."""
    explicit = os.environ.get(BINARY_ENV)
    if explicit:
        return Path(explicit), True
    cache = os.environ.get("NEXUS_LLAMA_CACHE")
    return (Path(cache) if cache else DEFAULT_CACHE) / "llama-server", False


def binary_problem(binary: Path) -> str | None:
    """Why ``binary`` cannot serve the tests, or None when ``--version`` runs."""
    if not binary.is_file():
        return f"{binary} does not exist"
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, timeout=30, check=False)
    except OSError as exc:
        return f"{binary} cannot run: {exc}"
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace").strip()
        return f"{binary} --version exited {done.returncode}: {output[-500:]}"
    return None


@dataclass
class LlamaServer:
    """One ``llama-server`` process on 127.0.0.1, its output in ``log``."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    _log_file: IO[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        """Its root URL (the OpenAI API is under ``/v1``)."""
        return f"http://127.0.0.1:{self.port}"

    def backend(self, **settings: Any) -> dict[str, Any]:
        """A Nexus ``[[backends]]`` entry for this server."""
        return {"name": self.name, "url": self.url, "type": "llamacpp", **settings}

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Block until ``/health`` answers 200; fail with the server's log if it never does."""
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self} exited early:\n{self.log_tail()}")
                try:
                    if client.get(self.url + "/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.01)
        raise RuntimeError(f"{self} not healthy after {timeout} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL, as a crash would: no graceful shutdown, open connections just drop."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        """Stop it (politely first) and close its log."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log_file.close()

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's output, for failure messages."""
        self._log_file.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


#: The ``launch_llama`` fixture: ``launch_llama(name, *extra_args, wait=True)``.
LaunchLlama = Callable[..., LlamaServer]


def start_llama_server(
    binary: Path, model: Path, name: str, log_dir: Path, *extra_args: str
) -> LlamaServer:
    """Start ``llama-server`` serving ``model`` as ``tiny`` on a free port; does not wait."""
    port = free_port()
    log = log_dir / f"llama-server-{name}.log"
    log_file = log.open("wb")
    command = [
        str(binary),
        *("-m", str(model), "--host", "127.0.0.1", "--port", str(port)),
        *BASE_ARGS,
        *extra_args,
    ]
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    return LlamaServer(name=name, port=port, process=process, log=log, _log_file=log_file)
