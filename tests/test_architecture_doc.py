"""docs/architecture.md names every module of core and the server, and only modules that exist.

A newcomer finds where a change goes from that page: a module missing from it, or a row naming a
file that moved, makes it lie.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = {
    "nexus_core": ROOT / "packages" / "nexus-core" / "src" / "nexus_core",
    "nexus_server": ROOT / "packages" / "nexus-server" / "src" / "nexus_server",
}
#: Not modules with a job of their own.
IGNORED = {"__init__.py", "py.typed", "__pycache__", "default_plugins", "static"}


def section(package: str) -> str:
    """The text of the doc's "`<package>`, module by module" table."""
    text = DOC.read_text()
    start = text.index(f"## `{package}`, module by module")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def named(package: str) -> set[str]:
    """Every `file.py` or `folder/` the package's table names in its first column, and every
    `folder/file.py` or `file.py` of a folder row's text."""
    names: set[str] = set()
    for line in section(package).splitlines():
        if not line.startswith("| `"):
            continue
        first, rest = line.split("|")[1], "|".join(line.split("|")[2:])
        for name in re.findall(r"`([a-z0-9_]+(?:\.py|/))`", first):
            names.add(name)
            if name.endswith("/"):  # a package: the modules its row names
                for inner in re.findall(r"`([a-z0-9_]+\.py)`", rest):
                    names.add(name + inner)
    return names


def existing(package: str) -> set[str]:
    """The package's modules and folders, as the table names them."""
    root = PACKAGES[package]
    found: set[str] = set()
    for path in root.iterdir():
        if path.name in IGNORED or path.name.startswith("."):
            continue
        if path.is_dir():
            found.add(path.name + "/")
            for inner in path.glob("*.py"):
                if inner.name != "__init__.py":
                    found.add(f"{path.name}/{inner.name}")
        elif path.suffix == ".py":
            found.add(path.name)
    return found


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_module_is_in_the_architecture_page(package: str) -> None:
    missing = existing(package) - named(package)
    # A folder's modules may be named in its row or not at all (testing/ has one per fake):
    # only folders whose row names some of its modules must name all of them.
    rows = named(package)
    missing = {
        name
        for name in missing
        if "/" not in name.rstrip("/")
        or name.endswith("/")
        or any(
            other.startswith(name.split("/")[0] + "/") and other != name.split("/")[0] + "/"
            for other in rows
        )
    }
    assert not missing, f"docs/architecture.md does not name: {sorted(missing)}"


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_the_architecture_page_names_only_modules_that_exist(package: str) -> None:
    gone = named(package) - existing(package)
    assert not gone, f"docs/architecture.md names what {package} does not have: {sorted(gone)}"
