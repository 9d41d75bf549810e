#!/usr/bin/env bash
# Install the coding agents that tests/test_real_tools.py drives through a real Nexus:
# - aider and the openai-agents SDK, each in its own locked environment (tests/tools/aider: aider
#   pins exact, older versions of much of what Nexus is tested with; tests/tools/openai-agents: it
#   pins websockets and brings MCP's server stack), so neither changes the workspace's versions;
# - Claude Code, opencode and the Codex CLI from npm, at the exact versions
#   tests/tools/npm/package.json names (each pins its native binary, an optional dependency of
#   the same version), into a cache folder outside the repository that is reused while that file
#   is unchanged.
# Idempotent; chatter goes to stderr and the last line on stdout is the folder of the npm tools'
# executables (what NEXUS_AGENT_TOOLS names; tests/test_real_tools.py also looks in the default
# place).
#
#   NEXUS_AGENT_TOOLS_CACHE  npm tools folder (default ~/.cache/nexus/agent-tools)
set -euo pipefail

cd "$(dirname "$0")/.."
exec 3>&1 1>&2

uv sync --frozen --project tests/tools/aider
uv sync --frozen --project tests/tools/openai-agents

cache="${NEXUS_AGENT_TOOLS_CACHE:-$HOME/.cache/nexus/agent-tools}"
mkdir -p "$cache"
exec 4>"$cache/.lock"
flock 4
runs() {
    "$cache/node_modules/.bin/claude" --version >/dev/null 2>&1 &&
        "$cache/node_modules/.bin/opencode" --version >/dev/null 2>&1 &&
        "$cache/node_modules/.bin/codex" --version >/dev/null 2>&1
}
if ! cmp -s tests/tools/npm/package.json "$cache/package.json" || ! runs; then
    cp tests/tools/npm/package.json "$cache/"
    # The packages' install scripts put each tool's native binary in place. (No lock file: npm
    # records the other platforms' optional binaries unevenly, and `npm ci` then refuses it.)
    npm install --prefix "$cache" --no-audit --no-fund
    runs || { echo "the npm agent tools do not run after installing" >&2; exit 1; }
fi
echo "$cache/node_modules/.bin" >&3
