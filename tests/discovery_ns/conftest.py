"""These tests run real mDNS: only inside the network namespace ``tests/test_discovery.py`` makes.

Collected any other way (a plain ``pytest``), they are skipped: each module skips itself at import
(one line in the summary), and this fixture catches a module that forgets to.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _only_in_a_private_network_namespace() -> None:
    if os.environ.get("NEXUS_IN_NETNS") != "1":
        pytest.skip("real mDNS: run inside a private network namespace by tests/test_discovery.py")
