"""Observability: one record per request, turned into metrics, stats, history and a log line.

Every request the gateway answers (or fails to) ends in exactly one ``RequestRecord`` handed to
``Monitor.finish``: a whole answer when it is ready, a stream when it ends (broken or not), an
error when it is raised, a request the client abandoned when it is cancelled. From it the monitor
updates, in place and without locks (one event loop):

- Prometheus counters and histograms (``render_prometheus``), with labels bounded by what Nexus
  knows: a model name a client made up is labelled ``unknown``;
- per-backend and per-model statistics for ``/v1/stats`` (averages, and p95 over the last
  ``WINDOW`` requests);
- the last ``HISTORY`` requests for ``/v1/history``;
- one INFO line on the ``nexus.requests`` logger, with the fields under ``record.nexus`` for the
  JSON formatter. Never a prompt or an answer.

Gauges (health, latency, pending, queue depth, budget) are read from their owners when scraped.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nexus_core.accounting import Accountant
    from nexus_core.queueing import CapacityQueue
    from nexus_core.registry import Registry

log = logging.getLogger("nexus.requests")
#: A request's log line (its values are the request record's).
LINE_FORMAT = "%s %s model=%s backend=%s reason=%s status=%d %.1fms%s%s retries=%d%s"

#: Requests kept for ``/v1/history``.
HISTORY = 100
#: Characters of a request's error message kept in its record.
ERROR_MESSAGE_KEPT = 1000
#: Requests per backend and per model kept for percentiles in ``/v1/stats``.
WINDOW = 1000
#: The same for one gateway key's own view (many keys by many backends and models: kept small).
KEY_WINDOW = 100
#: ``nexus_request_duration_seconds`` buckets (seconds).
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: ``nexus_time_to_first_token_seconds`` buckets (seconds).
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: The model label of a request for a model no backend knows (clients choose those names).
UNKNOWN_MODEL = "unknown"


@dataclass(slots=True)
class RequestRecord:
    """What happened to one request; filled along the way, finished once."""

    request_id: str = ""
    front_door: str = "library"
    endpoint: str = ""
    client: str | None = None
    started: float = 0.0
    started_perf: float = 0.0
    model: str = ""
    served_model: str | None = None
    backend: str | None = None
    route_reason: str | None = None
    stream: bool = False
    status: int = 0
    duration: float = 0.0
    ttft: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: Prompt tokens the backend served from its cache (``prompt_tokens_details.cached_tokens``,
    #: llama-server's ``timings.cache_n``); None: it did not say.
    cached_tokens: int | None = None
    cost_usd: float | None = None
    attempts: int = 0
    #: Backends that failed before the one that answered, in order.
    failed_backends: tuple[str, ...] = ()
    fallback_from: str | None = None
    error: str | None = None
    error_message: str | None = None
    finished: bool = False
    #: The client's W3C trace context, continued by the request's span when tracing is on.
    traceparent: str | None = None
    #: The request's OpenTelemetry span (``nexus_core.telemetry.RequestSpan``), when tracing.
    span: Any = None
    #: The request body and a whole answer, only with ``logging.enable_content_logging``.
    content: tuple[str, str | None] | None = None
    #: The gateway key the request came with (``nexus_core.auth.ApiKey``), when auth is on.
    api_key: Any = None
    #: The client's Authorization header, for backends with ``forward_client_auth``.
    client_auth: str | None = None
    #: The answer's ``ProxyStream`` while it is open: the server closes it whatever happens
    #: (its backend slot is released then); cleared when the stream ends.
    open_stream: Any = None

    def begin(self, endpoint: str) -> None:
        """Stamp the start (if the server did not already)."""
        self.endpoint = endpoint
        if not self.started:
            self.started = time.time()
            self.started_perf = time.perf_counter()

    def as_dict(self) -> dict[str, Any]:
        """The ``/v1/history`` entry."""
        fields = self.fields()
        started = datetime.fromtimestamp(self.started, UTC).isoformat(timespec="milliseconds")
        return {"request_id": fields.pop("request_id"), "time": started, **fields}

    def fields(self) -> dict[str, Any]:
        """The entry's fields but ``time`` (what the request's log line carries)."""
        return {
            "request_id": self.request_id,
            "front_door": self.front_door,
            "endpoint": self.endpoint,
            "model": self.model,
            "served_model": self.served_model,
            "backend": self.backend,
            "route_reason": self.route_reason,
            "stream": self.stream,
            "status": self.status,
            "duration_ms": round(self.duration * 1000, 3),
            "ttft_ms": None if self.ttft is None else round(self.ttft * 1000, 3),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "cost_usd": self.cost_usd,
            "retries": max(0, self.attempts - 1),
            "error": self.error,
            "client": self.client,
            "key": None if self.api_key is None else self.api_key.name,
        }


class _Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Series:
    """Running figures of one backend or one model for ``/v1/stats``."""

    __slots__ = (
        "cache_prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "cost_usd",
        "durations",
        "errors",
        "prompt_tokens",
        "requests",
        "streams",
        "sum_duration",
        "sum_ttft",
        "ttft_count",
        "ttfts",
    )

    def __init__(self, window: int = WINDOW) -> None:
        self.requests = 0
        self.errors = 0
        self.streams = 0
        self.sum_duration = 0.0
        self.durations: deque[float] = deque(maxlen=window)
        self.sum_ttft = 0.0
        self.ttft_count = 0
        self.ttfts: deque[float] = deque(maxlen=window)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        #: Cached prompt tokens, and the prompt tokens of the answers that said how many.
        self.cached_tokens = 0
        self.cache_prompt_tokens = 0
        self.cost_usd = 0.0

    def add(self, record: RequestRecord, failed: bool) -> None:
        self.requests += 1
        if failed:
            self.errors += 1
        if record.stream:
            self.streams += 1
        self.sum_duration += record.duration
        self.durations.append(record.duration)
        if record.ttft is not None:
            self.sum_ttft += record.ttft
            self.ttft_count += 1
            self.ttfts.append(record.ttft)
        self.prompt_tokens += record.prompt_tokens or 0
        self.completion_tokens += record.completion_tokens or 0
        cached = record.cached_tokens
        if cached is not None:
            self.cached_tokens += cached
            self.cache_prompt_tokens += record.prompt_tokens or 0
        self.cost_usd += record.cost_usd or 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "streams": self.streams,
            "latency_ms": {
                "avg": _ms(self.sum_duration / self.requests) if self.requests else None,
                "p95": _ms(_p95(self.durations)),
            },
            "ttft_ms": {
                "avg": _ms(self.sum_ttft / self.ttft_count) if self.ttft_count else None,
                "p95": _ms(_p95(self.ttfts)),
            },
            "tokens": {
                "prompt": self.prompt_tokens,
                "completion": self.completion_tokens,
                "cached": self.cached_tokens,
            },
            "cache_hit_ratio": self.cache_hit_ratio(),
            "cost_usd": round(self.cost_usd, 9),
        }

    def cache_hit_ratio(self) -> float | None:
        """Cached of the prompt tokens of the answers that said how many; None: none did."""
        if not self.cache_prompt_tokens:
            return None
        return round(self.cached_tokens / self.cache_prompt_tokens, 4)


class _KeyFigures:
    """One gateway key's own requests: what ``/v1/stats`` and ``/v1/history`` show that key."""

    __slots__ = ("by_backend", "by_model", "errors", "history", "total")

    def __init__(self) -> None:
        self.total = 0
        self.errors = 0
        self.by_backend: dict[str, _Series] = {}
        self.by_model: dict[str, _Series] = {}
        self.history: deque[RequestRecord] = deque(maxlen=HISTORY)

    def add(self, record: RequestRecord, model: str, backend: str, failed: bool) -> None:
        self.total += 1
        if failed:
            self.errors += 1
        if backend:
            series = self.by_backend.get(backend)
            if series is None:
                series = self.by_backend[backend] = _Series(KEY_WINDOW)
            series.add(record, failed)
        if model != UNKNOWN_MODEL:
            series = self.by_model.get(model)
            if series is None:
                series = self.by_model[model] = _Series(KEY_WINDOW)
            series.add(record, failed)
        self.history.append(record)

    def summary(self, name: str) -> dict[str, Any]:
        """The key's line in the fleet-wide ``/v1/stats`` (what the admin key sees)."""
        prompt = completion = 0
        cost = 0.0
        for series in self.by_backend.values():
            prompt += series.prompt_tokens
            completion += series.completion_tokens
            cost += series.cost_usd
        return {
            "name": name,
            "requests": self.total,
            "errors": self.errors,
            "tokens": {"prompt": prompt, "completion": completion},
            "cost_usd": round(cost, 9),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _p95(values: Iterable[float]) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


class Monitor:
    """Metrics, stats, history and request logs of one gateway."""

    def __init__(
        self,
        registry: Registry,
        *,
        queue: CapacityQueue | None = None,
        accountant: Accountant | None = None,
        enabled: bool = True,
    ) -> None:
        self.registry = registry
        #: False (``telemetry.metrics = false``): requests are logged and traced, not counted.
        self.enabled = enabled
        self.queue = queue
        self.accountant = accountant
        self.started = time.time()
        self.history: deque[RequestRecord] = deque(maxlen=HISTORY)
        self.requests: dict[tuple[str, str, str, str], int] = {}
        self.durations: dict[tuple[str, str], _Histogram] = {}
        self.ttfts: dict[tuple[str, str], _Histogram] = {}
        self.tokens: dict[tuple[str, str, str], int] = {}
        #: Prompt tokens served from a backend's cache, by (model, backend).
        self.cached: dict[tuple[str, str], int] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.fallbacks: dict[tuple[str, str], int] = {}
        self.failovers: dict[tuple[str, str], int] = {}
        self.costs: dict[tuple[str, str], float] = {}
        self.by_backend: dict[str, _Series] = {}
        self.by_model: dict[str, _Series] = {}
        #: Each gateway key's own figures and history, by key name (only requests with a key).
        self.by_key: dict[str, _KeyFigures] = {}
        self.total = 0
        self.total_errors = 0
        #: Writes a request's log line itself, when the server knows the line would go to one
        #: handler of its own (``nexus_server.serve.RequestLines``): the same text as through
        #: ``logging``, without the per-record work. ``None``: ``logging`` as usual.
        self.line_writer: Callable[[str, dict[str, Any]], None] | None = None
        #: Called with every finished record (the dashboard's live feed).
        self.subscribers: list[Callable[[RequestRecord], None]] = []

    # -- recording ------------------------------------------------------------------------------

    def finish(self, record: RequestRecord) -> None:
        """Account for one finished request (only the first call per record counts)."""
        if record.finished:
            return
        record.finished = True
        message = record.error_message
        if message is not None and len(message) > ERROR_MESSAGE_KEPT:
            # Kept for up to HISTORY requests; clients and backends choose its length.
            record.error_message = message[:ERROR_MESSAGE_KEPT] + "…"
        if record.started_perf:
            record.duration = time.perf_counter() - record.started_perf
        if not self.enabled:
            self._report(record)
            return
        model = record.served_model or (
            record.model if record.model and self.registry.serving(record.model) else UNKNOWN_MODEL
        )
        backend = record.backend or ""
        status = record.status
        failed = status >= 400 or record.error is not None
        self.total += 1
        key = (model, backend, str(status), record.front_door)
        self.requests[key] = self.requests.get(key, 0) + 1
        pair = (model, backend)
        histogram = self.durations.get(pair)
        if histogram is None:
            histogram = self.durations[pair] = _Histogram(DURATION_BUCKETS)
        histogram.observe(record.duration)
        if record.ttft is not None:
            histogram = self.ttfts.get(pair)
            if histogram is None:
                histogram = self.ttfts[pair] = _Histogram(TTFT_BUCKETS)
            histogram.observe(record.ttft)
        if record.prompt_tokens:
            token_key = (model, backend, "prompt")
            self.tokens[token_key] = self.tokens.get(token_key, 0) + record.prompt_tokens
        if record.completion_tokens:
            token_key = (model, backend, "completion")
            self.tokens[token_key] = self.tokens.get(token_key, 0) + record.completion_tokens
        if record.cached_tokens:
            self.cached[pair] = self.cached.get(pair, 0) + record.cached_tokens
        if record.cost_usd:
            self.costs[(backend, model)] = self.costs.get((backend, model), 0.0) + record.cost_usd
        if failed:
            self.total_errors += 1
            error_key = (record.error or f"http_{status}", model)
            self.errors[error_key] = self.errors.get(error_key, 0) + 1
        if record.failed_backends:
            # Each move from a failed backend to the next one tried (the last to the one that
            # answered, when one did).
            chain = record.failed_backends
            if record.backend:
                chain = (*chain, record.backend)
            for move in itertools.pairwise(chain):
                self.failovers[move] = self.failovers.get(move, 0) + 1
        if record.fallback_from is not None and record.served_model is not None:
            move = (record.fallback_from, record.served_model)
            self.fallbacks[move] = self.fallbacks.get(move, 0) + 1
        if backend:
            series = self.by_backend.get(backend)
            if series is None:
                series = self.by_backend[backend] = _Series()
            series.add(record, failed)
        if model != UNKNOWN_MODEL:
            series = self.by_model.get(model)
            if series is None:
                series = self.by_model[model] = _Series()
            series.add(record, failed)
        self.history.append(record)
        api_key = record.api_key
        if api_key is not None:
            figures = self.by_key.get(api_key.name)
            if figures is None:
                figures = self.by_key[api_key.name] = _KeyFigures()
            figures.add(record, model, backend, failed)
        self._report(record)
        for subscriber in self.subscribers:
            try:
                subscriber(record)
            except Exception:  # a broken listener must not break requests
                log.exception("a request listener failed")

    def _report(self, record: RequestRecord) -> None:
        """End the request's span and write its log line."""
        span = record.span
        if span is not None:
            span.end(
                status=record.status,
                backend=record.backend,
                route_reason=record.route_reason,
                response_model=record.served_model,
                input_tokens=record.prompt_tokens,
                output_tokens=record.completion_tokens,
                finish_reasons=None,
                error_type=record.error,
                cost_usd=record.cost_usd,
                ttft_seconds=record.ttft,
            )
        if log.isEnabledFor(logging.INFO):
            self._log(record)

    def _log(self, record: RequestRecord) -> None:
        fields = record.fields()
        if record.content is not None:
            fields["prompt"], fields["answer"] = record.content
        tokens = ""
        if record.prompt_tokens is not None or record.completion_tokens is not None:
            tokens = f" tokens={record.prompt_tokens or 0}/{record.completion_tokens or 0}"
        ttft = "" if record.ttft is None else f" ttft={record.ttft * 1000:.1f}ms"
        error = f" error={record.error}" if record.error else ""
        args = (
            record.request_id or "-",
            record.endpoint,
            record.model or "-",
            record.backend or "-",
            record.route_reason or "-",
            record.status,
            record.duration * 1000,
            ttft,
            tokens,
            max(0, record.attempts - 1),
            error,
        )
        writer = self.line_writer
        if writer is not None:
            writer(LINE_FORMAT % args, fields)
        else:
            log.info(LINE_FORMAT, *args, extra={"nexus": fields, "request_id": record.request_id})

    # -- reading ----------------------------------------------------------------------------------

    def history_entries(self, key: str | None = None) -> list[dict[str, Any]]:
        """The last requests, newest first (``key``: only that gateway key's own)."""
        if key is None:
            history = self.history
        else:
            figures = self.by_key.get(key)
            history = figures.history if figures is not None else deque()
        return [record.as_dict() for record in reversed(history)]

    def key_stats(self, key: str) -> dict[str, Any]:
        """``/v1/stats`` as a gateway key sees it: its own requests, nothing of other tenants.

        Per backend (those it used) and per model, its own figures; no pending counts, queue,
        fleet-wide totals, upstream error counts or global budget, which would show other keys'
        traffic. ``budget`` is left to the caller (the key's own monthly budget, if it has one).
        """
        figures = self.by_key.get(key) or _KeyFigures()
        backends = []
        for name, series in sorted(figures.by_backend.items()):
            backend = self.registry.get(name)
            backends.append(
                {
                    "name": name,
                    "type": None if backend is None else backend.type_name,
                    "status": "removed" if backend is None else backend.status.value,
                    **series.summary(),
                }
            )
        return {
            "uptime_seconds": round(time.time() - self.started, 3),
            "key": key,
            "requests": {"total": figures.total, "errors": figures.errors},
            "backends": backends,
            "models": [
                {"model": name, **series.summary()}
                for name, series in sorted(figures.by_model.items())
            ],
            "budget": None,
            "queue": None,
        }

    def stats(self) -> dict[str, Any]:
        """``/v1/stats``: totals, per backend, per model, budget and queue."""
        backends = []
        for backend in self.registry:
            series = self.by_backend.get(backend.name) or _Series()
            backends.append(
                {
                    "name": backend.name,
                    "type": backend.type_name,
                    "status": backend.status.value,
                    "pending": backend.pending,
                    "max_concurrent": backend.max_concurrent,
                    # Attempts on this backend that failed (each one moved its request on).
                    "upstream_errors": backend.errors_total,
                    **series.summary(),
                }
            )
        models = [
            {"model": name, **series.summary()} for name, series in sorted(self.by_model.items())
        ]
        return {
            **self.summary(),
            "backends": backends,
            "models": models,
            "keys": [figures.summary(name) for name, figures in sorted(self.by_key.items())],
        }

    def summary(self) -> dict[str, Any]:
        """The fleet-wide part of ``/v1/stats``: uptime, totals, budget and queue."""
        queue = self.queue
        return {
            "uptime_seconds": round(time.time() - self.started, 3),
            "requests": {"total": self.total, "errors": self.total_errors},
            "budget": self.accountant.summary() if self.accountant is not None else None,
            "queue": None
            if queue is None
            else {
                "enabled": queue.enabled,
                "depth": queue.queue_depth,
                "max_size": queue.max_size,
                "max_wait_seconds": queue.max_wait,
            },
        }

    def render_prometheus(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        out: list[str] = []
        _family(
            out,
            "nexus_requests_total",
            "counter",
            "Requests answered, by served model, backend, HTTP status and front door.",
            (("model", "backend", "status", "front_door"), self.requests.items()),
        )
        _histograms(
            out,
            "nexus_request_duration_seconds",
            "Time from receiving a request to its answer (streams: to their end).",
            self.durations,
        )
        _histograms(
            out,
            "nexus_time_to_first_token_seconds",
            "Time from receiving a streamed request to its first event (queue and failover "
            "included).",
            self.ttfts,
        )
        _family(
            out,
            "nexus_tokens_total",
            "counter",
            "Tokens from the answers' usage, by type (prompt, completion).",
            (("model", "backend", "type"), self.tokens.items()),
        )
        _family(
            out,
            "nexus_prompt_tokens_cached_total",
            "counter",
            "Prompt tokens the backend served from its prompt cache (the answers' "
            "usage.prompt_tokens_details.cached_tokens, llama-server's timings.cache_n).",
            (("model", "backend"), self.cached.items()),
        )
        _family(
            out,
            "nexus_errors_total",
            "counter",
            "Requests that failed, by error type.",
            (("error_type", "model"), self.errors.items()),
        )
        _family(
            out,
            "nexus_fallbacks_total",
            "counter",
            "Requests served by a fallback model.",
            (("from_model", "to_model"), self.fallbacks.items()),
        )
        _family(
            out,
            "nexus_failovers_total",
            "counter",
            "Moves of a request from a failed backend to the next one.",
            (("from_backend", "to_backend"), self.failovers.items()),
        )
        _family(
            out,
            "nexus_cost_usd_total",
            "counter",
            "Spend recorded from the answers' usage on priced routes, in USD.",
            (("backend", "model"), self.costs.items()),
        )
        backends = list(self.registry)
        # The Rust Nexus's fleet gauges, under its names: dashboards built on it keep working.
        healthy = [b for b in backends if b.status.value == "healthy"]
        models: set[str] = set()
        for backend in healthy:
            models.update(backend.models)
        _family(
            out,
            "nexus_backends_total",
            "gauge",
            "Registered backends (configured, discovered and added at run time).",
            ((), [((), len(backends))]),
        )
        _family(
            out,
            "nexus_backends_healthy",
            "gauge",
            "Backends whose health state is healthy.",
            ((), [((), len(healthy))]),
        )
        _family(
            out,
            "nexus_models_available",
            "gauge",
            "Distinct model ids served by healthy backends (aliases not counted).",
            ((), [((), len(models))]),
        )
        _family(
            out,
            "nexus_backend_healthy",
            "gauge",
            "1 when the backend is healthy, else 0.",
            (("backend",), [((b.name,), int(b.status.value == "healthy")) for b in backends]),
        )
        _family(
            out,
            "nexus_backend_latency_seconds",
            "gauge",
            "Moving average of the backend's answer latency.",
            (
                ("backend",),
                [((b.name,), b.latency_ms / 1000) for b in backends if b.latency_ms is not None],
            ),
        )
        _family(
            out,
            "nexus_pending_requests",
            "gauge",
            "Requests in flight to the backend.",
            (("backend",), [((b.name,), b.pending) for b in backends]),
        )
        if self.queue is not None:
            _family(
                out,
                "nexus_queue_depth",
                "gauge",
                "Requests waiting for a backend slot.",
                ((), [((), self.queue.queue_depth)]),
            )
        accountant = self.accountant
        if accountant is not None:
            accountant.roll()
            _family(
                out,
                "nexus_budget_spend_usd",
                "gauge",
                "Spend this calendar month (UTC), in USD, in-flight estimates included.",
                ((), [((), accountant.spent / 1e9)]),
            )
            if accountant.limit:
                _family(
                    out,
                    "nexus_budget_utilization_ratio",
                    "gauge",
                    "Spend this month divided by routing.budget.monthly_limit_usd.",
                    ((), [((), accountant.spent / accountant.limit)]),
                )
        return "\n".join(out) + "\n"


INF = 'le="+Inf"'


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[Any, ...], extra: str = "") -> str:
    parts = [f'{name}="{_escape(str(value))}"' for name, value in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _family(
    out: list[str],
    name: str,
    kind: str,
    help_text: str,
    samples: tuple[tuple[str, ...], Iterable[tuple[tuple[Any, ...], float]]],
) -> None:
    label_names, values = samples
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")
    for label_values, value in values:
        out.append(f"{name}{_labels(label_names, label_values)} {_number(value)}")


def _histograms(
    out: list[str], name: str, help_text: str, series: dict[tuple[str, str], _Histogram]
) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} histogram")
    names = ("model", "backend")
    for labels, histogram in series.items():
        cumulative = 0
        for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
            cumulative += count
            le = f'le="{bound:g}"'
            out.append(f"{name}_bucket{_labels(names, labels, le)} {cumulative}")
        cumulative += histogram.counts[-1]
        out.append(f"{name}_bucket{_labels(names, labels, INF)} {cumulative}")
        out.append(f"{name}_sum{_labels(names, labels)} {histogram.sum!r}")
        out.append(f"{name}_count{_labels(names, labels)} {cumulative}")
