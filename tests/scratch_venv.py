"""Throw-away virtual environments for tests that install other versions, or fewer packages.

Everything is installed with uv from the lock's versions (``uv export --frozen`` as constraints),
so a scratch environment differs from the workspace only in what a test asks for: another
version of one dependency (``tests/test_dependency_ranges.py``) or only some distributions
(``tests/test_package_isolation.py``). Installing needs uv and, for versions not in uv's cache,
the package index: when either is missing the test is skipped, or fails under ``CI=true``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def unavailable(reason: str) -> None:
    """Skip the test, or fail it in CI, where everything it needs must be there."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI is set: this test must run)", pytrace=False)
    pytest.skip(reason)


def uv_binary() -> str:
    """The uv that runs the test session (``uv run`` sets ``UV``), else the one on PATH."""
    found = os.environ.get("UV") or shutil.which("uv")
    if not found:
        unavailable("uv is not installed")
    assert found is not None
    return found


def _clean_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_"))}
    env.pop("PYTHONPATH", None)
    return env


@functools.cache
def _locked_requirements() -> tuple[str, ...]:
    """The lock's pins for everything (the dev group included), one requirement per line."""
    result = subprocess.run(
        [uv_binary(), "export", "--frozen", "--all-packages", "--no-hashes", "--no-emit-project"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=_clean_environment(),
        check=False,
    )
    if result.returncode != 0:
        unavailable(f"uv export failed: {result.stderr.strip()[-500:]}")
    return tuple(
        line for line in result.stdout.splitlines() if line and not line.lstrip().startswith("#")
    )


def range_of(distribution: str, dependency: str) -> Requirement:
    """How ``distribution`` (a workspace folder, e.g. ``nexus-server``) declares ``dependency``."""
    pyproject = tomllib.loads((ROOT / "packages" / distribution / "pyproject.toml").read_text())
    for line in pyproject["project"]["dependencies"]:
        requirement = Requirement(line)
        if requirement.name == dependency:
            return requirement
    raise AssertionError(f"{distribution} does not depend on {dependency}")


def floor_of(requirement: Requirement) -> Version:
    """The lowest version ``requirement`` allows: its ``>=`` bound."""
    floors = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
    assert floors, f"{requirement} has no floor (>=)"
    return max(floors)


class ScratchVenv:
    """A virtual environment under ``path`` with this session's Python, filled by uv."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.python = path / "bin" / "python"
        self._constraints = path.parent / f"{path.name}-constraints.txt"
        self._run([uv_binary(), "venv", "--quiet", "--python", sys.executable, str(path)])

    def _run(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, env=_clean_environment(), check=False
        )
        if result.returncode != 0:
            unavailable(f"{' '.join(command[:4])}... failed: {result.stderr.strip()[-800:]}")
        return result

    def install_workspace(self) -> None:
        """Everything the workspace has, at the lock's versions (workspace packages editable)."""
        requirements = self.path.parent / f"{self.path.name}-requirements.txt"
        requirements.write_text("\n".join(_locked_requirements()) + "\n")
        self._run([uv_binary(), "pip", "install", "-p", str(self.python), "-r", str(requirements)])

    def install(self, *requirements: str, locked: bool = True) -> None:
        """Install ``requirements``; with ``locked``, anything the lock pins at its version."""
        command = [uv_binary(), "pip", "install", "-p", str(self.python)]
        if locked:
            pins = [line for line in _locked_requirements() if not line.startswith("-e")]
            self._constraints.write_text("\n".join(pins) + "\n")
            command += ["-c", str(self._constraints)]
        self._run([*command, *requirements])

    def version(self, distribution: str) -> Version | None:
        """The installed version of ``distribution``, None when it is not installed."""
        code = (
            "import importlib.metadata as m, sys\n"
            "try: print(m.version(sys.argv[1]))\n"
            "except m.PackageNotFoundError: print('')"
        )
        out = self._run([str(self.python), "-c", code, distribution]).stdout.strip()
        return Version(out) if out else None

    def distributions(self) -> set[str]:
        """The names of every distribution installed."""
        code = (
            "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'])"
        )
        out = self._run([str(self.python), "-c", code]).stdout
        return {line.strip().lower().replace("_", "-") for line in out.splitlines() if line}

    def python_result(self, code: str) -> subprocess.CompletedProcess[str]:
        """Run ``code`` with this environment's Python (failures are the caller's to judge)."""
        return subprocess.run(
            [str(self.python), "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=_clean_environment(),
            check=False,
        )

    def pytest(self, *arguments: str, rootdir: Path = ROOT) -> subprocess.CompletedProcess[str]:
        """Run pytest in this environment (its result is the caller's to judge)."""
        return subprocess.run(
            [str(self.python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *arguments],
            cwd=rootdir,
            capture_output=True,
            text=True,
            env=_clean_environment(),
            timeout=600,
            check=False,
        )
