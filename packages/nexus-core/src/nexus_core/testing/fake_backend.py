"""A fake OpenAI-wire backend: a real HTTP server on 127.0.0.1 that misbehaves on cue.

It speaks what vLLM, llama-server, LM Studio and OpenAI speak (``/v1/models``,
``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/health``), records every
request it receives, and notes the moment a client goes away in the middle of an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Awaitable, Coroutine, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

from nexus_core.testing import openai_shapes as shapes

_INFERENCE_PATHS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
#: What a strict chat template raises for a system message that is not first.
SYSTEM_NOT_FIRST = "System message must be at the beginning."
_MALFORMED_JSON = b'{"id": "broken", "object": "chat.completion", "choices": [{"index": 0, "mess'
# How long a handler that dropped its own connection waits to be cancelled by aiohttp.
_DROP_GRACE = 5.0


@dataclass
class Behaviour:
    """How the fake answers. Every field is optional; the defaults give a correct answer.

    A behaviour applies to the inference endpoints (chat, completions, embeddings). With
    ``probes=True`` it also applies to ``GET /health`` and ``GET /v1/models``, so a test can make
    the health check fail while leaving, or not, the requests alone.
    """

    #: HTTP status; 400 and above answers an error envelope instead of a completion.
    status: int = 200
    #: The error body; default: the OpenAI error envelope for ``status``.
    error_body: dict[str, Any] | None = None
    #: Seconds for the ``Retry-After`` header.
    retry_after: float | None = None
    delay_before_headers: float = 0
    delay_between_events: float = 0
    #: Close the TCP connection (RST) without any response.
    reset: bool = False
    #: Accept the request and never answer.
    hang: bool = False
    #: Stream: send this many events, then drop the connection without ``[DONE]``.
    cut_after_events: int | None = None
    #: 200 with a body (or a stream event) that is not valid JSON.
    malformed: bool = False
    #: Stream: end cleanly after the finish (and usage) chunk, but without ``data: [DONE]``.
    omit_done: bool = False
    #: Stream: write each event in several small writes that cross the ``\n\n`` boundaries.
    split_events: bool = False
    #: Stream: ``\r\n`` line ends.
    crlf: bool = False
    #: The assistant's text; default ``"Hello from <name>"``.
    content: str | None = None
    #: Reasoning text before the answer (``reasoning_content`` in the message, or deltas).
    reasoning: str | None = None
    #: Chat: refuse a system message that is not the first message, with a 400, as the strict
    #: chat templates of many models do under llama-server and vLLM.
    system_first: bool = False
    #: Answer with these assistant ``tool_calls`` (finish_reason ``tool_calls``) instead of text.
    tool_calls: list[dict[str, Any]] | None = None
    #: Chat: this ``finish_reason`` instead of the natural one (``length``: cut at max_tokens).
    finish_reason: str | None = None
    #: Merged into the JSON response and into every stream chunk.
    extra_response_fields: dict[str, Any] | None = None
    #: Apply to the next N requests only, then fall back to the default behaviour.
    times: int | None = None
    #: Also apply to ``GET /health`` and ``GET /v1/models``.
    probes: bool = False
    #: Also apply to the server's model lifecycle endpoints (its fake's ``lifecycle_paths``:
    #: load, unload, the lists of what it could serve), and only to them unless ``probes``.
    lifecycle: bool = False


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    query: dict[str, str] = field(default_factory=dict)
    #: ``time.monotonic()`` when the request was received.
    received_at: float = 0.0

    @property
    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass
class _Queued:
    behaviour: Behaviour
    left: int


class _Exchange:
    """Per-request state: whether the fake itself dropped the connection."""

    __slots__ = ("dropped",)

    def __init__(self) -> None:
        self.dropped = False


class _Done:
    """An awaitable that is already complete (what thread-mode ``start``/``stop`` return)."""

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield


class FakeBackend:
    """A fake OpenAI-compatible server on ``127.0.0.1``.

    Fakes of other servers subclass it: ``inference_paths`` adds their own request paths (which
    behaviours apply to), ``public_paths`` the paths open without the API key, ``route`` answers
    their own endpoints before the OpenAI ones, ``error_body`` gives their error shape (the 401
    for a missing key included) and ``response_headers`` their extra headers.

    ``async with FakeBackend() as fb:`` runs it in the current event loop;
    ``with FakeBackend().running() as fb:`` runs it in its own loop in a daemon thread, for
    synchronous tests and for a gateway running in another thread. ``behave``, ``push``,
    ``reset`` and the recorded lists are safe to use from any thread.
    """

    #: Paths whose requests are inference (behaviours apply), and what kind each is.
    inference_paths: Mapping[str, str] = _INFERENCE_PATHS
    #: Paths answered without the API key; the others get ``error_body(401)`` without it.
    public_paths: frozenset[str] = frozenset({"/health"})
    #: Paths of the server's model lifecycle API, which ``Behaviour(lifecycle=True)`` applies to.
    lifecycle_paths: frozenset[str] = frozenset()
    #: Chat answers say how many prompt tokens came from the server's prompt cache
    #: (``usage.prompt_tokens_details.cached_tokens``), as llama-server, vLLM and OpenAI do.
    reports_cached_tokens: bool = False
    #: Prompts the fake's prompt cache remembers (a server's slots): ``cached_prompt_tokens``.
    prompt_cache_slots: int = 4
    #: Shorter prompts say nothing of the cache (OpenAI caches prompts of 1,024 tokens or more).
    cache_min_prompt_tokens: int = 0

    def __init__(
        self,
        name: str = "fake",
        models: Sequence[str | Mapping[str, Any]] = ("fake-model",),
        *,
        behaviour: Behaviour | None = None,
        embeddings_dim: int = 8,
        api_key: str | None = None,
        port: int = 0,
    ) -> None:
        self.name = name
        #: The models served; may be changed at run time (the next ``/v1/models`` shows it).
        self.models: list[str | Mapping[str, Any]] = list(models)
        self.embeddings_dim = embeddings_dim
        #: When set, endpoints outside ``public_paths`` need ``Authorization: Bearer <api_key>``.
        self.api_key = api_key
        #: While True the server answers 503 "Loading model" (llama-server's shape) everywhere.
        self.loading = False
        self.requests: list[RecordedRequest] = []
        #: ``time.monotonic()`` of each moment a client went away before its answer was complete.
        self.disconnects: list[float] = []
        self._port = port
        self._created = int(time.time())
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._disconnected = threading.Condition(self._lock)
        self._default = Behaviour()
        self._queue: deque[_Queued] = deque()
        self._runner: web.AppRunner | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        #: The last chat prompts, newest last: the fake's prompt cache.
        self._prompts: deque[list[Any]] = deque(maxlen=self.prompt_cache_slots)
        if behaviour is not None:
            self.behave(behaviour)

    def cached_prompt_tokens(self, messages: Sequence[Any]) -> int:
        """Tokens of the longest run of leading messages ``messages`` shares with one of the
        last ``prompt_cache_slots`` prompts this server saw (what a server's KV cache would
        serve: the earlier turns of the same conversation), then remembers ``messages``."""
        best = 0
        for seen in self._prompts:
            shared = 0
            for old, new in zip(seen, messages, strict=False):
                if old != new:
                    break
                shared += 1
            best = max(best, shared)
        self._prompts.append(list(messages))
        return shapes.count_tokens(list(messages[:best])) if best else 0

    # -- what tests read and steer -----------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port (known once started; kept across a stop and restart)."""
        if not self._port:
            raise RuntimeError("the fake backend has not been started")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no ``/v1``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def inference_requests(self) -> list[RecordedRequest]:
        """The requests to chat, completions and embeddings (not health checks or model lists)."""
        return [r for r in list(self.requests) if r.path in self.inference_paths]

    def behave(self, behaviour: Behaviour) -> None:
        """Set the default behaviour (or, if ``behaviour.times`` is set, queue it like ``push``)."""
        if behaviour.times is not None:
            self.push(behaviour)
            return
        with self._lock:
            self._default = behaviour

    def push(self, behaviour: Behaviour) -> None:
        """Apply ``behaviour`` to the next request (or next ``times`` requests), then revert."""
        times = 1 if behaviour.times is None else behaviour.times
        if times > 0:
            with self._lock:
                self._queue.append(_Queued(behaviour, times))

    def reset(self) -> None:
        """Forget recorded requests and disconnects; back to the default, correct behaviour."""
        with self._lock:
            self.requests.clear()
            self.disconnects.clear()
            self._queue.clear()
            self._default = Behaviour()
            self.loading = False

    def wait_disconnect(self, timeout: float, count: int = 1) -> bool:
        """Block until ``count`` disconnects are recorded; False if ``timeout`` passes first."""
        with self._disconnected:
            return self._disconnected.wait_for(lambda: len(self.disconnects) >= count, timeout)

    async def wait_for_disconnect(self, timeout: float, count: int = 1) -> bool:  # noqa: ASYNC109
        """Wait (without blocking the loop) until ``count`` disconnects are recorded."""
        deadline = time.monotonic() + timeout
        while len(self.disconnects) < count:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.002)
        return True

    # -- life cycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def running(self) -> Iterator[Self]:
        """Run the server in its own event loop in a daemon thread for the ``with`` block."""
        if self._thread is not None or self._runner is not None:
            raise RuntimeError("the fake backend is already running")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=loop.run_forever, name=f"FakeBackend-{self.name}", daemon=True
        )
        self._loop, self._thread = loop, thread
        thread.start()
        try:
            self.start()
            yield self
        finally:
            try:
                self.stop()
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout=5)
                loop.close()
                self._loop = self._thread = None

    def start(self) -> Awaitable[None]:
        """Start listening (again, on the same port after a ``stop``).

        In thread mode this blocks until the server listens (awaiting the result is optional);
        in the current loop, await it.
        """
        return self._in_own_loop(self._start())

    def stop(self) -> Awaitable[None]:
        """Stop listening and drop every open connection (no disconnects are recorded).

        In thread mode this blocks until done (awaiting the result is optional); in the current
        loop, await it.
        """
        return self._in_own_loop(self._stop())

    def _in_own_loop(self, coroutine: Coroutine[Any, Any, None]) -> Awaitable[None]:
        if self._loop is None or threading.current_thread() is self._thread:
            return coroutine
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)
        return _Done()

    async def _start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        app.on_response_prepare.append(self._add_response_headers)
        # handler_cancellation: a handler is cancelled when its client goes away, which is how
        # the fake notices a disconnect while it waits (delay, hang) between writes.
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5
        )
        await runner.setup()
        # A deep accept queue: a load test opens hundreds of connections at once.
        site = web.TCPSite(runner, "127.0.0.1", self._port, reuse_address=True, backlog=2048)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        if self._port == 0:
            self._port = int(runner.addresses[0][1])
        self._stopping = False
        self._runner = runner

    async def _stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping = True
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await runner.cleanup()

    # -- serving -------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path = request.path
        record = RecordedRequest(
            method=request.method,
            path=path,
            headers={key.lower(): value for key, value in request.headers.items()},
            body=body,
            query=dict(request.query),
            received_at=time.monotonic(),
        )
        with self._lock:
            self.requests.append(record)
        kind = self.inference_paths.get(path) if request.method == "POST" else None
        behaviour = self._next_behaviour(
            inference=kind is not None, lifecycle=path in self.lifecycle_paths
        )
        exchange = _Exchange()
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            return await self._answer(request, body, kind, behaviour, exchange)
        except asyncio.CancelledError:
            if not exchange.dropped:
                self._note_disconnect()
            raise
        except ConnectionResetError:
            if exchange.dropped:
                raise
            # A write failed: the client closed mid-answer. aiohttp cancels us in a moment.
            self._note_disconnect()
            exchange.dropped = True
            await asyncio.sleep(_DROP_GRACE)
            raise
        finally:
            if task is not None:
                self._handlers.discard(task)

    def _next_behaviour(self, *, inference: bool, lifecycle: bool = False) -> Behaviour:
        with self._lock:
            if self._queue:
                head = self._queue[0]
                if _applies(head.behaviour, inference=inference, lifecycle=lifecycle):
                    head.left -= 1
                    if head.left <= 0:
                        self._queue.popleft()
                    return head.behaviour
            if _applies(self._default, inference=inference, lifecycle=lifecycle):
                return self._default
            return _CORRECT

    def _note_disconnect(self) -> None:
        if self._stopping:
            return
        with self._disconnected:
            self.disconnects.append(time.monotonic())
            self._disconnected.notify_all()

    async def _answer(
        self,
        request: web.Request,
        body: bytes,
        kind: str | None,
        behaviour: Behaviour,
        exchange: _Exchange,
    ) -> web.StreamResponse:
        if behaviour.delay_before_headers:
            await asyncio.sleep(behaviour.delay_before_headers)
        if behaviour.reset:
            await _drop(request, exchange, reset=True)
        if behaviour.hang:
            await asyncio.get_running_loop().create_future()
        if self.loading:
            return _json(
                {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}},
                503,
            )
        path, method = request.path, request.method
        if (
            self.api_key is not None
            and path not in self.public_paths
            and request.headers.get("Authorization") != f"Bearer {self.api_key}"
        ):
            return _json(self.error_body(401), 401)
        if behaviour.status >= 400:
            error = behaviour.error_body
            if error is None:
                error = self.error_body(behaviour.status)
            headers = {}
            if behaviour.retry_after is not None:
                headers["Retry-After"] = f"{behaviour.retry_after:g}"
            return _json(error, behaviour.status, headers)

        custom = await self.route(request, body, kind, behaviour, exchange)
        if custom is not None:
            return custom
        if method == "GET" and path == "/health":
            return self._ok(behaviour, {"status": "ok"}, extra=False)
        if method == "GET" and path == "/v1/models":
            cards = [
                shapes.model_card(entry, created=self._created, owned_by=self.name)
                for entry in self.models
            ]
            return self._ok(behaviour, {"object": "list", "data": cards}, extra=False)
        if method == "GET" and path.startswith("/v1/models/"):
            wanted = path.removeprefix("/v1/models/")
            for entry in self.models:
                card = shapes.model_card(entry, created=self._created, owned_by=self.name)
                if card["id"] == wanted:
                    return self._ok(behaviour, card, extra=False)
            return _json(shapes.model_not_found(wanted), 404)
        if kind is None:
            return _json(
                shapes.error_body(f"Invalid URL ({method} {path})", "invalid_request_error"), 404
            )

        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return _json(
                shapes.error_body(
                    "We could not parse the JSON body of your request. (HINT: This likely means"
                    " you aren't using your HTTP library correctly. The OpenAI API expects a JSON"
                    " payload, but what was sent was not valid JSON.)",
                    "invalid_request_error",
                ),
                400,
            )
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            return _json(
                shapes.error_body(
                    "you must provide a model parameter", "invalid_request_error", param="model"
                ),
                400,
            )
        if model not in self._model_ids():
            return _json(shapes.model_not_found(model), 404)
        if kind == "embeddings":
            return self._embeddings(behaviour, payload, model)
        return await self._generate(request, behaviour, payload, model, kind, exchange)

    # -- what subclasses for other servers override ----------------------------------------------

    async def route(
        self,
        request: web.Request,
        body: bytes,
        kind: str | None,
        behaviour: Behaviour,
        exchange: _Exchange,
    ) -> web.StreamResponse | None:
        """Answer a server-specific endpoint, or None to fall through to the OpenAI ones."""
        return None

    def error_body(self, status: int) -> dict[str, Any]:
        """The error body this server sends for ``status`` (OpenAI's envelope here)."""
        return shapes.default_error(status)

    def template_refusal(self, behaviour: Behaviour, messages: list[Any]) -> web.Response | None:
        """With ``behaviour.system_first``, the 400 a strict chat template causes when a system
        message is not first (the template's own words); else None."""
        if not behaviour.system_first:
            return None
        for index, message in enumerate(messages):
            if index and isinstance(message, dict) and message.get("role") == "system":
                return self.template_error(SYSTEM_NOT_FIRST)
        return None

    def template_error(self, message: str) -> web.Response:
        """A chat template's refusal in this server's error shape (400)."""
        return _json(shapes.error_body(message, "invalid_request_error"), 400)

    def response_headers(self, request: web.Request) -> Mapping[str, str]:
        """Headers this server adds to every response (rate limits, versions...); none here."""
        return {}

    async def _add_response_headers(
        self, request: web.Request, response: web.StreamResponse
    ) -> None:
        # Streams are prepared before their first write, so headers can only go in here.
        response.headers.update(self.response_headers(request))

    def _model_ids(self) -> set[str]:
        return {
            entry if isinstance(entry, str) else str(entry.get("id")) for entry in list(self.models)
        }

    def _ok(self, behaviour: Behaviour, value: dict[str, Any], *, extra: bool) -> web.Response:
        if behaviour.malformed:
            return web.Response(
                body=_MALFORMED_JSON, status=behaviour.status, content_type="application/json"
            )
        if extra and behaviour.extra_response_fields:
            value = {**value, **behaviour.extra_response_fields}
        headers = {}
        if behaviour.retry_after is not None:
            headers["Retry-After"] = f"{behaviour.retry_after:g}"
        return _json(value, behaviour.status, headers)

    def _embeddings(
        self, behaviour: Behaviour, payload: dict[str, Any], model: str
    ) -> web.Response:
        raw = payload.get("input")
        if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)):
            inputs: list[Any] = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(i, str | list) for i in raw):
            inputs = raw
        else:
            return _json(
                shapes.error_body(
                    "'input' must be a string, an array of strings or an array of token arrays",
                    "invalid_request_error",
                    param="input",
                ),
                400,
            )
        encoding = payload.get("encoding_format")
        response = shapes.embeddings_response(
            model=model,
            inputs=inputs,
            dim=self.embeddings_dim,
            encoding_format=encoding if isinstance(encoding, str) else None,
        )
        return self._ok(behaviour, response, extra=True)

    async def _generate(
        self,
        request: web.Request,
        behaviour: Behaviour,
        payload: dict[str, Any],
        model: str,
        kind: str,
        exchange: _Exchange,
    ) -> web.StreamResponse:
        stream = payload.get("stream") is True
        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        content = behaviour.content if behaviour.content is not None else f"Hello from {self.name}"
        created = int(time.time())
        number = next(self._ids)
        if kind == "chat":
            messages = payload.get("messages")
            if not isinstance(messages, list):
                return _json(
                    shapes.error_body(
                        "'messages' is a required property",
                        "invalid_request_error",
                        param="messages",
                    ),
                    400,
                )
            refusal = self.template_refusal(behaviour, messages)
            if refusal is not None:
                return refusal
            completion_id = f"chatcmpl-{self.name}-{number}"
            prompt_tokens = max(1, shapes.count_tokens(messages))
            cached = (
                self.cached_prompt_tokens(messages)
                if self.reports_cached_tokens and prompt_tokens >= self.cache_min_prompt_tokens
                else None
            )
            if not stream:
                answer = shapes.chat_completion(
                    completion_id=completion_id,
                    model=model,
                    created=created,
                    content=content,
                    tool_calls=behaviour.tool_calls,
                    prompt_tokens=prompt_tokens,
                    reasoning=behaviour.reasoning,
                    finish_reason=behaviour.finish_reason,
                )
                shapes.add_cached_tokens(answer, cached)
                return self._ok(behaviour, answer, extra=True)
            chunks = shapes.chat_chunks(
                completion_id=completion_id,
                model=model,
                created=created,
                content=content,
                tool_calls=behaviour.tool_calls,
                prompt_tokens=prompt_tokens,
                include_usage=include_usage,
                reasoning=behaviour.reasoning,
                finish_reason=behaviour.finish_reason,
            )
            shapes.add_cached_tokens(chunks[-1], cached)
        else:
            completion_id = f"cmpl-{self.name}-{number}"
            prompt_tokens = max(1, shapes.count_tokens(payload.get("prompt", "")))
            if not stream:
                answer = shapes.text_completion(
                    completion_id=completion_id,
                    model=model,
                    created=created,
                    text=content,
                    prompt_tokens=prompt_tokens,
                )
                return self._ok(behaviour, answer, extra=True)
            chunks = shapes.completion_chunks(
                completion_id=completion_id,
                model=model,
                created=created,
                text=content,
                prompt_tokens=prompt_tokens,
                include_usage=include_usage,
            )
        return await _stream(request, behaviour, chunks, exchange)


_CORRECT = Behaviour()


def _applies(behaviour: Behaviour, *, inference: bool, lifecycle: bool) -> bool:
    """Whether ``behaviour`` is for this request: inference (unless it is for the lifecycle
    endpoints), a lifecycle endpoint when it says so, anything else with ``probes``."""
    if lifecycle and behaviour.lifecycle:
        return True
    if inference:
        return not behaviour.lifecycle
    return behaviour.probes


def _json(value: Any, status: int, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=shapes.dumps(value),
        status=status,
        content_type="application/json",
        headers=headers,
    )


async def _stream(
    request: web.Request,
    behaviour: Behaviour,
    chunks: list[dict[str, Any]],
    exchange: _Exchange,
) -> web.StreamResponse:
    """Write ``chunks`` as SSE events, misbehaving as ``behaviour`` says."""
    end = b"\r\n" if behaviour.crlf else b"\n"
    extra = behaviour.extra_response_fields or {}
    events = [b"data: " + shapes.dumps({**chunk, **extra}) + end + end for chunk in chunks]
    if behaviour.malformed and len(events) > 1:
        events[1] = b'data: {"id": "broken", "choices": [{"delta": {"content": "x' + end + end
    if not behaviour.omit_done:
        events.append(b"data: [DONE]" + end + end)
    cut = behaviour.cut_after_events
    if cut is not None:
        events = events[:cut]

    headers = dict(_SSE_HEADERS)
    if behaviour.retry_after is not None:
        headers["Retry-After"] = f"{behaviour.retry_after:g}"
    response = web.StreamResponse(status=behaviour.status, headers=headers)
    await response.prepare(request)
    carry = b""
    for index, event in enumerate(events):
        if index and behaviour.delay_between_events:
            await asyncio.sleep(behaviour.delay_between_events)
        if not behaviour.split_events:
            await response.write(event)
            continue
        # Pieces cut inside "data:", in the middle, and between the two line ends closing the
        # event; the last byte travels with the start of the next event.
        middle = len(event) // 2
        pieces = (carry + event[:3], event[3:middle], event[middle:-1])
        carry = event[-1:]
        for piece in pieces:
            await response.write(piece)
            await asyncio.sleep(0.001)
    if carry:
        await response.write(carry)
    if cut is not None:
        await _drop(request, exchange, reset=False)
    await response.write_eof()
    return response


async def _drop(request: web.Request, exchange: _Exchange, *, reset: bool) -> None:
    """Close the connection under the handler: RST with ``reset``, else FIN after what was sent.

    aiohttp then cancels the handler (``handler_cancellation``), which is where this ends.
    """
    exchange.dropped = True
    transport = request.transport
    if transport is not None:
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()  # flushes what is buffered, then FIN
    await asyncio.sleep(_DROP_GRACE)
    raise ConnectionResetError("the fake backend dropped the connection")
