"""Just enough HTTP/1.1 over asyncio streams for the remote API (stdlib only, one request per
connection): the daemon's import path stays free of web frameworks."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["HttpError", "Request", "Response", "request", "serve"]

MAX_BODY = 4 * 1024 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip


class HttpError(Exception):
    """A request failed: ``status`` is 0 when no HTTP answer came (connection problems)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: bytes
    peer: str = ""


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, doc: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(doc, separators=(",", ":")).encode())

    @classmethod
    def text(cls, text: str, status: int) -> Response:
        return cls(status, text.encode(), "text/plain; charset=utf-8")


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    length = int(headers.get("content-length", "0") or 0)
    if length < 0 or length > MAX_BODY:
        raise HttpError(400, f"request body of {length} bytes is too large")
    return await reader.readexactly(length) if length else b""


Handler = Callable[[Request], Awaitable[Response]]


async def serve(
    handler: Handler, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> asyncio.Server:
    """Start serving ``handler``; returns the asyncio server (``close()`` to stop)."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            request_line, headers = await _read_head(reader)
            method, target, _version = request_line.split(" ", 2)
            body = await _read_body(reader, headers)
            split = urlsplit(target)
            query = {k: v[-1] for k, v in parse_qs(split.query).items()}
            request = Request(method.upper(), split.path, query, body, str(peer[0]) if peer else "")
            try:
                response = await handler(request)
            except HttpError as exc:
                response = Response.text(str(exc), exc.status)
            head = (
                f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Status')}\r\n"
                f"Content-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\nConnection: close\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in response.headers.items())
                + "\r\n"
            )
            writer.write(head.encode("latin-1") + response.body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, ssl.SSLError, HttpError):
            pass  # a client that went away or spoke garbage: nothing to answer
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass

    return await asyncio.start_server(on_connection, host, port, ssl=ssl_context)


async def request(
    method: str,
    url: str,
    body: bytes = b"",
    *,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    """One HTTP request; returns (status, body). Raises HttpError(0, ...) if unreachable."""
    split = urlsplit(url)
    secure = split.scheme == "https"
    port = split.port or (443 if secure else 80)
    host = split.hostname or "127.0.0.1"
    target = split.path + (f"?{split.query}" if split.query else "")
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=(ssl_context or ssl.create_default_context()) if secure else None
            )
            try:
                writer.write(
                    (
                        f"{method} {target} HTTP/1.1\r\nHost: {split.netloc}\r\n"
                        f"Content-Length: {len(body)}\r\nContent-Type: application/json\r\n"
                        "Connection: close\r\n\r\n"
                    ).encode("latin-1")
                    + body
                )
                await writer.drain()
                status_line, headers = await _read_head(reader)
                status = int(status_line.split(" ", 2)[1])
                if "content-length" in headers:
                    data = await _read_body(reader, headers)
                else:
                    data = await reader.read()
            finally:
                writer.close()
    except TimeoutError:
        raise HttpError(0, f"{method} {url}: no answer within {timeout} s") from None
    except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError, IndexError) as exc:
        raise HttpError(0, f"{method} {url}: {exc or type(exc).__name__}") from None
    return status, data
