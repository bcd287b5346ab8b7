"""uvicorn's httptools protocol with the gateway's connection limits.

uvicorn bounds an idle keep-alive connection, but not a client that is slow to send its
request: a connection that never sends a byte, or sends its headers a byte a minute
(slowloris), or declares a body and trickles it, holds a socket and its memory forever, and
the parser takes a request head of any size. `LimitedHttpToolsProtocol` adds both bounds:

- the whole request (head and body) must arrive within `read_seconds` of its first byte (of
  the connection's opening, for the first request); past it the client gets a 408 and the
  connection is closed. One timer per connection, re-armed only when it fires, so a request
  costs two attribute writes, not a timer;
- the request head may not pass `max_header_bytes` (431, connection closed). A head still
  incomplete past the bound is refused as soon as a read shows it (so the parser holds at
  most one read more); a complete one is measured only when the bytes read (the body's
  first bytes may be among them) pass the bound.

Writes go through `CoalescingTransport` (one socket write per buffered response).
"""

import asyncio
from http import HTTPStatus
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from spendgate.errors import GatewayError, RequestHeadTooLarge, RequestTimeout
from spendgate.server_transport import CoalescingTransport

_LINGER_SECONDS = 2.0  # after a refusal, how long the client's remaining bytes are dropped


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol: coalesced writes, bounded request time and head size."""

    read_seconds: float = 60.0
    max_header_bytes: int = 64 * 1024

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._reading_since: float | None = None  # loop time the request's first byte came
        self._head_done = False
        self._head_bytes = 0
        self._watch: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))
        self._reading_since = self.loop.time()
        self._watch = self.loop.call_later(self.read_seconds, self._check_read_time)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: read and drop
        if self._head_done:
            super().data_received(data)
            return
        if self._reading_since is None:
            self._reading_since = self.loop.time()
        self._head_bytes += len(data)
        super().data_received(data)
        # Still no end of head past the bound: too large, whatever comes next.
        if not self._head_done and self._head_bytes > self.max_header_bytes:
            self._refuse_head()

    def on_headers_complete(self) -> None:
        # The bytes read may hold the start of the body too: measure the head itself.
        if self._head_bytes > self.max_header_bytes and self._head_size() > self.max_header_bytes:
            self._refuse_head()
        if self._refused:  # this request's or an earlier one's in the same read
            return
        self._head_done = True
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._reading_since = None
        self._head_done = False
        self._head_bytes = 0
        if not self._refused:
            super().on_message_complete()

    def _head_size(self) -> int:
        """The request head's size as sent: request line and header lines."""
        size = len(self.url) + 16  # "METHOD " and " HTTP/1.1\r\n", about
        for name, value in self.headers:
            size += len(name) + len(value) + 4
        return size

    def _refuse_head(self) -> None:
        if not self._refused:
            self._refuse(
                RequestHeadTooLarge(f"The request head is over {self.max_header_bytes} bytes.")
            )

    def _check_read_time(self) -> None:
        """Close a connection whose request is taking too long to arrive; else look again."""
        self._watch = None
        if self.transport.is_closing():
            return
        since = self._reading_since
        now = self.loop.time()
        if since is not None and now - since >= self.read_seconds:
            message = f"The request did not arrive within {self.read_seconds:g} seconds."
            self._refuse(RequestTimeout(message))
            return
        wait = self.read_seconds if since is None else since + self.read_seconds - now
        self._watch = self.loop.call_later(wait, self._check_read_time)

    def _refuse(self, error: GatewayError) -> None:
        """Answer `error` (unless a response has started) and close the connection.

        A lingering close: the write side is shut at once, and what the client still sends
        is read and dropped for a moment. Closing with unread data would make the kernel
        reset the connection, and the client might never read the answer.
        """
        self._refused = True
        cycle = self.cycle
        if cycle is not None:
            cycle.disconnected = True  # the app's later sends go nowhere
            cycle.message_event.set()
        transport = self.transport
        if cycle is None or not cycle.response_started:
            body = error.body()
            head = (
                f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
                "content-type: application/json\r\n"
                f"content-length: {len(body)}\r\n"
                "connection: close\r\n\r\n"
            )
            transport.write(head.encode("latin-1") + body)
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(_LINGER_SECONDS, transport.close)
        else:
            transport.close()


def limited_protocol(read_seconds: float, max_header_bytes: int) -> type[HttpToolsProtocol]:
    """The protocol class uvicorn instantiates per connection, with these limits."""
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {"read_seconds": read_seconds, "max_header_bytes": max_header_bytes},
    )
