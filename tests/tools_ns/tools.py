"""Where the coding agents the end-to-end tests drive are installed, and how to run one offline.

- ``llm`` (with the ``llm-ollama`` plugin): the workspace's dev dependencies, next to this Python.
- ``aider``: its own locked environment, ``tests/tools/aider/.venv`` (``uv sync --frozen
  --project tests/tools/aider``; aider pins older versions of what Nexus is tested with).
- ``openai-agents``: the SDK's own environment, ``tests/tools/openai-agents/.venv`` (its Python
  runs ``tests/tools/openai-agents/run_agent.py``).
- ``claude`` (Claude Code), ``opencode`` and ``codex`` (the Codex CLI): npm packages at the
  versions of ``tests/tools/npm/package.json``, in ``$NEXUS_AGENT_TOOLS`` or the default cache
  folder.

``scripts/install-agent-tools.sh`` installs all of them but llm; ``.ci/run`` runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NPM_TOOLS = Path(
    os.environ.get("NEXUS_AGENT_TOOLS")
    or Path.home() / ".cache" / "nexus" / "agent-tools" / "node_modules" / ".bin"
)
#: Each tool's executable.
TOOLS = {
    "llm": Path(sys.executable).parent / "llm",
    "aider": ROOT / "tests" / "tools" / "aider" / ".venv" / "bin" / "aider",
    "claude": NPM_TOOLS / "claude",
    "opencode": NPM_TOOLS / "opencode",
    "codex": NPM_TOOLS / "codex",
    "openai-agents": ROOT / "tests" / "tools" / "openai-agents" / ".venv" / "bin" / "python",
}
INSTALL_HINT = "scripts/install-agent-tools.sh (and uv sync for llm) installs it"
#: Longest a tool may take for its one request (they take seconds).
TOOL_TIMEOUT = 60.0


def missing(name: str) -> str | None:
    """Why tool ``name`` cannot run here, or None when its executable is there."""
    path = TOOLS[name]
    if not os.access(path, os.X_OK):
        return f"{name} is not installed at {path}: {INSTALL_HINT}"
    return None


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment with nothing of the caller's but ``PATH``: no keys, no proxies, no
    configuration; ``HOME`` (and the XDG folders) in ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "NO_COLOR": "1",
        "NEXUS_DISCOVERY": "false",
    }
    env.update(extra)
    return env


def run(
    command: list[str | Path], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Run a tool non-interactively (no standard input); fail with its output if it fails."""
    try:
        result = subprocess.run(
            [str(part) for part in command],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"{command[0]} did not finish in {exc.timeout} s\nstdout: {exc.stdout!r}\n"
            f"stderr: {exc.stderr!r}"
        ) from None
    if result.returncode != 0:
        raise AssertionError(
            f"{command[0]} exited {result.returncode}\nstdout: {result.stdout}\n"
            f"stderr: {result.stderr}"
        )
    return result
