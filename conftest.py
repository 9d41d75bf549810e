"""Guards for the whole test run (every distribution's tests and ``tests/``).

mDNS is multicast: a test must never send it on this machine's real network. Zeroconf may only
start in a network namespace whose interfaces are loopback (``tests/test_discovery.py`` runs the
discovery tests in one); anywhere else, creating a ``Zeroconf`` fails the test before a socket
is opened.
"""

from __future__ import annotations

import os
import socket
import tempfile
from typing import Any

import pytest
import zeroconf

# Besides lo, a fresh network namespace may hold the kernel's fallback tunnel devices, which are
# down and have no address.
_LOOPBACK_ONLY = {"lo", "tunl0", "sit0", "ip6tnl0", "ip_vti0", "ip6_vti0", "gre0", "gretap0"}
_zeroconf_init = zeroconf.Zeroconf.__init__


def _guarded_init(self: zeroconf.Zeroconf, *args: Any, **kwargs: Any) -> None:
    outside = {name for _, name in socket.if_nameindex()} - _LOOPBACK_ONLY
    if outside:
        pytest.fail(
            f"a test started mDNS (zeroconf) where it would reach {', '.join(sorted(outside))}; "
            "tests may only do that in a loopback-only network namespace (tests/test_discovery.py)",
            pytrace=True,
        )
    _zeroconf_init(self, *args, **kwargs)


zeroconf.Zeroconf.__init__ = _guarded_init  # type: ignore[method-assign]


# Durable state (the budget's SQLite file) of every gateway a test starts without a [state]
# section goes to a throw-away directory, never into the user's real one.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="nexus-test-state-")


# The whole suite (no path named, so pytest's `testpaths`: the README's command) runs on WORKERS
# pytest-xdist processes: most of its time is spent waiting on sockets, servers and child
# processes, not computing. `--dist worksteal` balances tests of very different lengths (a
# scratch virtual environment, a coding agent) by moving not-yet-started tests from a busy worker
# to an idle one. Naming files or folders runs them in this one process as before, and so does
# every child pytest a test starts; `-n N` or `-p no:xdist` choose otherwise (docs/testing.md).
WORKERS = 2


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Spread a run of the whole suite over WORKERS xdist workers."""
    if hasattr(config, "workerinput") or not config.pluginmanager.hasplugin("xdist"):
        return
    if config.option.numprocesses is None:
        if config.getoption("usepdb"):
            return
        if config.args_source is not pytest.Config.ArgsSource.TESTPATHS:
            return
        config.option.numprocesses = WORKERS
    if config.option.dist == "no":  # `-n N` alone balances the same way
        config.option.dist = "worksteal"
