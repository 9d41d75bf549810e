"""The configuration reference (docs/configuration.md) documents every key of the models.

Convention: each key appears in the reference as its full path in backticks, e.g. `server.port`,
`backends[].api_key_env` (an item of a ``[[table]]`` array) or
`routing.policies[].min_tier` (a key of every item).
"""

from __future__ import annotations

import re
from pathlib import Path

from nexus_core.config import ENV_OVERRIDES
from nexus_core.config.keys import config_key_paths
from nexus_core.config.rust_nexus import UPSTREAM_KEYS

REFERENCE = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def test_key_walk_covers_nested_models() -> None:
    paths = set(config_key_paths())
    assert {
        "server.port",
        "routing.weights.latency",
        "backends[].api_key_env",
        "routing.policies[].min_tier",
        "pricing[].cached_input_per_million",
        "auth.keys[].key_env",
    } <= paths


def test_every_config_key_is_in_the_reference() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    missing = [path for path in config_key_paths() if f"`{path}`" not in text]
    assert not missing, f"add these keys to {REFERENCE.name}: {', '.join(missing)}"


def test_the_reference_names_no_key_that_does_not_exist() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    paths = set(config_key_paths())
    sections = {path.split(".")[0].split("[")[0] for path in paths}
    mentioned = set(re.findall(r"`([a-z_]+(?:\[\])?(?:\.[a-z_<>\[\]]+)+)`", text))
    unknown = [m for m in mentioned if m.split(".")[0].split("[")[0] in sections]
    # The Rust Nexus's keys are named on purpose, in the section that lists them.
    upstream = {entry.path for entry in UPSTREAM_KEYS}
    assert sorted(m for m in unknown if m not in paths | upstream) == []


def test_every_rust_nexus_key_is_in_the_reference() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    section = text.split("## Keys of the Rust Nexus", 1)[1].split("\n## ", 1)[0]
    for entry in UPSTREAM_KEYS:
        shown = f"`[{entry.path}]`" if "." not in entry.path else f"`{entry.path}`"
        assert shown in section, entry.path
        if entry.replacement is not None:
            parent = entry.path.rsplit(".", 1)[0]
            assert f"| `{entry.path}` | `{parent}.{entry.replacement}` |" in section, entry.path


def test_every_environment_variable_is_in_the_reference() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    for variable in [*ENV_OVERRIDES, "NEXUS_CONFIG"]:
        assert f"`{variable}`" in text, variable
