"""Running a test suite in a fresh network namespace that has only a loopback interface.

What ``tests/test_discovery.py`` (real mDNS) and ``tests/test_real_tools.py`` (real coding agents)
share: they must never reach beyond this machine, and under CI they fail rather than skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from typing import NoReturn

import pytest


def cannot(what: str, reason: str) -> NoReturn:
    """Skip on a developer's machine; under CI, fail: CI must never pass by skipping these."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def namespace_prefix(what: str) -> tuple[list[str], str]:
    """``unshare`` with its flags, and the path of ``ip``; ``what`` names the tests in the
    failure or skip message when there is no namespace to be had."""
    unshare = shutil.which("unshare")
    ip = shutil.which(
        "ip", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    )
    if not sys.platform.startswith("linux") or unshare is None or ip is None:
        cannot(what, "needs Linux with unshare (util-linux) and ip (iproute2)")
    prefix = [unshare, "--net"] if os.geteuid() == 0 else [unshare, "--net", "--map-root-user"]
    probe = subprocess.run(
        [*prefix, ip, "link", "set", "lo", "up"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        cannot(what, f"cannot make a network namespace here: {probe.stderr.strip()}")
    return prefix, ip


def summary_counts(output: str) -> dict[str, int]:
    """``{"passed": 9, "failed": 1}`` from pytest's last summary line."""
    lines = [line for line in output.splitlines() if re.search(r"\bin [\d.]+s\b", line)]
    if not lines:
        return {}
    found = re.findall(
        r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|warnings?)", lines[-1]
    )
    return {
        kind.rstrip("s") if kind in ("errors", "warnings") else kind: int(n) for n, kind in found
    }
