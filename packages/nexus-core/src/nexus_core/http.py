"""HTTP clients: the hot-path transport (``UpstreamTransport``), and httpx for everything else.

The hot-path client was chosen by measurement (see docs/performance.md): Nexus's own HTTP/1.1
client (``nexus_core.h1``) carries several times the requests per second of aiohttp's client
behind the same server, and aiohttp's about twice httpx's. All three are kept behind
``UpstreamTransport`` and pass the same behavioural tests; ``NEXUS_UPSTREAM_CLIENT`` picks one
(``h1``, the default; ``aiohttp``; ``httpx``), so a backend that trips the leanest client can be
served by a general one without touching adapters.

Every client bounds what it reads from a backend (``ResponseLimits``, from ``[server]``): the
headers, a whole body, one SSE event; the probe client (``HttpClients.probe``) bounds each answer's
size and total time too, so a backend that floods or drip-feeds cannot grow memory or hang a probe.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import httpx

from nexus_core.adapters import (
    BackendError,
    ErrorKind,
    ResponseLimits,
    Timeouts,
    UpstreamResponse,
)
from nexus_core.buffers import gather, joined
from nexus_core.h1 import BODY_PIECES, H1Transport, stalled
from nexus_core.h1 import TRACE_HEADERS as TRACE_HEADERS
from nexus_core.sse import DONE_PREFIXES, EventTooLarge, SSEParser, completes_answer

if TYPE_CHECKING:
    from nexus_core.http_aiohttp import AiohttpTransport as AiohttpTransport

#: The longest a probe client's answer may take, from the request to its last byte (seconds);
#: per read, connect and write the probe timeout (5 s) applies as well.
PROBE_DEADLINE_SECONDS: Final = 10.0
#: The longest one answer to the lifecycle client may take (a call gives its own, shorter, time).
LIFECYCLE_DEADLINE_SECONDS: Final = 3600.0


class UpstreamTransport(Protocol):
    """The one operation the request path needs from an HTTP client."""

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        stream: bool,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        """POST ``body``; return a 2xx response or raise ``BackendError``."""
        ...

    async def aclose(self) -> None:
        """Close pooled connections."""
        ...


class TransportFactory(Protocol):
    """How an ``UpstreamTransport`` is made (the classes below are such factories)."""

    def __call__(self, *, limits: ResponseLimits | None = None) -> UpstreamTransport: ...


async def sse_events(
    chunks: AsyncIterator[bytes],
    timeouts: Timeouts,
    close: Callable[[], Awaitable[None]],
    *,
    deadline: float,
    limits: ResponseLimits,
) -> AsyncIterator[bytes]:
    """Complete SSE events from raw body chunks, up to ``[DONE]`` (nothing after it is read).

    The first event is due by ``deadline`` (the loop's clock: the request's first-byte deadline),
    each next one within ``timeouts.idle`` of being asked for; bytes that complete no event
    (comments, part of one) do not count. A stall, an event past ``limits.event`` or a truncated
    stream raises ``BackendError``; ``chunks`` raises it itself for a broken connection. ``close``
    runs however the iteration ends.
    """
    parser = SSEParser(limits.event)
    loop = asyncio.get_running_loop()
    # When the next event is due; None: "idle from now", fixed at the first wait for it.
    due: float | None = deadline
    started = False
    # Complete when [DONE] came or some event carried a finish_reason (servers that omit
    # [DONE] may still send a usage chunk after the finish chunk).
    complete = False
    try:
        while True:
            if due is None:
                due = loop.time() + timeouts.idle
                started = True
            try:
                async with asyncio.timeout_at(due):
                    chunk = await anext(chunks, b"")
            except TimeoutError:
                raise stalled(started, timeouts.first_byte, timeouts.idle) from None
            if not chunk:
                break
            try:
                events = parser.feed(chunk)
            except EventTooLarge as exc:
                events = exc.events
                too_large = True
            else:
                too_large = False
            for event in events:
                if len(event) < 16 and event.startswith(DONE_PREFIXES):  # [DONE] is 13-14 B
                    yield event
                    return
                if not complete:
                    complete = completes_answer(event)
                yield event
                due = None
            if too_large:
                raise limits.event_error()
        tail = parser.flush()
        if tail is not None:
            if not complete:
                complete = completes_answer(tail)
            yield tail
        if not complete:
            raise BackendError(ErrorKind.MALFORMED, "stream ended before the answer was complete")
    finally:
        await close()


async def read_bounded(
    chunks: AsyncIterable[bytes], announced: int | None, limits: ResponseLimits
) -> bytes:
    """A whole body, refused (``TOO_LARGE``) as soon as it is announced or read past the limit."""
    if announced is not None and announced > limits.body:
        raise limits.body_error()
    parts: list[bytes | bytearray] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limits.body:
            raise limits.body_error()
        if len(parts) < BODY_PIECES:
            parts.append(chunk)
        else:
            gather(parts, chunk)
    return joined(parts)


def _header_size(raw: Iterable[tuple[bytes, bytes]]) -> int:
    return sum(len(name) + len(value) for name, value in raw)


def _lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


class HttpxTransport:
    """``UpstreamTransport`` over ``httpx.AsyncClient``: the alternative kept for comparison.

    Correct for streams, timeouts and cancellation like ``AiohttpTransport``, and measurably
    slower (docs/performance.md); pick it with ``NEXUS_UPSTREAM_CLIENT=httpx``. Its HTTP/1.1
    parser (h11, through httpcore) refuses a head of more than 100 KiB while parsing; the
    ``headers`` limit is checked once they are in.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        limits: ResponseLimits | None = None,
    ) -> None:
        self.limits = limits or ResponseLimits()
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    def _get_client(self) -> httpx.AsyncClient:
        client = self._client
        if client is None or client.is_closed:
            client = httpx.AsyncClient(
                timeout=None,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=1000),
                trust_env=False,
                transport=self._transport,
            )
            self._client = client
        return client

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        stream: bool,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        """POST and classify the answer; a stream comes back as an event iterator."""
        trace_headers = TRACE_HEADERS.get()
        if trace_headers is not None:
            headers = {**headers, **dict(trace_headers)}
        client = self._get_client()
        request = client.build_request(
            "POST",
            url,
            content=body,
            headers=headers,
            timeout=httpx.Timeout(None, connect=timeouts.connect),
        )
        limits = self.limits
        response: httpx.Response | None = None
        deadline = asyncio.get_running_loop().time() + timeouts.first_byte
        try:
            async with asyncio.timeout_at(deadline):
                response = await client.send(request, stream=True, follow_redirects=False)
                if _header_size(response.headers.raw) > limits.headers:
                    raise limits.headers_error()
                status = response.status_code
                content_type = response.headers.get("content-type", "application/json")
                if status < 200:
                    raise BackendError.from_status(status, b"", dict(response.headers))
                if status >= 300 or not stream or not content_type.startswith("text/event-stream"):
                    data = await _read_httpx(response, limits)
                    await response.aclose()
                    if status >= 300:
                        raise BackendError.from_status(status, data, dict(response.headers))
                    return UpstreamResponse(
                        status=status,
                        content_type=content_type,
                        body=data,
                        headers=response.headers,
                    )
        except BackendError:
            if response is not None:
                await response.aclose()
            raise
        except httpx.ConnectTimeout:
            raise BackendError(
                ErrorKind.TIMEOUT, f"connect timed out after {timeouts.connect:g} s"
            ) from None
        except TimeoutError:
            if response is not None:
                await response.aclose()
                raise BackendError(ErrorKind.TIMEOUT, "response body stalled") from None
            raise BackendError(
                ErrorKind.TIMEOUT, f"no response within {timeouts.first_byte:g} s"
            ) from None
        except httpx.ConnectError as exc:
            raise BackendError(ErrorKind.CONNECT, f"cannot connect: {exc}") from None
        except httpx.RemoteProtocolError as exc:
            if response is not None:
                await response.aclose()
            raise _protocol_error(exc, limits) from None
        except httpx.HTTPError as exc:
            if response is not None:
                await response.aclose()
                raise BackendError(ErrorKind.CONNECT, f"connection lost: {exc}") from None
            raise BackendError(ErrorKind.CONNECT, f"connection failed: {exc}") from None
        except asyncio.CancelledError:
            if response is not None:
                await response.aclose()
            raise

        opened = response

        async def release() -> None:
            await opened.aclose()

        return UpstreamResponse(
            status=status,
            content_type=content_type,
            events=sse_events(
                _httpx_chunks(opened), timeouts, release, deadline=deadline, limits=limits
            ),
            release=release,
            headers=opened.headers,
        )

    async def aclose(self) -> None:
        """Close the client and its connections."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _protocol_error(exc: httpx.RemoteProtocolError, limits: ResponseLimits) -> BackendError:
    """What h11's complaint about an answer means for failover."""
    message = str(exc)
    if "Receive buffer too long" in message:  # h11's limit on an incomplete head
        return limits.headers_error()
    if "disconnected" in message:  # "Server disconnected without sending a response."
        return BackendError(ErrorKind.CONNECT, f"connection lost: {message}")
    return BackendError(
        ErrorKind.MALFORMED, f"the backend's answer is not valid HTTP: {message[:200]}"
    )


async def _read_httpx(response: httpx.Response, limits: ResponseLimits) -> bytes:
    """A whole body within ``limits`` (httpx's own errors pass through to the caller)."""
    length = response.headers.get("content-length")
    announced = int(length) if length is not None and length.isdigit() else None
    return await read_bounded(response.aiter_raw(), announced, limits)


async def _httpx_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:
        raise BackendError(ErrorKind.CONNECT, f"stream broken: {exc}") from None


class UpstreamClientError(ValueError):
    """``NEXUS_UPSTREAM_CLIENT`` names a client that is unknown or not installed."""


def _aiohttp_transport(*, limits: ResponseLimits | None = None) -> UpstreamTransport:
    """``nexus_core.http_aiohttp.AiohttpTransport``, imported only when it is chosen.

    aiohttp is the optional extra ``nexusgw-core[aiohttp]``: importing it costs more than the
    rest of ``import nexus_core``, and the default client does not need it.
    """
    try:
        from nexus_core.http_aiohttp import AiohttpTransport
    except ModuleNotFoundError as exc:
        if exc.name != "aiohttp":
            raise
        raise UpstreamClientError(
            "NEXUS_UPSTREAM_CLIENT=aiohttp needs aiohttp, which is not installed: "
            "pip install 'nexusgw-core[aiohttp]'"
        ) from None
    return AiohttpTransport(limits=limits)


TRANSPORTS: Mapping[str, TransportFactory] = {
    "h1": H1Transport,
    "aiohttp": _aiohttp_transport,
    "httpx": HttpxTransport,
}


def make_transport(
    name: str | None = None, *, limits: ResponseLimits | None = None
) -> UpstreamTransport:
    """The hot-path client named by ``name`` or ``NEXUS_UPSTREAM_CLIENT`` (default h1)."""
    name = (name or os.environ.get("NEXUS_UPSTREAM_CLIENT") or "h1").lower()
    factory = TRANSPORTS.get(name)
    if factory is None:
        raise UpstreamClientError(
            f"NEXUS_UPSTREAM_CLIENT: unknown client {name!r} (known: {', '.join(TRANSPORTS)})"
        )
    return factory(limits=limits)


class ResponseTooLarge(httpx.RemoteProtocolError):
    """A probe client's answer past ``ResponseLimits`` (headers or body)."""


class BoundedTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose every answer is bounded in size and in total time.

    Wraps another (``inner``): the headers must be within ``limits.headers``, the body within
    ``limits.body`` (refused when announced bigger, cut when read bigger), and the whole answer,
    from the request to its last byte, within ``seconds``; past the time, ``httpx.ReadTimeout``.
    httpx's own timeouts are per read, so a body drip-fed a byte at a time never trips them.
    """

    def __init__(
        self, inner: httpx.AsyncBaseTransport, limits: ResponseLimits, seconds: float
    ) -> None:
        self.inner = inner
        self.limits = limits
        self.seconds = seconds

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send through ``inner``; the answer's stream enforces the limits as it is read."""
        deadline = asyncio.get_running_loop().time() + self.seconds
        try:
            async with asyncio.timeout_at(deadline):
                response = await self.inner.handle_async_request(request)
        except TimeoutError:
            raise httpx.ReadTimeout(
                f"no answer within {self.seconds:g} s", request=request
            ) from None
        limits = self.limits
        refusal = None
        if _header_size(response.headers.raw) > limits.headers:
            refusal = limits.headers_error()
        else:
            length = response.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > limits.body:
                refusal = limits.body_error()
        if refusal is not None:
            await response.aclose()
            raise ResponseTooLarge(refusal.message, request=request)
        response.stream = _BoundedStream(response, request, limits, deadline, self.seconds)
        return response

    async def aclose(self) -> None:
        """Close ``inner``."""
        await self.inner.aclose()


#: What a closed probe answer's stream is replaced with.
_CLOSED = httpx.ByteStream(b"")


class _BoundedStream(httpx.AsyncByteStream):
    """A response body read within a size limit and a deadline."""

    def __init__(
        self,
        response: httpx.Response,
        request: httpx.Request,
        limits: ResponseLimits,
        deadline: float,
        seconds: float,
    ) -> None:
        assert isinstance(response.stream, httpx.AsyncByteStream)
        self.inner = response.stream
        self.response: httpx.Response | None = response
        self.request = request
        self.limits = limits
        self.deadline = deadline
        self.seconds = seconds

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = aiter(self.inner)
        size = 0
        while True:
            try:
                async with asyncio.timeout_at(self.deadline):
                    chunk = await anext(chunks, None)
            except TimeoutError:
                raise httpx.ReadTimeout(
                    f"the answer was not complete within {self.seconds:g} s", request=self.request
                ) from None
            if chunk is None:
                return
            size += len(chunk)
            if size > self.limits.body:
                raise ResponseTooLarge(self.limits.body_error().message, request=self.request)
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()
        # httpx wraps this stream in one that refers back to the response (a cycle only the
        # collector would free): once the body is read and closed, the response lets go of it.
        response, self.response = self.response, None
        if response is not None:
            response.stream = _CLOSED


class HttpClients:
    """The process's HTTP clients, made on first use inside the running event loop.

    ``limits`` bound what every client reads from a backend (the defaults are ``[server]``'s;
    the ``Gateway`` passes its configuration's). ``probe_deadline``: the longest one answer to
    the probe client may take, to its last byte.
    """

    def __init__(
        self,
        *,
        transport: UpstreamTransport | None = None,
        limits: ResponseLimits | None = None,
        probe_deadline: float = PROBE_DEADLINE_SECONDS,
    ) -> None:
        self.limits = limits or ResponseLimits()
        self.transport: UpstreamTransport = transport or make_transport(limits=self.limits)
        self.probe_deadline = probe_deadline
        self._probe: httpx.AsyncClient | None = None
        self._lifecycle: httpx.AsyncClient | None = None

    @property
    def probe(self) -> httpx.AsyncClient:
        """An httpx client for probes, admin and detection (not on the request path).

        Redirects are not followed; each answer is bounded (``BoundedTransport``).
        """
        if self._probe is None or self._probe.is_closed:
            inner = httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50)
            )
            self._probe = httpx.AsyncClient(
                timeout=httpx.Timeout(5.0),
                transport=BoundedTransport(inner, self.limits, self.probe_deadline),
                trust_env=False,
            )
        return self._probe

    @property
    def lifecycle(self) -> httpx.AsyncClient:
        """An httpx client for model loads and unloads, whose answers may take minutes.

        Bounded in size like ``probe``; each call gives its own timeout (``adapter_kit``'s
        ``lifecycle_call``), and no answer may take more than ``LIFECYCLE_DEADLINE_SECONDS``.
        """
        if self._lifecycle is None or self._lifecycle.is_closed:
            inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=20))
            self._lifecycle = httpx.AsyncClient(
                timeout=httpx.Timeout(5.0),
                transport=BoundedTransport(inner, self.limits, LIFECYCLE_DEADLINE_SECONDS),
                trust_env=False,
            )
        return self._lifecycle

    async def aclose(self) -> None:
        """Close every client."""
        await self.transport.aclose()
        if self._probe is not None:
            await self._probe.aclose()
            self._probe = None
        if self._lifecycle is not None:
            await self._lifecycle.aclose()
            self._lifecycle = None


def __getattr__(name: str) -> Any:
    """``AiohttpTransport`` still imports from here, but only loads aiohttp when asked for."""
    if name == "AiohttpTransport":
        from nexus_core.http_aiohttp import AiohttpTransport

        return AiohttpTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
