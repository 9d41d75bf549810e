"""What both Anthropic translations share (``nexus_core.anthropic_format``): Anthropic's error
shape, as the SDK raises it, and the token estimate.
"""

from __future__ import annotations

import json

import anthropic
import httpx2  # the anthropic SDK's HTTP client
import pytest
from anthropic import APIStatusError

from nexus_core.anthropic_format import (
    TranslationError,
    anthropic_error_body,
    anthropic_error_type,
    count_tokens,
)


def test_translation_error_is_a_value_error() -> None:
    assert issubclass(TranslationError, ValueError)


# --------------------------------------------------------------------------------------------
# Errors and token counts


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
        (599, "api_error"),
    ],
)
def test_error_types(status: int, error_type: str) -> None:
    assert anthropic_error_type(status) == error_type
    body = json.loads(anthropic_error_body(status, "nope", request_id="req_1"))
    assert body == {
        "type": "error",
        "error": {"type": error_type, "message": "nope"},
        "request_id": "req_1",
    }


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, "BadRequestError"),
        (401, "AuthenticationError"),
        (403, "PermissionDeniedError"),
        (404, "NotFoundError"),
        (413, "ContentTooLargeError"),
        (429, "RateLimitError"),
        (500, "InternalServerError"),
        (502, "InternalServerError"),
        (503, "ServiceUnavailableError"),
        (504, "GatewayTimeoutError"),
        (529, "OverloadedError"),
    ],
)
def test_sdk_raises_the_expected_exception_for_our_error_bodies(
    status: int, exception: str
) -> None:
    def reply(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, content=anthropic_error_body(status, "nope"))

    client = anthropic.Anthropic(
        api_key="k",
        base_url="http://nexus.test",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(reply)),
    )
    with pytest.raises(APIStatusError) as caught:
        client.messages.create(model="m", max_tokens=1, messages=[{"role": "user", "content": "x"}])
    assert type(caught.value).__name__ == exception
    assert caught.value.type == anthropic_error_type(status)
    assert caught.value.api_message == "nope"


def test_count_tokens_is_a_rough_estimate() -> None:
    small = count_tokens({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert 1 <= small <= 10
    big = count_tokens({"model": "m", "messages": [{"role": "user", "content": "word " * 400}]})
    assert 450 <= big <= 560
    with_image = count_tokens(
        {
            "model": "m",
            "system": "s" * 400,
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                        {"type": "tool_result", "tool_use_id": "t", "content": "r" * 40},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "t", "name": "f", "input": {"q": "x" * 40}}
                    ],
                },
            ],
        }
    )
    assert with_image > 1600 + 100 + 10 + 10
    with pytest.raises(TranslationError):
        count_tokens({"model": "m"})
