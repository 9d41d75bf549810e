"""Each distribution works with only what it declares: its own tests run with only it and core.

A package's tests (``packages/<name>/tests``) may import that package, ``nexusgw-core`` (with its
``[testing]`` extra: the fake backends) and the test tools (the Anthropic adapter's also the
``anthropic`` SDK, which reads core's fake as it reads Anthropic), nothing else; tests that need the
server or another adapter live in ``tests/``. Here that is checked the only way that cannot be
fooled by the workspace's own environment: a throw-away virtual environment holding exactly
those distributions, at the lock's versions, runs the package's tests.

``nexusgw-core`` alone (no extras) must import without aiohttp, say which extra is missing when
aiohttp's client or the fakes are asked for, and leave pytest working (its pytest plugin loads
the fakes only when a fixture is used).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scratch_venv import ROOT, ScratchVenv

pytestmark = pytest.mark.slow

#: Adapter packages whose own tests need only the package and core.
ISOLATED = [
    "nexus-backend-vllm",
    "nexus-backend-exo",
    "nexus-backend-lmstudio",
    "nexus-backend-localai",
    "nexus-backend-openai",
    "nexus-backend-ollama",
    "nexus-backend-llamacpp",
    "nexus-backend-anthropic",
]
#: What a package's tests may use besides the package and core.
TEST_TOOLS = ("pytest", "anyio")
#: A package's own test tools beyond those: Anthropic's checks core's fake against the real SDK.
PACKAGE_TEST_TOOLS = {"nexus-backend-anthropic": ("anthropic",)}


def nexus_distributions(venv: ScratchVenv) -> set[str]:
    return {name for name in venv.distributions() if name.startswith("nexusgw-")}


@pytest.mark.parametrize("package", ISOLATED)
def test_a_packages_own_tests_run_with_only_it_and_core(tmp_path: Path, package: str) -> None:
    venv = ScratchVenv(tmp_path / "venv")
    venv.install(
        "-e", str(ROOT / "packages" / "nexus-core") + "[testing]",
        "-e", str(ROOT / "packages" / package),
        *TEST_TOOLS,
        *PACKAGE_TEST_TOOLS.get(package, ()),
    )  # fmt: skip
    distribution = "nexusgw-" + package.removeprefix("nexus-")
    assert nexus_distributions(venv) == {"nexusgw-core", distribution}
    assert venv.python_result("import nexus_server").returncode != 0
    assert venv.python_result("import openai").returncode != 0
    result = venv.pytest(f"packages/{package}/tests")
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    assert " passed" in result.stdout.strip().splitlines()[-1]


def test_core_alone_imports_without_aiohttp_and_names_its_extras(tmp_path: Path) -> None:
    venv = ScratchVenv(tmp_path / "venv")
    venv.install(str(ROOT / "packages" / "nexus-core"), "pytest")
    assert venv.version("aiohttp") is None
    imported = venv.python_result(
        "import sys, nexus_core\n"
        "from nexus_core.http import HttpClients, make_transport\n"
        "print(type(make_transport()).__name__, 'aiohttp' in sys.modules)"
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.split() == ["H1Transport", "False"]

    chosen = venv.python_result(
        "from nexus_core.http import make_transport\nmake_transport('aiohttp')"
    )
    assert chosen.returncode != 0
    assert "UpstreamClientError" in chosen.stderr
    assert "pip install 'nexusgw-core[aiohttp]'" in chosen.stderr

    assert venv.python_result("from nexus_core.testing import free_port").returncode == 0
    fakes = venv.python_result("from nexus_core.testing import FakeBackend")
    assert fakes.returncode != 0
    assert "pip install 'nexusgw-core[testing]'" in fakes.stderr

    # pytest starts, with core's plugin and its fixtures, although the fakes cannot load.
    empty = tmp_path / "empty"
    empty.mkdir()
    listed = venv.pytest("--fixtures", rootdir=empty)
    assert "nexus_http_clients" in listed.stdout, listed.stdout[-3000:] + listed.stderr[-2000:]
    assert "nexus_fake_backend" in listed.stdout
