"""What OpenAI's ``/v1/models`` does not say: context window and capabilities per model.

Prices are not here: ``nexus_core.pricing`` holds OpenAI's (with Anthropic's and Gemini's) for
every cloud backend, and ``[[pricing]]`` entries override them.

How to maintain this table
--------------------------
OpenAI lists models without any of this; it lives on https://platform.openai.com/docs/models
(one page per model: context window, "Features": function calling, structured outputs, image
input).

- One entry per model *family name* as OpenAI's alias spells it (``gpt-4o``). Dated snapshots
  (``gpt-4o-2024-08-06``, ``gpt-4-0613``) match their family automatically; add a snapshot as an
  entry of its own only where it differs.
- Only what the sources state: leave a field None rather than guess. None means "unknown" and
  never excludes a request; False excludes it, so write False only where the page says
  "not supported".
- The context window is the model's whole window (prompt and output), as OpenAI's model page
  states it.
- Fine-tuned ids (``ft:<base>:<org>::<id>``) take the capabilities of their base model.
- After checking, update ``CHECKED``.

Last checked against the model data of ``genai-prices`` 0.2.3 (context windows) and litellm
1.110.2's ``model_prices_and_context_window`` (context windows, vision, function calling,
response schema); where they differ on a window, genai-prices is taken.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["CHECKED", "MODELS", "ModelSpec", "lookup"]

#: When the table was last compared with OpenAI's model pages (year-month).
CHECKED = "2026-11"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One family's context window (tokens) and capabilities."""

    context_length: int | None
    vision: bool | None
    tools: bool | None
    json_mode: bool | None
    embeddings: bool


def _chat(context: int, *, vision: bool, tools: bool = True, json: bool = True) -> ModelSpec:
    return ModelSpec(context, vision, tools, json, False)


def _embedding(context: int) -> ModelSpec:
    return ModelSpec(context, False, False, False, True)


MODELS: Mapping[str, ModelSpec] = {
    # GPT-6 and GPT-5.6
    "gpt-6-astra": _chat(1_050_000, vision=True),
    "gpt-6-sol": _chat(1_050_000, vision=True),
    "gpt-6-luna": _chat(1_050_000, vision=True),
    "gpt-6.1-sol": _chat(1_050_000, vision=True),
    "gpt-6.1-terra": _chat(1_050_000, vision=True),
    "gpt-5.6-sol": _chat(1_050_000, vision=True),
    "gpt-5.6-terra": _chat(1_050_000, vision=True),
    "gpt-5.6-luna": _chat(1_050_000, vision=True),
    # GPT-5.x
    "gpt-5.5": _chat(1_000_000, vision=True),
    "gpt-5.4": _chat(1_050_000, vision=True),
    "gpt-5.4-mini": _chat(400_000, vision=True),
    "gpt-5.4-nano": _chat(400_000, vision=True),
    "gpt-5.2": _chat(400_000, vision=True),
    "gpt-5.1": _chat(400_000, vision=True),
    "gpt-5": _chat(400_000, vision=True),
    "gpt-5-mini": _chat(400_000, vision=True),
    "gpt-5-nano": _chat(400_000, vision=True),
    # GPT-4o
    "gpt-4o": _chat(128_000, vision=True),
    "gpt-4o-mini": _chat(128_000, vision=True),
    # GPT-4.1
    "gpt-4.1": _chat(1_047_576, vision=True),
    "gpt-4.1-mini": _chat(1_047_576, vision=True),
    "gpt-4.1-nano": _chat(1_047_576, vision=True),
    # o-series (reasoning)
    "o1": _chat(200_000, vision=True),
    "o1-mini": _chat(128_000, vision=False, tools=False, json=False),
    "o3": _chat(200_000, vision=True),
    "o3-mini": _chat(200_000, vision=False),
    "o4-mini": _chat(200_000, vision=True),
    # Embeddings
    "text-embedding-3-small": _embedding(8191),
    "text-embedding-3-large": _embedding(8191),
    "text-embedding-ada-002": _embedding(8191),
}

# A family name followed by a snapshot date: -2024-08-06 (current style) or -0613 (older).
_SNAPSHOT = re.compile(r"^(?P<family>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{4})$")


def lookup(model_id: str) -> ModelSpec | None:
    """The entry for ``model_id``: itself, else the family of a dated snapshot or a fine-tune."""
    if model_id.startswith("ft:"):
        model_id = model_id.split(":")[1]
    spec = MODELS.get(model_id)
    if spec is None:
        snapshot = _SNAPSHOT.match(model_id)
        spec = MODELS.get(snapshot["family"]) if snapshot else None
    return spec
