"""Real coding agents through a real Nexus: llm (+ llm-ollama), aider, Claude Code, opencode,
the openai-agents SDK and the Codex CLI.

The tests are in ``tests/tools_ns/``; this module runs each in a child pytest inside
``unshare --net`` (a fresh network namespace with only a loopback interface), with
``NEXUS_IN_NETNS=1`` so that their conftest lets them run: the tools check for updates, send
telemetry and fetch model lists, and there all of that fails at once instead of leaving the
machine. A tool that is not installed (``scripts/install-agent-tools.sh``, which ``.ci/run``
runs) or a machine without network namespaces skips the test, except under CI (``CI`` set),
where it fails. By hand:

    unshare -n sh -c 'ip link set lo up; NEXUS_IN_NETNS=1 exec uv run pytest tests/tools_ns'
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns import cannot, namespace_prefix, summary_counts
from tests.tools_ns.tools import missing

ROOT = Path(__file__).resolve().parents[1]
SUITE = "tests/tools_ns/test_agents.py"
# $1 is ip(8), $2 the test to run; $0 the Python to run pytest with.
NAMESPACE_SCRIPT = '"$1" link set lo up && exec "$0" -m pytest "$2" -q -p no:cacheprovider'
#: Each tool and the test that drives it.
TESTS = {
    "llm": "test_llm_with_llm_ollama_through_the_ollama_door",
    "aider": "test_aider_through_the_openai_door",
    "claude": "test_claude_code_through_the_anthropic_door",
    "opencode": "test_opencode_through_the_openai_door",
    "openai-agents": "test_openai_agents_default_model_through_the_responses_door",
    "codex": "test_codex_through_the_responses_door",
}


WHAT = "the coding-agent test"


@pytest.mark.slow
@pytest.mark.parametrize("tool", list(TESTS))
def test_a_real_coding_agent_through_nexus(tool: str) -> None:
    reason = missing(tool)
    if reason is not None:
        cannot(WHAT, reason)
    prefix, ip = namespace_prefix(WHAT)
    test = f"{SUITE}::{TESTS[tool]}"
    try:
        result = subprocess.run(
            [*prefix, "sh", "-c", NAMESPACE_SCRIPT, sys.executable, ip, test],
            cwd=ROOT,
            env={**os.environ, "NEXUS_IN_NETNS": "1"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{test} did not finish in {exc.timeout} s:\n{exc.output}")
    output = result.stdout + result.stderr
    counts = summary_counts(output)
    if result.returncode != 0 or counts.get("passed") != 1 or len(counts) > 1:
        pytest.fail(
            f"{test} in its network namespace exited {result.returncode} "
            f"({counts or 'no summary'}):\n{output}",
            pytrace=False,
        )
