"""Routing: what a request needs, which backends can take it, and in what order to try them.

- ``analysis``: ``analyze`` reads a request once into ``RequestNeeds``; ``missing`` is the one
  capability check (does a model have what the request needs).
- ``body``: edits of the raw body on its way to a backend (``replace_model``, ...).
- ``policies``: ``[[routing.policies]]`` compiled, combined into a ``Constraint``.
- ``strategies``: how eligible backends are ordered; ``STRATEGIES`` names them.
- ``router``: ``Router``: eligibility, the plan of attempts, the refusal when nothing fits.

Everything ``nexus_core.routing`` exported before it became a package is still imported from here.
"""

from nexus_core.routing.analysis import (
    CAPABILITIES,
    CHARS_PER_TOKEN,
    RequestNeeds,
    analyze,
    missing,
    missing_reason,
    prefix_key,
)
from nexus_core.routing.body import replace_model, with_include_usage
from nexus_core.routing.policies import CompiledPolicy, Constraint
from nexus_core.routing.router import PERMANENT_REASONS, Route, Router
from nexus_core.routing.strategies import (
    STRATEGIES,
    CacheAffinityStrategy,
    LeastLoadedStrategy,
    PriorityStrategy,
    RandomStrategy,
    RoundRobinStrategy,
    SmartStrategy,
    Strategy,
    StrategyFactory,
    builtin_strategies,
    load_ratio,
)

__all__ = [
    "CAPABILITIES",
    "CHARS_PER_TOKEN",
    "PERMANENT_REASONS",
    "STRATEGIES",
    "CacheAffinityStrategy",
    "CompiledPolicy",
    "Constraint",
    "LeastLoadedStrategy",
    "PriorityStrategy",
    "RandomStrategy",
    "RequestNeeds",
    "RoundRobinStrategy",
    "Route",
    "Router",
    "SmartStrategy",
    "Strategy",
    "StrategyFactory",
    "analyze",
    "builtin_strategies",
    "load_ratio",
    "missing",
    "missing_reason",
    "prefix_key",
    "replace_model",
    "with_include_usage",
]
