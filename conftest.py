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
