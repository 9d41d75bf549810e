"""``nexus_core.anthropic_wire``, split by side: the shared names stay, the moved ones warn.

Crosses packages (core's old module resolves names now in the server and in the anthropic
adapter), so it lives here.
"""

from __future__ import annotations

import pytest

from nexus_backend_anthropic import wire as backend_wire
from nexus_core import anthropic_format, anthropic_wire
from nexus_server import anthropic_wire as front_wire

HOMES = {"nexus_server.anthropic_wire": front_wire, "nexus_backend_anthropic.wire": backend_wire}


def test_the_shared_names_are_core_s_own_without_a_warning() -> None:
    for name in anthropic_wire.__all__:
        assert getattr(anthropic_wire, name) is getattr(anthropic_format, name)


@pytest.mark.parametrize(("old", "home"), sorted(anthropic_wire.MOVED.items()))
def test_a_moved_name_resolves_to_its_new_home_with_a_warning(
    old: str, home: tuple[str, str]
) -> None:
    module, new = home
    with pytest.warns(DeprecationWarning, match=rf"anthropic_wire\.{old} moved to {module}\.{new}"):
        moved = getattr(anthropic_wire, old)
    assert moved is getattr(HOMES[module], new)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        anthropic_wire.no_such_name  # noqa: B018
