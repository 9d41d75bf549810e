"""The ``generic`` backend type: any server speaking the OpenAI wire protocol under ``/v1``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nexus_core.hookspecs import hookimpl
from nexus_core.openai_wire import OpenAIWireAdapter


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register ``generic`` as the plain OpenAI-wire adapter."""
    register("generic", OpenAIWireAdapter)
