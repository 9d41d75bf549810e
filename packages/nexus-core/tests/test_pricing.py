"""Prices: the built-in table and its prefix matching, the price book's order, and costs."""

from __future__ import annotations

from typing import Any

import pytest

from nexus_core.config import PriceEntry
from nexus_core.pricing import (
    BUILTIN_PRICES,
    PRICES_CHECKED,
    Price,
    PriceBook,
    builtin_price,
    cost_nano_usd,
    estimate_nano_usd,
    nano_to_usd,
)

GPT_4O = Price(2.50, 10.00, 1.25)
GPT_4O_MINI = Price(0.15, 0.60, 0.075)

# -- the built-in table ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # the snapshot priced on its own
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4", "gpt-4"),
        ("gpt-4-0613", "gpt-4"),
        ("gpt-4.1", "gpt-4.1"),  # not gpt-4: a dot is no separator
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("gpt-5-2025-08-07", "gpt-5"),
        ("gpt-5-pro-2025-10-06", "gpt-5-pro"),  # not gpt-5
        ("gpt-5.4-mini-2026-03-17", "gpt-5.4-mini"),
        ("gpt-5-4-mini", "gpt-5-4-mini"),  # the dashed spelling, not gpt-5
        ("o3-2025-04-16", "o3"),
        ("o3-pro", "o3-pro"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-3-5-haiku@20241022", "claude-3-5-haiku"),
        ("gemini-2.5-flash-preview-09-2025", "gemini-2.5-flash"),
        ("gemini-2.5-flash-lite", "gemini-2.5-flash-lite"),
        ("gemini-2.0-flash-001", "gemini-2.0-flash"),
        ("text-embedding-3-small", "text-embedding-3-small"),
    ],
)
def test_prefix_matching_takes_the_longest_key_at_a_separator(model: str, key: str) -> None:
    assert builtin_price(model) == BUILTIN_PRICES[key]


def test_the_prices_themselves() -> None:
    assert builtin_price("gpt-4o") == GPT_4O
    assert builtin_price("gpt-4o-2024-05-13") == Price(5.00, 15.00)
    assert builtin_price("gpt-4") == Price(30.00, 60.00)
    assert builtin_price("claude-sonnet-4-5") == Price(3.00, 15.00, 0.30)
    assert builtin_price("gemini-2.5-pro") == Price(1.25, 10.00, 0.125)  # the ≤200k tier
    assert builtin_price("text-embedding-3-large") == Price(0.13, 0.0)


def test_gpt_4_does_not_price_gpt_4o() -> None:
    assert builtin_price("gpt-4o") != builtin_price("gpt-4")
    assert builtin_price("gpt-4oz") is None  # no separator after gpt-4o, none after gpt-4 either


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("openai/gpt-4o", "gpt-4o"),
        ("openai/gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("models/gemini-2.5-flash", "gemini-2.5-flash"),
        ("anthropic/claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("GPT-4o-2024-08-06", "gpt-4o"),
        ("Claude-Opus-4-1", "claude-opus-4-1"),
        ("OpenAI/GPT-4O", "gpt-4o"),
    ],
)
def test_provider_prefixes_and_case_are_ignored(model: str, key: str) -> None:
    assert builtin_price(model) == BUILTIN_PRICES[key]


@pytest.mark.parametrize(
    "model",
    [
        "llama-3.3-70b",
        "mistral-large-latest",
        "gpt",
        "gpt-3",
        "-gpt-4o",
        "",
        "ft:gpt-4o-mini-2024-07-18:acme::Bx1",  # fine-tunes are priced differently
        "openai/ft:gpt-4o-2024-08-06:acme::Bx2",
    ],
)
def test_unknown_ids_have_no_price(model: str) -> None:
    assert builtin_price(model) is None


def test_every_key_resolves_to_itself() -> None:
    for key, price in BUILTIN_PRICES.items():
        assert key == key.lower(), key
        assert builtin_price(key) is price, key
        assert price.input_per_million > 0, key
        assert price.output_per_million >= 0, key
        cached = price.cached_input_per_million
        assert cached is None or cached <= price.input_per_million, key


def test_table_is_dated() -> None:
    year, month = PRICES_CHECKED.split("-")
    assert len(year) == 4
    assert 1 <= int(month) <= 12


# -- the price book -------------------------------------------------------------------------------


def entry(model: str, inp: float, out: float, **extra: Any) -> PriceEntry:
    return PriceEntry(model=model, input_per_million=inp, output_per_million=out, **extra)


def test_a_config_entry_beats_the_builtin_table() -> None:
    book = PriceBook([entry("gpt-4", 1.0, 2.0)])
    assert book.lookup("openai", True, "gpt-4-0613") == Price(1.0, 2.0)
    assert book.lookup("openai", True, "gpt-4o") == GPT_4O  # no separator after gpt-4
    assert book.lookup("openai", True, "openai/gpt-4") == Price(1.0, 2.0)


def test_the_first_matching_entry_wins() -> None:
    # File order, not the longest id: gpt-4o continues into gpt-4o-mini at a separator, so an
    # entry for gpt-4o-mini must come before one for gpt-4o.
    book = PriceBook([entry("gpt-4o", 1.0, 2.0), entry("gpt-4o-mini", 3.0, 4.0)])
    assert book.lookup("openai", True, "gpt-4o-mini") == Price(1.0, 2.0)
    book = PriceBook([entry("gpt-4o-mini", 3.0, 4.0), entry("gpt-4o", 1.0, 2.0)])
    assert book.lookup("openai", True, "gpt-4o-mini-2024-07-18") == Price(3.0, 4.0)
    assert book.lookup("openai", True, "gpt-4o") == Price(1.0, 2.0)
    book = PriceBook([entry("gpt-*", 1.0, 2.0), entry("gpt-4o", 3.0, 4.0)])
    assert book.lookup("openai", True, "gpt-4o") == Price(1.0, 2.0)


def test_the_backends_filter() -> None:
    book = PriceBook([entry("gpt-4o", 1.0, 2.0, backends=["azure"])])
    assert book.lookup("azure", True, "gpt-4o") == Price(1.0, 2.0)
    assert book.lookup("openai", True, "gpt-4o") == GPT_4O


def test_a_glob_matches_the_whole_id_in_any_case() -> None:
    book = PriceBook([entry("Llama-*-70B", 0.5, 0.8, cached_input_per_million=0.1)])
    assert book.lookup("groq", True, "llama-3.3-70b") == Price(0.5, 0.8, 0.1)
    assert book.lookup("groq", True, "llama-3.3-70b-versatile") is None
    assert PriceBook([entry("gpt-4o", 1.0, 2.0)]).lookup("x", True, "GPT-4O") == Price(1.0, 2.0)


def test_a_local_backend_costs_nothing_unless_priced() -> None:
    assert PriceBook([]).lookup("gpu-box", False, "gpt-4o") is None
    book = PriceBook([entry("*", 0.02, 0.05, backends=["gpu-box"])])
    assert book.lookup("gpu-box", False, "llama3.1:8b") == Price(0.02, 0.05)
    assert book.lookup("laptop", False, "llama3.1:8b") is None


class PricedAdapter:
    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.asked: list[str] = []

    def price(self, model: str) -> object:
        self.asked.append(model)
        return self.answer


def test_the_adapter_hook_comes_after_entries_and_before_the_table() -> None:
    adapter = PricedAdapter(Price(9.0, 9.0))
    book = PriceBook([entry("gpt-4o-mini", 1.0, 2.0)])
    assert book.lookup("cloud", True, "gpt-4o", adapter) == Price(9.0, 9.0)
    assert book.lookup("cloud", True, "gpt-4o-mini", adapter) == Price(1.0, 2.0)
    assert book.lookup("local", False, "my-model", adapter) == Price(9.0, 9.0)
    assert adapter.asked == ["gpt-4o", "my-model"]


def test_an_adapter_answer_that_is_not_a_price_is_ignored() -> None:
    book = PriceBook([])
    assert book.lookup("cloud", True, "gpt-4o", PricedAdapter((1.0, 2.0))) == GPT_4O
    assert book.lookup("local", False, "gpt-4o", PricedAdapter(None)) is None
    assert book.lookup("cloud2", True, "gpt-4o", object()) == GPT_4O


def test_lookups_are_cached_per_backend_cloud_and_model() -> None:
    adapter = PricedAdapter(Price(9.0, 9.0))
    book = PriceBook([])
    for _ in range(3):
        assert book.lookup("cloud", True, "m", adapter) == Price(9.0, 9.0)
    assert adapter.asked == ["m"]
    assert book.lookup("cloud", False, "m", adapter) == Price(9.0, 9.0)
    assert adapter.asked == ["m", "m"]


# -- costs ----------------------------------------------------------------------------------------


def test_chat_usage_costs_to_the_nano_dollar() -> None:
    # gpt-4o: 1,000 prompt tokens at $2.50/M + 500 completion at $10/M = $0.0025 + $0.005.
    usage = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
    assert cost_nano_usd(GPT_4O, usage) == 7_500_000
    assert nano_to_usd(7_500_000) == pytest.approx(0.0075)


def test_small_prices_round_to_the_nano_dollar() -> None:
    # gpt-4o-mini: 7 prompt tokens at $0.15/M = 1,050 nano; 3 completion at $0.60/M = 1,800 nano.
    usage = {"prompt_tokens": 7, "completion_tokens": 3}
    assert cost_nano_usd(GPT_4O_MINI, usage) == 2_850
    # gpt-5-nano cache reads: 1 token at $0.005/M is 5 nano.
    nano = builtin_price("gpt-5-nano")
    assert nano is not None
    usage = {"prompt_tokens": 1, "prompt_tokens_details": {"cached_tokens": 1}}
    assert cost_nano_usd(nano, usage) == 5


def test_cached_prompt_tokens_cost_the_cached_price() -> None:
    # gpt-4o: 1,000 prompt tokens of which 800 cached: 200 at $2.50/M (500,000 nano) + 800 at
    # $1.25/M (1,000,000 nano); 500 completion at $10/M (5,000,000 nano).
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 500,
        "prompt_tokens_details": {"cached_tokens": 800},
    }
    assert cost_nano_usd(GPT_4O, usage) == 6_500_000
    # Without a cached price, cached tokens cost the input price.
    assert cost_nano_usd(Price(2.50, 10.00), usage) == 7_500_000


def test_more_cached_than_prompt_tokens_is_capped() -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 0,
        "prompt_tokens_details": {"cached_tokens": 500},
    }
    assert cost_nano_usd(GPT_4O, usage) == 125_000  # 100 at $1.25/M


def test_embeddings_usage_has_prompt_tokens_only() -> None:
    # text-embedding-3-small: 10,000 tokens at $0.02/M = $0.0002.
    price = builtin_price("text-embedding-3-small")
    assert price is not None
    assert cost_nano_usd(price, {"prompt_tokens": 10_000, "total_tokens": 10_000}) == 200_000


@pytest.mark.parametrize(
    "usage",
    [
        {},
        {"total_tokens": 10},
        {"prompt_tokens": None, "completion_tokens": None},
        {"prompt_tokens": "10", "completion_tokens": "5"},
        {"prompt_tokens": True, "completion_tokens": False},
        {"prompt_tokens": 1.5},
        {"prompt_tokens": -1},
    ],
)
def test_usage_without_token_counts_has_no_cost(usage: dict[str, Any]) -> None:
    assert cost_nano_usd(GPT_4O, usage) is None


def test_bad_cached_details_are_ignored() -> None:
    usage: dict[str, Any] = {"prompt_tokens": 1000, "completion_tokens": 500}
    for details in (None, "x", {"cached_tokens": True}, {"cached_tokens": "800"}):
        assert cost_nano_usd(GPT_4O, {**usage, "prompt_tokens_details": details}) == 7_500_000


def test_estimates_charge_every_prompt_token_at_the_input_price() -> None:
    assert estimate_nano_usd(GPT_4O, 1000, 500) == 7_500_000
    assert estimate_nano_usd(GPT_4O_MINI, 0, 0) == 0
    # claude-opus-4-1: 2,000 prompt tokens at $15/M + 1,000 at $75/M = $0.03 + $0.075.
    opus = builtin_price("claude-opus-4-1")
    assert opus is not None
    assert estimate_nano_usd(opus, 2000, 1000) == 105_000_000


def test_responses_api_usage_costs_what_the_same_chat_usage_costs() -> None:
    # A backend that speaks the Responses API natively names the counts input/output tokens.
    chat = {
        "prompt_tokens": 1000,
        "completion_tokens": 500,
        "prompt_tokens_details": {"cached_tokens": 800},
    }
    responses = {
        "input_tokens": 1000,
        "output_tokens": 500,
        "input_tokens_details": {"cached_tokens": 800},
        "total_tokens": 1500,
    }
    assert cost_nano_usd(GPT_4O, responses) == cost_nano_usd(GPT_4O, chat) == 6_500_000
    assert cost_nano_usd(GPT_4O, {"total_tokens": 3}) is None
