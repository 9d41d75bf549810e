"""Every log line about a request names it, in both log formats, from a real ``nexus serve``.

One process per format serves a failover (the first backend answers 500), a stream that breaks,
a request refused because the state store (a SQLite file another process holds locked) fails,
and requests for a path Nexus does not serve, each with its own ``X-Request-Id``. The lines
about each request carry its id: at the start of the message (``pretty``), and as the
``request_id`` field (``json``). With ``nexus.routing`` and ``nexus.failover`` at DEBUG, the
routing decision (strategy, candidates, exclusions and their reasons, order) and each attempt
are logged too; at INFO they are not. A request made in-process through ``Gateway`` gets an id
of its own, and its lines name it too.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from nexus_core.gateway import Gateway
from nexus_core.testing import Behaviour, FakeBackend, free_port
from tests.conftest import gateway_config, nexus_serve
from tests.test_state_outage_e2e import locked

SCHEMA = json.loads(
    (Path(__file__).resolve().parent.parent / "docs" / "log-schema.json").read_text("utf-8")
)
FREE = "nxk-test-logs-free-0123456789"
METERED = "nxk-test-logs-metered-0123456789"
HELLO: list[Any] = [{"role": "user", "content": "Hi"}]
PRETTY_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ([A-Z]+) +([\w.]+): (.*)")

CONFIG = """
[discovery]
enabled = false

[health_check]
interval_seconds = 3600

[state]
backend = "sqlite"
path = "{state}"

[logging]
format = "{log_format}"
level = "info"

[logging.component_levels]
{debug}

[routing]
strategy = "priority_only"

[auth]
enabled = true

[[auth.keys]]
name = "free"
key_env = "LOGS_TEST_FREE_KEY"

[[auth.keys]]
name = "metered"
key_env = "LOGS_TEST_METERED_KEY"
requests_per_minute = 100000

[[backends]]
name = "bad"
url = "{bad}"
type = "generic"
priority = 10

[[backends]]
name = "good"
url = "{good}"
type = "generic"
priority = 20

[[backends]]
name = "down"
url = "http://127.0.0.1:{closed}"
type = "generic"
priority = 30
models = ["fake-model"]
"""
DEBUG_LEVELS = 'routing = "debug"\nfailover = "debug"'


def serve_log(tmp_path: Path, log_format: str, *, debug: bool) -> list[dict[str, Any]]:
    """Run the workload against a fresh ``nexus serve``; its log lines as dicts.

    Each dict has ``level``, ``logger``, ``message`` and, when the line has one, ``request_id``
    (JSON: the field; pretty: the message's first word is not read as an id, the tests look
    for it themselves).
    """
    bad, good = FakeBackend("bad", ["fake-model"]), FakeBackend("good", ["fake-model"])
    bad.behave(Behaviour(status=500))
    state = tmp_path / "state.sqlite3"
    config = tmp_path / "nexus.toml"
    with bad.running(), good.running():
        config.write_text(
            CONFIG.format(
                state=state,
                log_format=log_format,
                debug=DEBUG_LEVELS if debug else "",
                bad=bad.url,
                good=good.url,
                closed=free_port(),
            ),
            encoding="utf-8",
        )
        env = {"LOGS_TEST_FREE_KEY": FREE, "LOGS_TEST_METERED_KEY": METERED}
        with nexus_serve(config, env=env) as (process, url):
            client = openai.OpenAI(base_url=url + "/v1", api_key=FREE, max_retries=0)
            # 1. Failed over from bad (500) to good.
            answer = client.chat.completions.with_raw_response.create(
                model="fake-model", messages=HELLO, extra_headers={"X-Request-Id": "rid-failover"}
            )
            assert answer.headers["x-nexus-backend"] == "good"
            # 2. Failed over, then good's stream breaks after its first events.
            good.behave(Behaviour(cut_after_events=2, times=1))
            with pytest.raises(openai.APIError, match="broke"):
                list(
                    client.chat.completions.create(
                        model="fake-model",
                        messages=HELLO,
                        stream=True,
                        extra_headers={"X-Request-Id": "rid-broke"},
                    )
                )
            # 3. A rate-limited key while the state store cannot be written: 503.
            metered = openai.OpenAI(base_url=url + "/v1", api_key=METERED, max_retries=0)
            with locked(state), pytest.raises(openai.InternalServerError):
                metered.chat.completions.create(
                    model="fake-model", messages=HELLO, extra_headers={"X-Request-Id": "rid-store"}
                )
            # 4. A model nobody serves: no route.
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(
                    model="no-such-model",
                    messages=HELLO,
                    extra_headers={"X-Request-Id": "rid-none"},
                )
            # 5. A path Nexus does not serve (OpenAI's image generation), three times.
            for number in range(3):
                with pytest.raises(openai.NotFoundError):
                    client.images.generate(
                        model="fake-model",
                        prompt="Hi",
                        extra_headers={"X-Request-Id": f"rid-unknown-{number}"},
                    )
            missing = httpx.delete(
                url + "/v1/models", headers={"X-Request-Id": "rid-method"}, timeout=10
            )
            assert missing.status_code == 405
            process.terminate()
            process.wait(15)
    text = config.with_suffix(".log").read_text("utf-8")
    lines = [line for line in text.split("\n") if line]
    if log_format == "json":
        entries = [json.loads(line) for line in lines]
        for entry in entries:
            jsonschema.validate(entry, SCHEMA)
        return entries
    parsed = []
    for line in lines:
        match = PRETTY_LINE.fullmatch(line)
        if match is None:  # a traceback's lines (there should be none)
            parsed.append({"level": "?", "logger": "?", "message": line})
            continue
        level, logger, message = match.groups()
        parsed.append({"level": level.lower(), "logger": logger, "message": message})
    return parsed


def about(entries: list[dict[str, Any]], request_id: str, log_format: str) -> list[dict[str, Any]]:
    """The lines about one request: by their field (JSON) or the id their message starts with."""
    if log_format == "json":
        found = [e for e in entries if e.get("request_id") == request_id]
        for entry in found:
            assert entry["message"].startswith(request_id + " "), entry
        return found
    return [e for e in entries if e["message"].startswith(request_id + " ")]


def messages(entries: list[dict[str, Any]], logger: str, level: str) -> list[str]:
    return [e["message"] for e in entries if e["logger"] == logger and e["level"] == level]


@pytest.mark.parametrize("log_format", ["pretty", "json"])
def test_every_line_about_a_request_names_it(tmp_path: Path, log_format: str) -> None:
    entries = serve_log(tmp_path, log_format, debug=True)
    assert not [e for e in entries if "Traceback" in e["message"]], entries

    failover = about(entries, "rid-failover", log_format)
    (moved,) = messages(failover, "nexus.failover", "info")
    assert moved.startswith("rid-failover backend bad failed (upstream_5xx: ")
    assert moved.endswith("500); trying the next")
    assert messages(failover, "nexus.requests", "info")[0].startswith(
        "rid-failover chat model=fake-model backend=good reason=failover status=200 "
    )
    # The decision: priority order, the unhealthy backend left out with its reason.
    (decision,) = messages(failover, "nexus.routing", "debug")
    assert decision.startswith(
        "rid-failover route fake-model: strategy priority_only; candidates bad, good; "
        "excluded down for fake-model (unhealthy: "
    )
    assert decision.endswith("; order bad [priority], good [failover]")
    attempts = messages(failover, "nexus.failover", "debug")
    assert attempts[0] == "rid-failover attempt 1: backend bad, model fake-model (priority)"
    assert attempts[1] == "rid-failover attempt 2: backend good, model fake-model (failover)"
    assert attempts[2].startswith("rid-failover attempt 2: backend good answered HTTP 200 in ")
    assert len(attempts) == 3

    broke = about(entries, "rid-broke", log_format)
    (moved,) = messages(broke, "nexus.failover", "info")
    assert moved.startswith("rid-broke backend bad failed (upstream_5xx: ")
    (stream_line,) = messages(broke, "nexus.failover", "warning")
    assert stream_line.startswith("rid-broke stream from good broke: ")
    assert " error=stream_broken" in messages(broke, "nexus.requests", "info")[0]
    assert messages(broke, "nexus.failover", "debug")[-1].startswith(
        "rid-broke attempt 2: backend good streams (first event after "
    )

    (refused,) = messages(about(entries, "rid-none", log_format), "nexus.routing", "debug")
    assert refused.startswith(
        "rid-none route no-such-model: none (404 model_not_found): The model 'no-such-model' "
        "does not exist."
    )

    store = about(entries, "rid-store", log_format)
    (outage,) = messages(store, "nexus.state", "error")
    assert outage.startswith("rid-store the sqlite state store failed (serve a request): ")
    assert " status=503 " in messages(store, "nexus.requests", "info")[0]

    # The unknown path: one line for three requests, naming the first; the wrong method too.
    unknown = [e for e in entries if "/v1/images/generations" in e["message"]]
    assert [e["message"] for e in unknown] == [
        "rid-unknown-0 POST /v1/images/generations: 404, Nexus has no such route (further "
        "requests for "
        "it are counted: one line a minute)"
    ]
    assert unknown[0]["level"] == "info"
    (method,) = about(entries, "rid-method", log_format)
    assert method["message"].startswith("rid-method DELETE /v1/models: 405, Nexus has no such ")


def test_at_info_there_are_no_debug_lines(tmp_path: Path) -> None:
    entries = serve_log(tmp_path, "json", debug=False)
    assert not [e for e in entries if e["level"] == "debug"]
    # The INFO lines are there all the same, with their ids.
    (moved,) = messages(about(entries, "rid-failover", "json"), "nexus.failover", "info")
    assert moved.startswith("rid-failover backend bad failed (upstream_5xx: ")


@pytest.mark.anyio
async def test_a_request_made_in_process_has_an_id_on_its_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``Gateway`` without a server: the request gets an id, and its failover line names it."""
    caplog.set_level(logging.INFO, logger="nexus")
    bad, good = FakeBackend("bad", ["fake-model"]), FakeBackend("good", ["fake-model"])
    bad.behave(Behaviour(status=500))
    with bad.running(), good.running():
        async with Gateway(gateway_config(bad, good, strategy="priority_only")) as gateway:
            answer = await gateway.chat_completions({"model": "fake-model", "messages": HELLO})
            assert answer["choices"][0]["message"]["content"] == "Hello from good"
            (entry,) = gateway.monitor.history_entries()
    request_id = entry["request_id"]
    assert re.fullmatch(r"[0-9a-f]{16}", request_id)
    (moved,) = [r for r in caplog.records if r.name == "nexus.failover"]
    assert moved.getMessage().startswith(f"{request_id} backend bad failed (upstream_5xx: ")
    assert moved.request_id == request_id  # type: ignore[attr-defined]
