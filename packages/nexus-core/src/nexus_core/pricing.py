"""Prices: what a model costs, from ``[[pricing]]`` entries and a built-in table of cloud prices.

``BUILTIN_PRICES`` holds the standard-tier (not batch, flex or priority) prices of OpenAI, Anthropic
and Gemini models in USD per million tokens; ``PriceBook`` puts the configured entries in front
of it and answers "what does this model cost on this backend"; ``cost_nano_usd`` turns an
answer's ``usage`` into integer nano-dollars (1e-9 USD), so spend adds up without float drift.

How to maintain the table
-------------------------
- One key per model family as the provider's API spells it (``gpt-4o``, ``claude-sonnet-4-5``,
  ``gemini-2.5-flash``), lower case. A key also prices every id that continues it after a ``-``,
  ``@`` or ``:`` (``gpt-4o-2024-08-06``, ``claude-sonnet-4-5-20250929``), the longest key
  winning. So whenever an id that continues a key is priced differently (a snapshot such as
  ``gpt-4o-2024-05-13``, a sibling such as ``o3-pro`` next to ``o3``), it needs a key of its own,
  or the shorter key prices it wrongly.
- ``cached_input_per_million`` is the price of a prompt-cache read (OpenAI "cached input",
  Anthropic "cache hits", Gemini "context caching"); None where the provider names none.
  Cache writes are not priced: the OpenAI ``usage`` object does not report them.
- Tiered prices (Gemini and Anthropic above 200k prompt tokens, OpenAI above 272k, Claude Haiku
  5.5 above 100k) are entered at the base tier: a request past the threshold is undercounted.
- Introductory prices are entered as they stand, with their end date in a comment.
- Only chat, completion and embedding models: Nexus fronts no image, audio or realtime endpoint.
- After checking, update ``PRICES_CHECKED``. Configured ``[[pricing]]`` entries win over the table.

Checked on 2026-11-26 against the price data of ``genai-prices`` 0.2.3 (pydantic/genai-prices,
providers ``openai``, ``anthropic`` and ``google``: the current price of each model, i.e. the
latest dated one) and cross-checked with litellm 1.110.2's ``model_prices_and_context_window``.
Both agree on every price below (litellm lacks some of the models). The providers' pages are
the authority:

- OpenAI: https://platform.openai.com/docs/pricing
- Anthropic: https://platform.claude.com/docs/en/about-claude/pricing
- Gemini: https://ai.google.dev/gemini-api/docs/pricing
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nexus_core.config import PriceEntry

__all__ = [
    "BUILTIN_PRICES",
    "PRICES_CHECKED",
    "Price",
    "PriceBook",
    "builtin_price",
    "cost_nano_usd",
    "estimate_nano_usd",
    "nano_to_usd",
]

#: When ``BUILTIN_PRICES`` was last compared with the providers' prices (year-month).
PRICES_CHECKED = "2026-11"
#: Characters that may follow a table key in an id it prices (``gpt-4o-2024-08-06``).
SEPARATORS = frozenset("-@:")
NANO_PER_USD = 1_000_000_000
#: Tokens times USD per million tokens is micro-USD; nano-USD are a thousand times that.
_NANO_PER_MICRO = 1000
_GLOB_CHARS = frozenset("*?[")
_CACHE_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens: prompt, completion, and prompt tokens read from the cache."""

    input_per_million: float
    output_per_million: float
    cached_input_per_million: float | None = None


def _p(inp: float, out: float, cached: float | None = None) -> Price:
    return Price(inp, out, cached)


_TABLE: dict[str, Price] = {
    # --- OpenAI ----------------------------------------------------------------------------------
    # GPT-6 and GPT-5.6 are tiered above 272k prompt tokens (2x input); base tier here.
    "gpt-6-astra": _p(10.00, 50.00, 1.00),
    "gpt-6-sol": _p(2.00, 10.00, 0.20),
    "gpt-6-luna": _p(0.10, 0.50, 0.01),
    "gpt-6-cyber": _p(20.00, 100.00, 2.00),
    "gpt-6-rosalind": _p(15.00, 75.00, 1.50),
    "gpt-6.1-sol": _p(2.00, 10.00, 0.10),
    "gpt-6.1-terra": _p(1.00, 5.00, 0.05),
    # Since 2026-07-30 (luna, terra) and 2026-08-21 (sol); plain gpt-5.6 is sol.
    "gpt-5.6": _p(4.00, 20.00, 0.40),
    "gpt-5.6-sol": _p(4.00, 20.00, 0.40),
    "gpt-5.6-terra": _p(2.00, 12.00, 0.20),
    "gpt-5.6-luna": _p(0.20, 1.20, 0.02),
    "gpt-5.6-cyber": _p(12.50, 75.00, 1.25),
    # GPT-5.5 and 5.4 (not mini/nano) are tiered above 272k prompt tokens; base tier here.
    "gpt-5.5": _p(5.00, 30.00, 0.50),
    "gpt-5.5-pro": _p(30.00, 180.00),
    "gpt-5.5-cyber": _p(12.50, 75.00, 1.25),
    "gpt-5.4": _p(2.50, 15.00, 0.25),
    "gpt-5.4-pro": _p(30.00, 180.00),
    "gpt-5.4-mini": _p(0.75, 4.50, 0.075),
    "gpt-5.4-nano": _p(0.20, 1.25, 0.02),
    "gpt-5.3": _p(1.75, 14.00, 0.175),
    "gpt-5.2": _p(1.75, 14.00, 0.175),
    "gpt-5.2-pro": _p(21.00, 168.00),
    "gpt-5.1": _p(1.25, 10.00, 0.125),
    "gpt-5.1-codex-mini": _p(0.25, 2.00, 0.025),
    "gpt-5.1-mini": _p(0.25, 2.00, 0.025),
    "gpt-5": _p(1.25, 10.00, 0.125),
    "gpt-5-pro": _p(15.00, 120.00),
    "gpt-5-mini": _p(0.25, 2.00, 0.025),
    "gpt-5-nano": _p(0.05, 0.40, 0.005),
    "gpt-chat-latest": _p(5.00, 30.00, 0.50),
    "gpt-4.1": _p(2.00, 8.00, 0.50),
    "gpt-4.1-mini": _p(0.40, 1.60, 0.10),
    "gpt-4.1-nano": _p(0.10, 0.40, 0.025),
    "gpt-4o": _p(2.50, 10.00, 1.25),
    "gpt-4o-2024-05-13": _p(5.00, 15.00),  # the first snapshot: priced higher, no cache discount
    "gpt-4o:extended": _p(6.00, 18.00),  # OpenRouter's long-output variant
    "gpt-4o-mini": _p(0.15, 0.60, 0.075),
    "o4-mini": _p(1.10, 4.40, 0.275),
    "o4-mini-deep-research": _p(2.00, 8.00, 0.50),
    "o3": _p(2.00, 8.00, 0.50),  # since 2025-06-10 (was 10/40)
    "o3-pro": _p(20.00, 80.00),
    "o3-deep-research": _p(10.00, 40.00, 2.50),
    "o3-mini": _p(1.10, 4.40, 0.55),
    "o1": _p(15.00, 60.00, 7.50),
    "o1-pro": _p(150.00, 600.00),
    "o1-mini": _p(1.10, 4.40, 0.55),
    # Legacy models, with the snapshots the family key would misprice.
    "gpt-4-turbo": _p(10.00, 30.00),
    "gpt-4-1106-preview": _p(10.00, 30.00),
    "gpt-4-0125-preview": _p(10.00, 30.00),
    "gpt-4-vision-preview": _p(10.00, 30.00),
    "gpt-4-32k": _p(60.00, 120.00),
    "gpt-4": _p(30.00, 60.00),
    "gpt-3.5-turbo": _p(0.50, 1.50),
    "gpt-3.5-turbo-16k": _p(3.00, 4.00),
    "gpt-3.5-turbo-1106": _p(1.00, 2.00),
    "gpt-3.5-turbo-0613": _p(1.50, 2.00),
    "gpt-3.5-turbo-0301": _p(1.50, 2.00),
    "gpt-3.5-turbo-instruct": _p(1.50, 2.00),
    # Embeddings bill input tokens only.
    "text-embedding-3-small": _p(0.02, 0.0),
    "text-embedding-3-large": _p(0.13, 0.0),
    "text-embedding-ada-002": _p(0.10, 0.0),
    # --- Anthropic (cached: the cache-hit price) -------------------------------------------------
    "claude-fable-5-2": _p(8.00, 40.00, 0.20),
    "claude-mythos-5-2": _p(8.00, 40.00, 0.20),
    "claude-fable-5-1": _p(10.00, 50.00, 0.25),
    "claude-fable-5": _p(10.00, 50.00, 1.00),
    "claude-opus-5-5": _p(4.00, 20.00, 0.20),
    "claude-opus-5": _p(5.00, 25.00, 0.50),
    "claude-sonnet-5-5": _p(2.00, 10.00, 0.10),
    "claude-sonnet-5": _p(2.00, 10.00, 0.20),
    # Haiku 5.5: every token of a prompt over 100k tokens costs 5x; base tier here.
    "claude-haiku-5-5": _p(0.10, 0.50, 0.01),
    "claude-opus-4-8": _p(5.00, 25.00, 0.50),
    "claude-opus-4-7": _p(5.00, 25.00, 0.50),
    "claude-opus-4-6": _p(5.00, 25.00, 0.50),
    "claude-opus-4-5": _p(5.00, 25.00, 0.50),
    "claude-opus-4-1": _p(15.00, 75.00, 1.50),
    # Opus 4 and Sonnet 4 (claude-opus-4-0, claude-opus-4-20250514, claude-opus-4@20250514...);
    # a 4.x id the table lacks falls to them too.
    "claude-opus-4": _p(15.00, 75.00, 1.50),
    "claude-sonnet-4-6": _p(3.00, 15.00, 0.30),
    # Sonnet 4.5: base tier; prompts over 200k (1M-context beta, retired 2026-04-30) cost more.
    "claude-sonnet-4-5": _p(3.00, 15.00, 0.30),
    "claude-sonnet-4": _p(3.00, 15.00, 0.30),
    "claude-haiku-4-5": _p(1.00, 5.00, 0.10),
    "claude-3-7-sonnet": _p(3.00, 15.00, 0.30),
    "claude-3-5-sonnet": _p(3.00, 15.00, 0.30),
    "claude-3-5-haiku": _p(0.80, 4.00, 0.08),
    "claude-3-opus": _p(15.00, 75.00, 1.50),
    "claude-3-haiku": _p(0.25, 1.25, 0.03),
    # --- Gemini (cached: the context-caching price; storage per hour is not priced) -------------
    "gemini-4-argon": _p(2.00, 10.00, 0.10),  # introductory price, through 2026-11-30
    # 3.6 to 3.8 Flash: introductory prices, through 2026-12-31.
    "gemini-3.8-flash": _p(0.75, 3.75, 0.075),
    "gemini-3.7-flash": _p(0.75, 3.75, 0.075),
    "gemini-3.6-flash": _p(0.75, 3.75, 0.075),
    "gemini-3.5-flash": _p(1.50, 9.00, 0.15),
    "gemini-3.5-flash-lite": _p(0.30, 2.50, 0.03),
    # Pro models: prompts over 200k tokens cost more (3.1 Pro 4/18, 2.5 Pro 2.5/15); base tier.
    "gemini-3.1-pro-preview": _p(2.00, 12.00, 0.20),
    "gemini-3.1-flash-lite": _p(0.25, 1.50, 0.025),
    "gemini-3-flash-preview": _p(0.50, 3.00, 0.05),
    "gemini-2.5-pro": _p(1.25, 10.00, 0.125),
    "gemini-2.5-flash": _p(0.30, 2.50, 0.03),
    "gemini-2.5-flash-lite": _p(0.10, 0.40, 0.01),
    # 2.0 Flash is shut down on the Gemini API (kept for other hosts and old configurations).
    "gemini-2.0-flash": _p(0.10, 0.40, 0.025),
    "gemini-2.0-flash-lite": _p(0.075, 0.30),
    "gemini-embedding-2": _p(0.20, 0.0),  # text input; image, audio and video cost more
    "gemini-embedding-001": _p(0.15, 0.0),
}
BUILTIN_PRICES: Mapping[str, Price] = {
    **_TABLE,
    # Some hosts spell GPT-5.x with a dash (gpt-5-4-mini); without these, gpt-5 would price them.
    **{key.replace(".", "-"): price for key, price in _TABLE.items() if key.startswith("gpt-5.")},
}


def _prefix_key(table: Mapping[str, Any], model: str) -> str | None:
    """The longest key of ``table`` that is ``model`` or continues into it at a separator."""
    if model in table:
        return model
    for end in range(len(model) - 1, 0, -1):
        if model[end] in SEPARATORS and model[:end] in table:
            return model[:end]
    return None


@functools.lru_cache(maxsize=_CACHE_LIMIT)
def builtin_price(model: str) -> Price | None:
    """The built-in price of ``model`` (any case; dated and provider-prefixed ids too)."""
    model = model.lower()
    for candidate in (model, model.rpartition("/")[2]):
        if candidate.startswith("ft:"):
            return None  # fine-tuned inference is priced per base model and not in the table
        key = _prefix_key(BUILTIN_PRICES, candidate)
        if key is not None:
            return BUILTIN_PRICES[key]
    return None


def _entry_matches(pattern: str, is_glob: bool, model: str) -> bool:
    """Whether a lower-cased ``[[pricing]]`` model (id or glob) matches a lower-cased id."""
    if is_glob:
        return fnmatch.fnmatchcase(model, pattern)
    for candidate in (model, model.rpartition("/")[2]):
        if candidate.startswith(pattern) and (
            len(candidate) == len(pattern) or candidate[len(pattern)] in SEPARATORS
        ):
            return True
    return False


@dataclass(frozen=True, slots=True)
class _Entry:
    pattern: str
    is_glob: bool
    backends: frozenset[str]
    price: Price


class PriceBook:
    """What a model costs on a backend: ``[[pricing]]`` entries, the adapter, the built-in table."""

    __slots__ = ("_cache", "_entries")

    def __init__(self, entries: Sequence[PriceEntry]) -> None:
        self._entries = tuple(
            _Entry(
                pattern=entry.model.lower(),
                is_glob=not _GLOB_CHARS.isdisjoint(entry.model),
                backends=frozenset(entry.backends),
                price=Price(
                    entry.input_per_million,
                    entry.output_per_million,
                    entry.cached_input_per_million,
                ),
            )
            for entry in entries
        )
        self._cache: dict[tuple[str, bool, str], Price | None] = {}

    def lookup(
        self, backend: str, cloud: bool, model: str, adapter: object | None = None
    ) -> Price | None:
        """The price of ``model`` on ``backend`` (None: unpriced, costs nothing).

        The first matching ``[[pricing]]`` entry in file order, else the adapter's ``price(model)``
        hook, else, for a cloud backend only, the built-in table.
        """
        key = (backend, cloud, model)
        try:
            return self._cache[key]
        except KeyError:
            pass
        price = self._resolve(backend, cloud, model, adapter)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = price
        return price

    def _resolve(
        self, backend: str, cloud: bool, model: str, adapter: object | None
    ) -> Price | None:
        lowered = model.lower()
        for entry in self._entries:
            if entry.backends and backend not in entry.backends:
                continue
            if _entry_matches(entry.pattern, entry.is_glob, lowered):
                return entry.price
        # An optional hook for third-party cloud adapters that know their own prices.
        hook = getattr(adapter, "price", None)
        if callable(hook):
            price = hook(model)
            if isinstance(price, Price):
                return price
        return builtin_price(model) if cloud else None


def _tokens(value: Any) -> int | None:
    """A usable token count: a non-negative int (not a bool)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def cost_nano_usd(price: Price, usage: Mapping[str, Any]) -> int | None:
    """What an OpenAI ``usage`` object costs, in nano-USD (None: no usable token counts).

    Chat's names (``prompt_tokens``...) or the Responses API's (``input_tokens``...).
    """
    prompt = _tokens(usage.get("prompt_tokens"))
    completion = _tokens(usage.get("completion_tokens"))
    details_key = "prompt_tokens_details"
    if prompt is None and completion is None:
        # The Responses API's names for the same counts.
        prompt = _tokens(usage.get("input_tokens"))
        completion = _tokens(usage.get("output_tokens"))
        if prompt is None and completion is None:
            return None
        details_key = "input_tokens_details"
    prompt = prompt or 0
    cached = 0
    details = usage.get(details_key)
    if price.cached_input_per_million is not None and isinstance(details, Mapping):
        # Cached tokens are part of prompt_tokens; never more than them.
        cached = min(_tokens(details.get("cached_tokens")) or 0, prompt)
    micro_usd = (
        (prompt - cached) * price.input_per_million
        + cached * (price.cached_input_per_million or 0.0)
        + (completion or 0) * price.output_per_million
    )
    return round(micro_usd * _NANO_PER_MICRO)


def estimate_nano_usd(price: Price, prompt_tokens: int, completion_tokens: int) -> int:
    """An upper estimate in nano-USD before the answer is known (no cache discount)."""
    micro_usd = (
        prompt_tokens * price.input_per_million + completion_tokens * price.output_per_million
    )
    return round(micro_usd * _NANO_PER_MICRO)


def nano_to_usd(nano: int) -> float:
    """Nano-USD as USD."""
    return nano / NANO_PER_USD
