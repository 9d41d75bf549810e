"""What OpenAI's ``/v1/models`` does not say: context window, capabilities and price per model.

How to maintain this table
--------------------------
OpenAI lists models without any of this; it lives on https://platform.openai.com/docs/models
(one page per model: context window, "Features": function calling, structured outputs, image
input) and https://platform.openai.com/docs/pricing (standard tier, USD per 1M tokens).

- One entry per model *family name* as OpenAI's alias spells it (``gpt-4o``). Dated snapshots
  (``gpt-4o-2024-08-06``, ``gpt-4-0613``) match their family automatically; add a snapshot as an
  entry of its own only where it differs (``gpt-4o-2024-05-13`` is priced higher).
- Only what the pages state: leave a field None rather than guess. None means "unknown" and never
  excludes a request; False excludes it, so write False only where the page says "not supported".
- ``output_per_million`` is 0.0 for embedding models (they bill input tokens only).
- Fine-tuned ids (``ft:<base>:<org>::<id>``) take the capabilities of their base model but no
  price (fine-tuned inference is priced differently).
- After checking, update ``CHECKED``; Nexus shows it next to cost estimates. Configured prices
  (``[routing.budget.pricing]``) override these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["CHECKED", "MODELS", "ModelSpec", "lookup", "price"]

#: When the table was last compared with OpenAI's model and pricing pages (year-month).
CHECKED = "2025-07"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One family's context window (tokens), capabilities and standard-tier price (USD / 1M)."""

    context_length: int | None
    vision: bool | None
    tools: bool | None
    json_mode: bool | None
    embeddings: bool
    input_per_million: float | None
    output_per_million: float | None


def _chat(
    context: int, inp: float, out: float, *, vision: bool, tools: bool = True, json: bool = True
) -> ModelSpec:
    return ModelSpec(context, vision, tools, json, False, inp, out)


def _embedding(context: int, inp: float) -> ModelSpec:
    return ModelSpec(context, False, False, False, True, inp, 0.0)


MODELS: Mapping[str, ModelSpec] = {
    # GPT-4o
    "gpt-4o": _chat(128_000, 2.50, 10.00, vision=True),
    "gpt-4o-2024-05-13": _chat(128_000, 5.00, 15.00, vision=True),
    "gpt-4o-mini": _chat(128_000, 0.15, 0.60, vision=True),
    # GPT-4.1
    "gpt-4.1": _chat(1_047_576, 2.00, 8.00, vision=True),
    "gpt-4.1-mini": _chat(1_047_576, 0.40, 1.60, vision=True),
    "gpt-4.1-nano": _chat(1_047_576, 0.10, 0.40, vision=True),
    # o-series (reasoning)
    "o1": _chat(200_000, 15.00, 60.00, vision=True),
    "o1-mini": _chat(128_000, 1.10, 4.40, vision=False, tools=False, json=False),
    "o3": _chat(200_000, 2.00, 8.00, vision=True),
    "o3-mini": _chat(200_000, 1.10, 4.40, vision=False),
    "o4-mini": _chat(200_000, 1.10, 4.40, vision=True),
    # Embeddings
    "text-embedding-3-small": _embedding(8191, 0.02),
    "text-embedding-3-large": _embedding(8191, 0.13),
    "text-embedding-ada-002": _embedding(8191, 0.10),
}

# A family name followed by a snapshot date: -2024-08-06 (current style) or -0613 (older).
_SNAPSHOT = re.compile(r"^(?P<family>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{4})$")


def _family(model_id: str) -> tuple[str, bool]:
    """The table key for ``model_id`` and whether it is a fine-tuned model."""
    fine_tuned = model_id.startswith("ft:")
    if fine_tuned:
        model_id = model_id.split(":")[1]
    return model_id, fine_tuned


def lookup(model_id: str) -> ModelSpec | None:
    """The entry for ``model_id``: itself, else the family of a dated snapshot or a fine-tune."""
    model_id, fine_tuned = _family(model_id)
    spec = MODELS.get(model_id)
    if spec is None:
        snapshot = _SNAPSHOT.match(model_id)
        spec = MODELS.get(snapshot["family"]) if snapshot else None
    if spec is not None and fine_tuned:
        spec = ModelSpec(
            spec.context_length,
            spec.vision,
            spec.tools,
            spec.json_mode,
            spec.embeddings,
            None,
            None,
        )
    return spec


def price(model_id: str) -> tuple[float, float] | None:
    """USD per million (input, output) tokens for ``model_id``, if the table knows it."""
    spec = lookup(model_id)
    if spec is None or spec.input_per_million is None or spec.output_per_million is None:
        return None
    return spec.input_per_million, spec.output_per_million
