"""Routing policies (``[[routing.policies]]``): compiled once, combined into one ``Constraint``.

A policy keeps a model's requests off some backends (``privacy = "restricted"``: no backend in the
open zone; ``min_tier``: none below that tier). ``Router.eligible`` applies the ``Constraint``;
the reasons built here explain an exclusion (both are permanent: see ``PERMANENT_REASONS``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from nexus_core.config import PolicyConfig, PolicyPrivacy
from nexus_core.registry import Backend

__all__ = ["CompiledPolicy", "Constraint", "constraint_for", "first_match"]


@dataclass(slots=True, frozen=True)
class CompiledPolicy:
    """One ``[[routing.policies]]`` entry, its glob compiled once."""

    pattern: str
    match: Callable[[str], re.Match[str] | None]
    restricted: bool
    min_tier: int | None

    @classmethod
    def compile(cls, config: PolicyConfig) -> CompiledPolicy:
        """Compile the (already validated) glob; matching is case-sensitive, like model ids."""
        return cls(
            pattern=config.model_pattern,
            match=re.compile(fnmatch.translate(config.model_pattern)).match,
            restricted=config.privacy is PolicyPrivacy.RESTRICTED,
            min_tier=config.min_tier,
        )


@dataclass(slots=True, frozen=True)
class Constraint:
    """What the policies demand of a backend: the strictest of every policy that applied."""

    restricted_by: str | None = None  # pattern of the restricted policy, if any
    min_tier: int = 0  # 0: no tier floor
    tier_by: str | None = None  # pattern that set ``min_tier``

    def stricter(self, other: Constraint | None) -> Constraint:
        """Both constraints at once: restricted if either is, the higher tier floor."""
        if other is None:
            return self
        restricted_by = self.restricted_by or other.restricted_by
        if other.min_tier > self.min_tier:
            return Constraint(restricted_by, other.min_tier, other.tier_by)
        return Constraint(restricted_by, self.min_tier, self.tier_by)


def first_match(policies: Sequence[CompiledPolicy], model: str) -> CompiledPolicy | None:
    """The first policy whose glob matches ``model``."""
    for policy in policies:
        if policy.match(model):
            return policy
    return None


def constraint_for(policies: Sequence[CompiledPolicy], names: Iterable[str]) -> Constraint | None:
    """The strictest combination of the first matching policy of each name (None: no rule)."""
    out: Constraint | None = None
    for name in names:
        policy = first_match(policies, name)
        if policy is None or not (policy.restricted or policy.min_tier):
            continue
        found = Constraint(
            policy.pattern if policy.restricted else None,
            policy.min_tier or 0,
            policy.pattern if policy.min_tier else None,
        )
        out = found if out is None else out.stricter(found)
    return out


def privacy_reason(backend: Backend, model: str, restricted_by: str) -> dict[str, Any]:
    """Why a restricted policy keeps ``backend`` (in the open zone) out."""
    return {
        "backend": backend.name,
        "model": model,
        "reason": "privacy",
        "message": f"zone open, policy for {restricted_by!r} is restricted",
        "fix": f"add a backend in the restricted zone that serves '{model}'",
    }


def tier_reason(
    backend: Backend, model: str, constraint: Constraint, flexible: bool
) -> dict[str, Any]:
    """Why a ``min_tier`` policy keeps ``backend`` (below that tier) out."""
    min_tier = constraint.min_tier
    mode = "flexible" if flexible else "strict"
    return {
        "backend": backend.name,
        "model": model,
        "reason": "tier",
        "message": f"tier {backend.tier} is below min_tier {min_tier} of the "
        f"policy for {constraint.tier_by!r} ({mode} mode never serves from "
        "a lower tier)",
        "fix": f"add a backend with tier >= {min_tier} that serves "
        f"'{model}', or lower min_tier in that policy",
    }
