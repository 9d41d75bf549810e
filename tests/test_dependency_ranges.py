"""Dependencies on other projects' internals work at both ends of their declared range.

``nexus_server.protocol`` subclasses uvicorn's ``HttpToolsProtocol`` and uses its private
attributes, so ``nexusgw-server`` pins uvicorn to the minor versions it is tested with. These tests
build a throw-away environment holding the workspace at the lock's versions, swap in one other
version of the dependency, and run the tests of the code that depends on it there:

- uvicorn at the range's floor, and at the newest release on the package index (even one the
  range does not allow yet: when it passes, the range can be widened; when it fails, the pin is
  what keeps users off it, and this test says what broke);
- cyclopts at the range's floor (``App.generate_completion`` and ``result_action`` are from 4.0).

The lock's own versions are the top of each range and are what the rest of the suite runs on.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from packaging.version import Version

from tests.scratch_venv import ROOT, ScratchVenv, floor_of, range_of, unavailable, uv_binary

pytestmark = pytest.mark.slow

#: The tests that exercise the protocol's use of uvicorn's internals: one write per answer and
#: the disconnect callback (test_protocol), and every bounded read, cap and error answer of a real
#: ``nexus serve`` (test_hostile_clients; its two tests that only wait out longer timeouts with
#: more connections are left to the main run).
PROTOCOL_TESTS = (
    "packages/nexus-server/tests/test_protocol.py",
    "tests/test_hostile_clients.py",
    "-k",
    "not thousands_of_idle and not cut_after_the_header_timeout",
)
CLI_TESTS = ("packages/nexus-server/tests/test_cli.py",)


def passed(result: subprocess.CompletedProcess[str]) -> int:
    """How many tests pytest's summary line says passed (0 when none did)."""
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    words = summary.replace(",", " ").split()
    return int(words[words.index("passed") - 1]) if "passed" in words else 0


def workspace_with(tmp_path: Path, requirement: str) -> ScratchVenv:
    venv = ScratchVenv(tmp_path / "venv")
    venv.install_workspace()
    venv.install(requirement, locked=False)
    return venv


def newest_release(name: str) -> Version:
    """The newest release of ``name`` on the package index that this Python can install."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    command = [uv_binary(), "pip", "compile", "-", "--no-header", "--no-annotate"]
    result = subprocess.run(
        [*command, "--refresh-package", name, "--python-version", python],
        input=f"{name}\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if result.returncode != 0:
        unavailable(f"cannot ask the package index for {name}: {result.stderr.strip()[-500:]}")
    for line in result.stdout.splitlines():
        if line.lower().startswith(f"{name}=="):
            return Version(line.split("==", 1)[1])
    raise AssertionError(f"uv pip compile did not pin {name}: {result.stdout}")


def run_in(venv: ScratchVenv, name: str, version: Version, tests: tuple[str, ...]) -> None:
    assert venv.version(name) == version, f"{name} {version} was asked for"
    result = venv.pytest(*tests)
    assert result.returncode == 0, (
        f"with {name} {version}:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    )
    assert passed(result) >= 5, result.stdout[-2000:]


def test_the_protocol_works_with_the_floor_of_uvicorns_range(tmp_path: Path) -> None:
    floor = floor_of(range_of("nexus-server", "uvicorn"))
    venv = workspace_with(tmp_path, f"uvicorn=={floor}")
    run_in(venv, "uvicorn", floor, PROTOCOL_TESTS)


def test_the_protocol_works_with_the_newest_uvicorn(tmp_path: Path) -> None:
    newest = newest_release("uvicorn")
    venv = workspace_with(tmp_path, f"uvicorn=={newest}")
    run_in(venv, "uvicorn", newest, PROTOCOL_TESTS)
    declared = range_of("nexus-server", "uvicorn")
    if newest not in declared.specifier:
        warnings.warn(
            f"uvicorn {newest} passes the protocol's tests but {declared} excludes it: widen the "
            "range in packages/nexus-server/pyproject.toml and `uv lock --upgrade-package uvicorn`",
            stacklevel=1,
        )


def test_the_cli_works_with_the_floor_of_cyclopts_range(tmp_path: Path) -> None:
    floor = floor_of(range_of("nexus-server", "cyclopts"))
    venv = workspace_with(tmp_path, f"cyclopts=={floor}")
    run_in(venv, "cyclopts", floor, CLI_TESTS)


def test_the_ranges_hold_the_locked_versions() -> None:
    """The rest of the suite runs on the lock's versions: they must be inside the ranges."""
    import importlib.metadata

    for dependency in ("uvicorn", "cyclopts"):
        declared = range_of("nexus-server", dependency)
        installed = Version(importlib.metadata.version(dependency))
        assert installed in declared.specifier, (dependency, str(installed), str(declared))
        assert floor_of(declared) <= installed
