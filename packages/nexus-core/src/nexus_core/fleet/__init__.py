"""Fleet control: what every backend could serve (``inventory``) and the operations that load,
unload and move models across backends (``operations``). docs/fleet.md describes both."""

from nexus_core.fleet.inventory import FleetInventory, Reading
from nexus_core.fleet.operations import (
    Operation,
    OperationKind,
    Operations,
    OperationState,
    Origin,
)

__all__ = [
    "FleetInventory",
    "Operation",
    "OperationKind",
    "OperationState",
    "Operations",
    "Origin",
    "Reading",
]
