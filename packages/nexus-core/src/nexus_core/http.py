"""HTTP clients: the hot-path transport (``UpstreamTransport``), and httpx for everything else.

The hot-path client was chosen by measurement (see docs/performance.md): Nexus's own HTTP/1.1
client (``nexus_core.h1``) carries several times the requests per second of aiohttp's client
behind the same server, and aiohttp's about twice httpx's. All three are kept behind
``UpstreamTransport`` and pass the same behavioural tests; ``NEXUS_UPSTREAM_CLIENT`` picks one
(``h1``, the default; ``aiohttp``; ``httpx``), so a backend that trips the leanest client can be
served by a general one without touching adapters.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Protocol

import aiohttp
import httpx

from nexus_core.adapters import BackendError, ErrorKind, Timeouts, UpstreamResponse
from nexus_core.h1 import TRACE_HEADERS as TRACE_HEADERS
from nexus_core.h1 import H1Transport
from nexus_core.sse import SSEParser, completes_answer


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


class AiohttpTransport:
    """``UpstreamTransport`` over one pooled ``aiohttp.ClientSession``."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._connect_timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _get_session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, enable_cleanup_closed=True)
            session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
                timeout=aiohttp.ClientTimeout(total=None),
            )
            self._session = session
        return session

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
        session = self._session
        if session is None or session.closed:
            session = self._get_session()
        connect_timeout = self._connect_timeouts.get(timeouts.connect)
        if connect_timeout is None:
            connect_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect)
            self._connect_timeouts[timeouts.connect] = connect_timeout
        response: aiohttp.ClientResponse | None = None
        try:
            # One deadline for the headers and, when the answer is not a stream, the body.
            async with asyncio.timeout(timeouts.first_byte):
                try:
                    response = await session.post(
                        url, data=body, headers=headers, timeout=connect_timeout
                    )
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                    if isinstance(exc, aiohttp.ClientConnectorError):
                        raise
                    # A pooled keep-alive connection the server had already closed (llama-server
                    # closes after a stream despite advertising keep-alive): once more, afresh.
                    response = await session.post(
                        url, data=body, headers=headers, timeout=connect_timeout
                    )
                status = response.status
                content_type = response.headers.get("Content-Type", "application/json")
                if status >= 300 or not stream or not content_type.startswith("text/event-stream"):
                    data = await response.read()
                    response.release()
                    if status >= 300:
                        raise BackendError.from_status(
                            status, data, _lower_headers(response.headers)
                        )
                    return UpstreamResponse(
                        status=status,
                        content_type=content_type,
                        body=data,
                        headers=response.headers,
                    )
        except aiohttp.ServerTimeoutError:
            # Before ``TimeoutError``: aiohttp's connect timeout is a subclass of it.
            raise BackendError(
                ErrorKind.TIMEOUT, f"connect timed out after {timeouts.connect:g} s"
            ) from None
        except TimeoutError:
            if response is not None:
                response.close()
                raise BackendError(ErrorKind.TIMEOUT, "response body stalled") from None
            raise BackendError(
                ErrorKind.TIMEOUT, f"no response within {timeouts.first_byte:g} s"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise BackendError(ErrorKind.CONNECT, f"cannot connect: {exc.os_error}") from None
        except aiohttp.ClientError as exc:
            if response is not None:
                response.close()
                raise BackendError(ErrorKind.CONNECT, f"connection lost: {exc}") from None
            raise BackendError(ErrorKind.CONNECT, f"connection failed: {exc}") from None
        except asyncio.CancelledError:
            # The client went away: drop the socket so the backend sees it now, not when the
            # response object happens to be collected.
            if response is not None:
                response.close()
            raise

        async def release() -> None:
            # Closing (not releasing) drops the socket, so the upstream sees the client go away.
            response.close()

        return UpstreamResponse(
            status=status,
            content_type=content_type,
            events=sse_events(_aiohttp_chunks(response), timeouts.idle, release),
            release=release,
            headers=response.headers,
        )

    async def aclose(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None


async def sse_events(
    chunks: AsyncIterator[bytes], idle: float, close: Callable[[], Awaitable[None]]
) -> AsyncIterator[bytes]:
    """Complete SSE events from raw body chunks; a stall or a truncated stream raises.

    ``chunks`` raises ``BackendError`` itself for a broken connection; ``close`` runs however
    the iteration ends.
    """
    parser = SSEParser()
    # Complete when [DONE] came or some event carried a finish_reason (servers that omit
    # [DONE] may still send a usage chunk after the finish chunk).
    complete = False
    try:
        while True:
            try:
                async with asyncio.timeout(idle):
                    chunk = await anext(chunks, b"")
            except TimeoutError:
                raise BackendError(
                    ErrorKind.TIMEOUT, f"stream stalled: no data for {idle:g} s"
                ) from None
            if not chunk:
                break
            for event in parser.feed(chunk):
                if not complete:
                    complete = completes_answer(event)
                yield event
        tail = parser.flush()
        if tail is not None:
            if not complete:
                complete = completes_answer(tail)
            yield tail
        if not complete:
            raise BackendError(ErrorKind.MALFORMED, "stream ended before the answer was complete")
    finally:
        await close()


async def _aiohttp_chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    content = response.content
    while True:
        try:
            chunk = await content.readany()
        except aiohttp.ClientError as exc:
            raise BackendError(ErrorKind.CONNECT, f"stream broken: {exc}") from None
        if not chunk:
            return
        yield chunk


def _lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


class HttpxTransport:
    """``UpstreamTransport`` over ``httpx.AsyncClient``: the alternative kept for comparison.

    Correct for streams, timeouts and cancellation like ``AiohttpTransport``, and measurably
    slower (docs/performance.md); pick it with ``NEXUS_UPSTREAM_CLIENT=httpx``.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
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
        response: httpx.Response | None = None
        try:
            async with asyncio.timeout(timeouts.first_byte):
                response = await client.send(request, stream=True)
                status = response.status_code
                content_type = response.headers.get("content-type", "application/json")
                if status >= 300 or not stream or not content_type.startswith("text/event-stream"):
                    data = await response.aread()
                    await response.aclose()
                    if status >= 300:
                        raise BackendError.from_status(status, data, dict(response.headers))
                    return UpstreamResponse(
                        status=status,
                        content_type=content_type,
                        body=data,
                        headers=response.headers,
                    )
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
            events=sse_events(_httpx_chunks(opened), timeouts.idle, release),
            release=release,
            headers=opened.headers,
        )

    async def aclose(self) -> None:
        """Close the client and its connections."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None


async def _httpx_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:
        raise BackendError(ErrorKind.CONNECT, f"stream broken: {exc}") from None


TRANSPORTS: Mapping[str, Callable[[], UpstreamTransport]] = {
    "h1": H1Transport,
    "aiohttp": AiohttpTransport,
    "httpx": HttpxTransport,
}


def make_transport(name: str | None = None) -> UpstreamTransport:
    """The hot-path client named by ``name`` or ``NEXUS_UPSTREAM_CLIENT`` (default h1)."""
    name = (name or os.environ.get("NEXUS_UPSTREAM_CLIENT") or "h1").lower()
    factory = TRANSPORTS.get(name)
    if factory is None:
        raise ValueError(
            f"NEXUS_UPSTREAM_CLIENT: unknown client {name!r} (known: {', '.join(TRANSPORTS)})"
        )
    return factory()


class HttpClients:
    """The process's HTTP clients, made on first use inside the running event loop."""

    def __init__(self, *, transport: UpstreamTransport | None = None) -> None:
        self.transport: UpstreamTransport = transport or make_transport()
        self._probe: httpx.AsyncClient | None = None

    @property
    def probe(self) -> httpx.AsyncClient:
        """An httpx client for probes, admin and detection (not on the request path)."""
        if self._probe is None or self._probe.is_closed:
            self._probe = httpx.AsyncClient(
                timeout=httpx.Timeout(5.0),
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
                trust_env=False,
            )
        return self._probe

    async def aclose(self) -> None:
        """Close every client."""
        await self.transport.aclose()
        if self._probe is not None:
            await self._probe.aclose()
            self._probe = None
