"""``nexus_core.clamping``: which requests have an answer limit to clamp, and the rewrite."""

from __future__ import annotations

import json

from nexus_core.adapters import Endpoint
from nexus_core.clamping import BYTES_PER_TOKEN, clamp, requested_limit, room


def test_the_limit_is_the_larger_of_the_two_keys() -> None:
    assert requested_limit(Endpoint.CHAT, {"max_tokens": 10}, False) == 10
    assert (
        requested_limit(Endpoint.CHAT, {"max_completion_tokens": 30, "max_tokens": 20}, False) == 30
    )
    assert requested_limit(Endpoint.COMPLETIONS, {"max_tokens": 16}, False) == 16


def test_nothing_to_clamp_without_a_limit_for_embeddings_or_with_images() -> None:
    assert requested_limit(Endpoint.CHAT, {}, False) is None
    assert requested_limit(Endpoint.CHAT, {"max_tokens": True}, False) is None
    assert requested_limit(Endpoint.CHAT, {"max_tokens": "9"}, False) is None
    assert requested_limit(Endpoint.CHAT, {"max_tokens": 0}, False) is None
    assert requested_limit(Endpoint.EMBEDDINGS, {"max_tokens": 9}, False) is None
    assert requested_limit(Endpoint.CHAT, {"max_tokens": 9}, True) is None
    assert requested_limit(Endpoint.CHAT, None, False) is None


def test_room_counts_the_whole_body_high() -> None:
    body = b"x" * 300
    assert room(1000, body) == 1000 - 300 // BYTES_PER_TOKEN


def test_clamp_lowers_only_the_limits_above_it_and_keeps_the_rest() -> None:
    body = json.dumps(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "héllo"}],
            "max_tokens": 32000,
            "max_completion_tokens": 50,
            "stream": True,
        },
        ensure_ascii=False,
    ).encode()
    out = json.loads(clamp(body, 100))
    assert out == {
        "model": "m",
        "messages": [{"role": "user", "content": "héllo"}],
        "max_tokens": 100,
        "max_completion_tokens": 50,
        "stream": True,
    }
