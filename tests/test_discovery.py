"""mDNS discovery end to end, in a private network namespace: no multicast leaves this machine.

The tests are in ``tests/discovery_ns/``; they start real zeroconf responders and browsers. This
module runs them in a child pytest inside ``unshare --net`` (a fresh network namespace with only
a loopback interface, given multicast and a route for it), with ``NEXUS_IN_NETNS=1`` so that their
conftest lets them run. Collected directly, without that variable, they skip, and the root
``conftest.py`` fails any test that starts zeroconf outside such a namespace. Needs Linux, root
(or unprivileged user namespaces) and iproute2; where that is missing the test skips, except
under CI (``CI`` set), where it fails. By hand:

    unshare -n sh -c 'ip link set lo up; ip link set lo multicast on;
        ip route add 224.0.0.0/4 dev lo; NEXUS_IN_NETNS=1 exec uv run pytest tests/discovery_ns'
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns import namespace_prefix, summary_counts

ROOT = Path(__file__).resolve().parents[1]
SUITE = "tests/discovery_ns"
# $1 is ip(8); $0 the Python to run pytest with (passed as arguments: no quoting problems).
NAMESPACE_SCRIPT = (
    '"$1" link set lo up && "$1" link set lo multicast on && '
    '"$1" route add 224.0.0.0/4 dev lo && '
    f'exec "$0" -m pytest {SUITE} -q -p no:cacheprovider'
)


WHAT = "the mDNS tests"


@pytest.mark.slow
def test_discovery_suite_in_a_private_network_namespace() -> None:
    prefix, ip = namespace_prefix(WHAT)
    try:
        result = subprocess.run(
            [*prefix, "sh", "-c", NAMESPACE_SCRIPT, sys.executable, ip],
            cwd=ROOT,
            env={**os.environ, "NEXUS_IN_NETNS": "1"},
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the discovery suite did not finish in {exc.timeout} s:\n{exc.output}")
    output = result.stdout + result.stderr
    counts = summary_counts(output)
    unexpected = {kind: n for kind, n in counts.items() if kind not in ("passed", "warning")}
    if result.returncode != 0 or not counts.get("passed") or unexpected:
        pytest.fail(
            f"the discovery suite in its network namespace exited {result.returncode} "
            f"({counts or 'no summary'}):\n{output}",
            pytrace=False,
        )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("9 passed in 12.30s", {"passed": 9}),
        ("1 failed, 8 passed, 2 warnings in 3.1s", {"failed": 1, "passed": 8, "warning": 2}),
        ("== 3 skipped, 1 error in 0.52s ==", {"skipped": 3, "error": 1}),
        ("no tests ran in 0.01s", {}),
    ],
)
def test_summary_counts(line: str, expected: dict[str, int]) -> None:
    assert summary_counts(f"some output\n{line}\n") == expected
