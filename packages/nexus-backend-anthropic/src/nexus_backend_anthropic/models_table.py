"""What Anthropic's ``/v1/models`` may not say: context window and capabilities per model family.

The list states ``max_input_tokens`` and ``capabilities.image_input`` for models that have them
(the adapter takes those first); this table covers the families whose list entries do not.
Prices are not here: ``nexus_core.pricing`` holds Anthropic's.

How to maintain this table
--------------------------
The source is https://platform.claude.com/docs/en/about-claude/models/overview (context window,
vision) and the tool-use page (every Claude model since Claude 3 takes tools).

- One entry per family as Anthropic's alias spells it (``claude-sonnet-4-5``). Dated snapshots
  (``claude-sonnet-4-5-20250929``), ``-latest`` aliases, ``-0`` aliases (``claude-opus-4-0``) and
  Vertex-style ``@20250514`` ids match their family; other suffixes do not.
- The standard context window only: the 1M-token window of Sonnet 4 and 4.5 is a beta that needs
  a header this adapter does not send, so it stays 200k.
- JSON mode: Anthropic has no ``response_format: json_object``; ``json_mode`` stays None.
- Only what the sources state: None where a field is unknown (None never excludes a request).
- After checking, update ``CHECKED``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["CHECKED", "MODELS", "ModelSpec", "family", "lookup"]

#: When the table was last compared with Anthropic's model overview (year-month).
CHECKED = "2026-11"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One family's context window (tokens) and capabilities."""

    context_length: int | None
    vision: bool | None
    tools: bool | None = True


_CLAUDE = ModelSpec(200_000, vision=True)
_LISTED = ModelSpec(None, vision=None)

MODELS: Mapping[str, ModelSpec] = {
    # Families after 4.5: the model list states their window (``max_input_tokens``) and image
    # input (``capabilities``); the table adds tools, which every Claude model since 3 takes.
    "claude-fable-5": _LISTED,
    "claude-mythos-5": _LISTED,
    "claude-opus-5": _LISTED,
    "claude-sonnet-5": _LISTED,
    "claude-haiku-5": _LISTED,
    "claude-opus-4-8": _LISTED,
    "claude-opus-4-7": _LISTED,
    "claude-opus-4-6": _LISTED,
    "claude-sonnet-4-6": _LISTED,
    "claude-opus-4-5": _CLAUDE,
    "claude-opus-4-1": _CLAUDE,
    "claude-opus-4": _CLAUDE,
    "claude-sonnet-4-5": _CLAUDE,
    "claude-sonnet-4": _CLAUDE,
    "claude-haiku-4-5": _CLAUDE,
    "claude-3-7-sonnet": _CLAUDE,
    "claude-3-5-sonnet": _CLAUDE,
    # Image input of 3.5 Haiku differs between sources: unknown.
    "claude-3-5-haiku": ModelSpec(200_000, vision=None),
    "claude-3-opus": _CLAUDE,
    "claude-3-haiku": _CLAUDE,
}

_SUFFIX = re.compile(r"(?:-\d{8}|@\d{8}|-latest|-0)$")
# A 5.x point release (claude-opus-5-5, claude-fable-5-2): its family is the 5 line.
_FIVE_POINT = re.compile(r"^(claude-[a-z]+-5)-\d+$")


def family(model_id: str) -> str:
    """The family name of a model id: without a snapshot date, ``-latest`` or ``-0``."""
    return _SUFFIX.sub("", model_id)


def lookup(model_id: str) -> ModelSpec | None:
    """The entry for ``model_id`` or for its family; None when the table lacks it."""
    name = family(model_id)
    spec = MODELS.get(model_id) or MODELS.get(name)
    if spec is None and (five := _FIVE_POINT.match(name)):
        spec = MODELS.get(five[1])
    return spec
