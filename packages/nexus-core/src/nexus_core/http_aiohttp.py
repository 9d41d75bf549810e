"""The aiohttp upstream client (``NEXUS_UPSTREAM_CLIENT=aiohttp``), an alternative to ``h1``.

Needs the extra ``nexusgw-core[aiohttp]``; ``nexus_core.http.make_transport`` imports this module
only when aiohttp's client is chosen, so ``import nexus_core`` never loads aiohttp.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import aiohttp

from nexus_core.adapters import (
    BackendError,
    ErrorKind,
    ResponseLimits,
    Timeouts,
    UpstreamResponse,
)
from nexus_core.http import TRACE_HEADERS, _header_size, _lower_headers, read_bounded, sse_events


class AiohttpTransport:
    """``UpstreamTransport`` over one pooled ``aiohttp.ClientSession``.

    aiohttp bounds each header line and the number of headers while parsing; the total is checked
    once they are in. Redirects are never followed.
    """

    def __init__(self, *, limits: ResponseLimits | None = None) -> None:
        self.limits = limits or ResponseLimits()
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
                max_line_size=self.limits.headers,
                max_field_size=self.limits.headers,
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
        limits = self.limits
        response: aiohttp.ClientResponse | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeouts.first_byte
        try:
            # One deadline for the headers and, when the answer is not a stream, the body.
            async with asyncio.timeout_at(deadline):
                try:
                    response = await session.post(
                        url,
                        data=body,
                        headers=headers,
                        timeout=connect_timeout,
                        allow_redirects=False,
                    )
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                    if isinstance(exc, aiohttp.ClientConnectorError):
                        raise
                    # A pooled keep-alive connection the server had already closed (llama-server
                    # closes after a stream despite advertising keep-alive): once more, afresh.
                    response = await session.post(
                        url,
                        data=body,
                        headers=headers,
                        timeout=connect_timeout,
                        allow_redirects=False,
                    )
                if _header_size(response.raw_headers) > limits.headers:
                    raise limits.headers_error()
                status = response.status
                content_type = response.headers.get("Content-Type", "application/json")
                if status < 200:
                    raise BackendError.from_status(status, b"", _lower_headers(response.headers))
                if status >= 300 or not stream or not content_type.startswith("text/event-stream"):
                    data = await _read_aiohttp(response, limits)
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
        except BackendError:
            if response is not None:
                response.close()
            raise
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
        except aiohttp.ClientResponseError as exc:
            # Raised by the parser: the answer is not HTTP, or its headers are past the limits.
            if response is not None:
                response.close()
            message = str(exc.message)
            if message.startswith(("Got more than", "Too many headers")):
                raise limits.headers_error() from None
            raise BackendError(
                ErrorKind.MALFORMED, f"the backend's answer is not valid HTTP: {message[:200]}"
            ) from None
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
            events=sse_events(
                _aiohttp_chunks(response), timeouts, release, deadline=deadline, limits=limits
            ),
            release=release,
            headers=response.headers,
        )

    async def aclose(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None


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


async def _read_aiohttp(response: aiohttp.ClientResponse, limits: ResponseLimits) -> bytes:
    """A whole body within ``limits`` (aiohttp's own errors pass through to the caller)."""
    return await read_bounded(response.content.iter_any(), response.content_length, limits)
