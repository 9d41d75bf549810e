"""HTTP clients: one pooled aiohttp session for the proxy hot path, httpx for everything else.

The hot-path client was chosen by measurement (see docs/performance.md): behind the same server,
aiohttp's own client carries about twice the requests per second of httpx over an aiohttp
transport and six times httpx's default transport. It is hidden behind ``UpstreamTransport`` so
it can be swapped without touching adapters.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import aiohttp
import httpx

from nexus_core.adapters import BackendError, ErrorKind, Timeouts, UpstreamResponse
from nexus_core.sse import SSEParser

_FINISHED = re.compile(rb'"finish_reason"\s*:\s*"')
_DONE_PREFIXES = (b"data: [DONE]", b"data:[DONE]")


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
        session = self._session
        if session is None or session.closed:
            session = self._get_session()
        connect_timeout = self._connect_timeouts.get(timeouts.connect)
        if connect_timeout is None:
            connect_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect)
            self._connect_timeouts[timeouts.connect] = connect_timeout
        try:
            async with asyncio.timeout(timeouts.first_byte):
                response = await session.post(
                    url,
                    data=body,
                    headers=headers,
                    timeout=connect_timeout,
                )
        except aiohttp.ServerTimeoutError:
            # Before ``TimeoutError``: aiohttp's connect timeout is a subclass of it.
            raise BackendError(
                ErrorKind.TIMEOUT, f"connect timed out after {timeouts.connect:g} s"
            ) from None
        except TimeoutError:
            raise BackendError(
                ErrorKind.TIMEOUT, f"no response within {timeouts.first_byte:g} s"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise BackendError(ErrorKind.CONNECT, f"cannot connect: {exc.os_error}") from None
        except aiohttp.ClientError as exc:
            raise BackendError(ErrorKind.CONNECT, f"connection failed: {exc}") from None

        content_type = response.headers.get("Content-Type", "application/json")
        status = response.status
        try:
            if status >= 300 or not stream or not content_type.startswith("text/event-stream"):
                async with asyncio.timeout(timeouts.first_byte):
                    data = await response.read()
                response.release()
                if status >= 300:
                    raise BackendError.from_status(status, data, _lower_headers(response.headers))
                return UpstreamResponse(status=status, content_type=content_type, body=data)
        except TimeoutError:
            response.close()
            raise BackendError(ErrorKind.TIMEOUT, "response body stalled") from None
        except aiohttp.ClientError as exc:
            response.close()
            raise BackendError(ErrorKind.CONNECT, f"connection lost: {exc}") from None
        except asyncio.CancelledError:
            # The client went away while the body was read: drop the socket so the backend
            # sees it now, not when the response object happens to be collected.
            response.close()
            raise

        async def release() -> None:
            # Closing (not releasing) drops the socket, so the upstream sees the client go away.
            response.close()

        return UpstreamResponse(
            status=status,
            content_type=content_type,
            events=_events(response, timeouts.idle),
            release=release,
        )

    async def aclose(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _events(response: aiohttp.ClientResponse, idle: float) -> AsyncIterator[bytes]:
    """Complete SSE events from the upstream body; errors mid-stream become ``BackendError``."""
    parser = SSEParser()
    content = response.content
    # Complete when [DONE] came or some event carried a finish_reason (servers that omit
    # [DONE] may still send a usage chunk after the finish chunk).
    complete = False
    try:
        while True:
            try:
                async with asyncio.timeout(idle):
                    chunk = await content.readany()
            except TimeoutError:
                raise BackendError(
                    ErrorKind.TIMEOUT, f"stream stalled: no data for {idle:g} s"
                ) from None
            except aiohttp.ClientError as exc:
                raise BackendError(ErrorKind.CONNECT, f"stream broken: {exc}") from None
            if not chunk:
                break
            for event in parser.feed(chunk):
                if not complete:
                    complete = _completes(event)
                yield event
        tail = parser.flush()
        if tail is not None:
            if not complete:
                complete = _completes(tail)
            yield tail
        if not complete:
            raise BackendError(ErrorKind.MALFORMED, "stream ended before the answer was complete")
    finally:
        response.close()


def _completes(event: bytes) -> bool:
    return event.startswith(_DONE_PREFIXES) or _FINISHED.search(event) is not None


def _lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


class HttpClients:
    """The process's HTTP clients, made on first use inside the running event loop."""

    def __init__(self, *, transport: UpstreamTransport | None = None) -> None:
        self.transport: UpstreamTransport = transport or AiohttpTransport()
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
