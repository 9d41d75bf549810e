"""Schema-driven fuzzing (schemathesis) of the JSON endpoints from the server's OpenAPI document.

Every operation in ``/openapi/openapi.json`` (admin, listings, stats, health, metrics) gets
generated paths, queries, headers and bodies; none may answer with a 5xx or a traceback. The
proxy doors are not in the document (they follow the OpenAI / Anthropic / Ollama specs): they are
fuzzed by ``tests/test_fuzz.py``.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings

from nexus_core.testing import FakeBackend
from nexus_server.testing import running_server
from tests.conftest import gateway_config


def fuzz(operation: Any, base_url: str, seen: dict[str, set[int]], calls: list[str]) -> None:
    """Up to 25 generated calls of one operation; none may be a 5xx or show a traceback."""
    label = f"{operation.method.upper()} {operation.path}"

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=operation.as_strategy())
    def check(case: Any) -> None:
        response = case.call(base_url=base_url, timeout=10)
        seen.setdefault(label, set()).add(response.status_code)
        calls.append(label)
        assert response.status_code < 500, (label, response.status_code, response.text)
        assert "Traceback" not in response.text

    check()


def test_no_json_endpoint_answers_a_server_error() -> None:
    # A name no generator guesses in 25 tries (a one-letter name was, now and then, deleted).
    backend = FakeBackend("fuzz-kept-backend-7f3a9c", ["llama3"])
    with backend.running(), running_server(gateway_config(backend)) as server:
        schema = schemathesis.openapi.from_url(server.url + "/openapi/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 15
        seen: dict[str, set[int]] = {}
        calls: list[str] = []
        for operation in operations:
            fuzz(operation, server.url, seen, calls)
        # The backend the fuzzing may not remove (it never guesses its name) is still there.
        assert [b.name for b in server.gateway.registry] == ["fuzz-kept-backend-7f3a9c"]
    assert len(seen) == len(operations)
    assert len(calls) >= 5 * len(operations)  # the generator really ran (a path with no
    # parameters can only make a handful of distinct calls)
