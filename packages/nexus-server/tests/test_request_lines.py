"""``nexus serve`` writes request log lines itself: the same text ``logging`` would have written."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Iterator

import pytest

from nexus_core.config import NexusConfig
from nexus_core.observability import Monitor, RequestRecord
from nexus_server.serve import NexusHandler, RequestLines, setup_logging

PRETTY_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


@pytest.fixture
def logging_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    saved = (logging._srcfile, logging.logThreads, logging.logProcesses)  # type: ignore[attr-defined]
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging._srcfile, logging.logThreads, logging.logProcesses = saved  # type: ignore[attr-defined]
    logging.logMultiprocessing = True


def a_record(**changes: object) -> RequestRecord:
    record = RequestRecord(
        request_id="req-1",
        front_door="openai",
        client="127.0.0.1",
        started=time.time(),
        started_perf=time.perf_counter() - 0.0123,
    )
    record.begin("chat")
    record.status = 200
    record.model = "llama3"
    record.served_model = "llama3"
    record.backend = "gpu-1"
    record.route_reason = "best"
    record.attempts = 2
    record.prompt_tokens = 12
    record.completion_tokens = 30
    record.ttft = 0.004
    for name, value in changes.items():
        setattr(record, name, value)
    return record


def both_ways(log_format: str, record: RequestRecord) -> tuple[str, str]:
    """The line through ``logging``, then through ``RequestLines``."""
    setup_logging(NexusConfig.model_validate({"logging": {"format": log_format}}))
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, NexusHandler)
    stream = io.StringIO()
    handler.setStream(stream)
    monitor = Monitor.__new__(Monitor)
    monitor.line_writer = None
    monitor._log(record)
    writer = RequestLines.for_current_logging()
    assert writer is not None
    monitor.line_writer = writer
    monitor._log(record)
    first, second = stream.getvalue().splitlines()
    return first, second


@pytest.mark.usefixtures("logging_restored")
@pytest.mark.parametrize(
    "changes",
    [{}, {"error": "upstream_error", "status": 502, "backend": None}, {"ttft": None}],
    ids=["served", "failed", "no-ttft"],
)
def test_pretty_lines_are_the_same(changes: dict[str, object]) -> None:
    through_logging, written = both_ways("pretty", a_record(**changes))
    assert PRETTY_STAMP.match(through_logging)
    assert PRETTY_STAMP.match(written)
    assert written[23:] == through_logging[23:]
    assert " INFO    nexus.requests: req-1 chat model=llama3 " in written


@pytest.mark.usefixtures("logging_restored")
def test_json_lines_are_the_same() -> None:
    through_logging, written = both_ways("json", a_record())
    logged, direct = json.loads(through_logging), json.loads(written)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", direct["time"])
    logged.pop("time")
    direct.pop("time")
    assert direct == logged
    assert direct["request"]["backend"] == "gpu-1"


@pytest.mark.usefixtures("logging_restored")
def test_any_other_handler_or_filter_keeps_logging_in_charge() -> None:
    setup_logging(NexusConfig.model_validate({}))
    assert RequestLines.for_current_logging() is not None
    extra = logging.StreamHandler(io.StringIO())
    requests = logging.getLogger("nexus.requests")
    requests.addHandler(extra)
    try:
        assert RequestLines.for_current_logging() is None
    finally:
        requests.removeHandler(extra)
    logging.getLogger().addHandler(extra)
    assert RequestLines.for_current_logging() is None
    logging.getLogger().removeHandler(extra)
    logging.getLogger().handlers[0].addFilter(lambda record: True)
    assert RequestLines.for_current_logging() is None


#: Text from outside Nexus that must never reach a log line raw.
HOSTILE = "evil\r\nFAKE 200 OK\x1b[31m\x9b2J\x7f\x00\u2028end"
#: Every character ``HOSTILE`` must not leave in a line.
RAW = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@pytest.mark.usefixtures("logging_restored")
@pytest.mark.parametrize("log_format", ["pretty", "json"])
def test_control_characters_from_outside_are_escaped_the_same_both_ways(log_format: str) -> None:
    record = a_record(request_id=HOSTILE, model=HOSTILE, backend=None, error=HOSTILE, status=404)
    through_logging, written = both_ways(log_format, record)  # exactly two lines
    for line in (through_logging, written):
        assert not RAW.search(line), line
    if log_format == "pretty":
        assert written[23:] == through_logging[23:]
        assert "evil\\r\\nFAKE 200 OK\\x1b[31m\\x9b2J\\x7f\\x00\\u2028end" in written
    else:
        logged, direct = json.loads(through_logging), json.loads(written)
        logged.pop("time")
        direct.pop("time")
        assert direct == logged
        assert direct["request"]["model"] == HOSTILE  # JSON escapes give the value back whole
        assert direct["request"]["request_id"] == HOSTILE


@pytest.mark.usefixtures("logging_restored")
@pytest.mark.parametrize("log_format", ["pretty", "json"])
def test_any_logger_s_message_is_one_line_and_a_traceback_keeps_its_lines(
    log_format: str,
) -> None:
    setup_logging(NexusConfig.model_validate({"logging": {"format": log_format}}))
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, NexusHandler)
    stream = io.StringIO()
    handler.setStream(stream)
    logging.getLogger("uvicorn.error").warning("backend said %s", HOSTILE)
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        logging.getLogger("nexus.server").exception("failed: %s", HOSTILE)
    lines = stream.getvalue().split("\n")[:-1]
    for line in lines:
        assert not RAW.search(line), line
    if log_format == "json":
        assert len(lines) == 2
        entry = json.loads(lines[1])
        assert entry["message"] == f"failed: {HOSTILE}"
        assert "Traceback (most recent call last)" in entry["exception"]
    else:
        escaped = "evil\\r\\nFAKE 200 OK\\x1b[31m\\x9b2J\\x7f\\x00\\u2028end"
        assert lines[0].endswith(" uvicorn.error: backend said " + escaped)
        assert lines[1].endswith(" nexus.server: failed: " + escaped)
        # The traceback keeps its own lines (the message in it too); nothing else is raw.
        assert lines[2] == "Traceback (most recent call last):"
        assert lines[-2] == "ValueError: evil\\r"
        assert lines[-1] == "FAKE 200 OK\\x1b[31m\\x9b2J\\x7f\\x00\\u2028end"
