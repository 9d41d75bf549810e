"""These tests run real coding agents: only inside the network namespace that
``tests/test_real_tools.py`` makes, where nothing but loopback can be reached.

Collected any other way (a plain ``pytest``), they are skipped.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _only_in_a_private_network_namespace() -> None:
    if os.environ.get("NEXUS_IN_NETNS") != "1":
        pytest.skip(
            "real coding agents: run inside a private network namespace by tests/test_real_tools.py"
        )
