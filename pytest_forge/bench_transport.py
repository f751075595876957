"""An httpx transport on aiohttp's C HTTP parser: plain-HTTP streaming at vLLM's client CPU.

The client's CPU per streamed chunk must not exceed vLLM's own aiohttp-based client (we share
the cores with the server under test; see benchmarks/client_overhead.py). httpx's default
transport parses HTTP in pure Python (h11), one event per HTTP chunk, which costs about twice
vLLM's client; so when aiohttp is importable (it always is next to vLLM) the client runs on
this transport, which hands the SSE parser whole network reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx


def fast_transport(pool: int | None) -> httpx.AsyncBaseTransport | None:
    """The aiohttp-backed transport when aiohttp is installed, else httpx's own (None)."""
    try:
        import aiohttp  # noqa: F401  (a vLLM dependency; optional for pytest-forge)
    except ImportError:
        return None
    return AiohttpTransport(limit=pool or 0)


class _AiohttpStream(httpx.AsyncByteStream):
    """An aiohttp response body as an httpx byte stream, aiohttp errors mapped to httpx's."""

    def __init__(self, response: Any, errors: Callable[[BaseException], Exception]) -> None:
        self._response = response
        self._errors = errors

    async def __aiter__(self) -> AsyncIterator[bytes]:
        # iter_any hands over everything buffered: several SSE events per read under load,
        # which is where aiohttp's client saves its CPU.
        try:
            async for data in self._response.content.iter_any():
                yield data
        except Exception as exc:
            mapped = self._errors(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()  # back to the pool
        else:
            self._response.close()  # an unfinished body: the connection cannot be reused


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport on aiohttp's C HTTP parser, for plain-HTTP streaming at low CPU.

    aiohttp errors are mapped to httpx's exception classes, so callers handle one set.
    """

    def __init__(self, limit: int = 0) -> None:
        self._limit = limit
        self._session: Any = None

    def _map_error(self, exc: BaseException) -> Exception:
        import aiohttp

        if isinstance(exc, getattr(aiohttp, "ConnectionTimeoutError", ())):
            return httpx.ConnectTimeout(str(exc) or "connect timed out")
        if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
            return httpx.ReadTimeout(str(exc) or "read timed out")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return httpx.ConnectError(str(exc))
        if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
            return httpx.RemoteProtocolError(str(exc) or type(exc).__name__)
        if isinstance(exc, (aiohttp.ClientOSError, aiohttp.ClientConnectionError)):
            return httpx.ReadError(str(exc) or type(exc).__name__)
        if isinstance(exc, aiohttp.ClientError):
            return httpx.TransportError(str(exc) or type(exc).__name__)
        return exc if isinstance(exc, Exception) else RuntimeError(str(exc))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on the aiohttp session (opened on first use); stream the body."""
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._limit, limit_per_host=self._limit, keepalive_timeout=60
                ),
                auto_decompress=False,  # httpx decodes content-encoding itself
                trust_env=False,
                skip_auto_headers=("User-Agent", "Content-Type", "Accept-Encoding"),
            )
        t = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=t.get("connect"), sock_read=t.get("read")
        )
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.headers.raw
            if k.lower() not in (b"host", b"content-length", b"transfer-encoding")
        ]
        try:
            resp = await self._session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=await request.aread() or None,
                timeout=timeout,
                allow_redirects=False,
            )
        except Exception as exc:
            mapped = self._map_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        return httpx.Response(
            resp.status,
            headers=list(resp.raw_headers),
            stream=_AiohttpStream(resp, self._map_error),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (resp.reason or "").encode()},
            request=request,
        )

    async def aclose(self) -> None:
        """Close the aiohttp session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None
