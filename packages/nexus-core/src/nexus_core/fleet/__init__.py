"""Fleet control: what every backend could serve (``inventory``), the operations that load,
unload and move models across backends (``operations``), and pre-warming: the requests per model
over time (``demand``) and the planner that keeps the models in demand loaded (``prewarm``).
docs/fleet.md describes them."""

from nexus_core.fleet.demand import DemandLog, ModelDemand
from nexus_core.fleet.inventory import FleetInventory, Reading
from nexus_core.fleet.operations import (
    Operation,
    OperationKind,
    Operations,
    OperationState,
    Origin,
)
from nexus_core.fleet.prewarm import Prewarmer

__all__ = [
    "DemandLog",
    "FleetInventory",
    "ModelDemand",
    "Operation",
    "OperationKind",
    "OperationState",
    "Operations",
    "Origin",
    "Prewarmer",
    "Reading",
]
