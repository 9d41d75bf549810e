"""`nexus serve` raises its own open-file limit, and says what it needs when it cannot.

Each case runs in a child process started with a low limit (``preexec_fn``), so the test's own
process keeps its limits.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX resource limits")

CHILD = """
import json, logging, resource, sys
from nexus_server.serve import connection_cap
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
cap = connection_cap(int(sys.argv[1]))
print(json.dumps({"cap": cap, "limits": resource.getrlimit(resource.RLIMIT_NOFILE)}))
"""


def limited(soft: int, hard: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


def cap_in_child(configured: int, soft: int, hard: int) -> tuple[int, tuple[int, int], str]:
    """``connection_cap(configured)`` in a child that starts with the limit (soft, hard)."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(configured)],
        preexec_fn=limited(soft, hard),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = json.loads(result.stdout)
    return out["cap"], tuple(out["limits"]), result.stderr


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    cap, (soft, hard), log = cap_in_child(1000, 1024, 4096)
    assert (soft, hard) == (4096, 4096)
    assert cap == 1000
    assert "open-file limit raised from 1024 to 4096" in log
    assert "WARNING" not in log


def test_a_hard_limit_too_low_is_raised_when_allowed_or_named_when_not() -> None:
    needed = 2 * 1000 + 256
    cap, (soft, hard), log = cap_in_child(1000, 1024, 1024)
    if hard >= needed:  # a privileged process (CAP_SYS_RESOURCE) may raise its hard limit
        assert soft == hard == needed
        assert cap == 1000
        assert f"open-file limit raised from 1024 to {needed}" in log
        assert "WARNING" not in log
    else:
        assert (soft, hard) == (1024, 1024)
        assert cap == (1024 - 256) // 2
        assert f"raise the hard limit to {needed}" in log
        assert "max_connections = 1000 does not fit the open-file limit of 1024" in log


def test_a_limit_beyond_what_the_kernel_allows_says_what_it_needs() -> None:
    nr_open = Path("/proc/sys/fs/nr_open")
    if not nr_open.exists():
        pytest.skip("needs Linux's fs.nr_open")
    # More than the kernel lets any process open, privileged or not.
    configured = int(nr_open.read_text()) // 2 + 1000
    needed = 2 * configured + 256
    cap, (soft, hard), log = cap_in_child(configured, 1024, 2048)
    assert (soft, hard) == (2048, 2048)
    assert cap == (2048 - 256) // 2
    assert "open-file limit raised from 1024 to 2048" in log
    assert f"the open-file limit is 2048; {needed} are needed" in log
    assert f"ulimit -Hn {needed}" in log
