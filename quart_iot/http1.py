"""The server's HTTP/1.1: hypercorn's, with its own errors in the contract's JSON body, and
never switching to HTTP/2.

A request that is not HTTP/1.1 (raw non-ASCII bytes in the request line, a NUL or a line
without a colon in the headers, a Content-Length that is not a number, a header block over
hypercorn's `h11_max_incomplete_size`, a transfer coding other than chunked) never reaches
the app: h11 refuses it, and hypercorn answers with an empty body and closes the connection.
The contract wants every error as JSON, whatever produced it, so the server's HTTP/1.1
protocol is this subclass, which sends the same status with the body the app would send.
There is no request yet, so no X-Request-ID to echo: the correlation id is a new one.

On a cleartext port hypercorn also switches a connection to HTTP/2 when a client sends the
HTTP/2 preface or `Upgrade: h2c`. None of this service's clients needs that (the app behind
its ingress, the devices, the probes and Prometheus all speak HTTP/1.1), and HTTP/2 would
bypass what is bounded here: a client that never opens its flow-control window holds its
stream, and the answer, for ever, with no unsent TCP data for SEND_TIMEOUT to see. So the
protocol never switches: `Upgrade: h2c` is ignored (RFC 9110 lets a server answer in the
current protocol), and the preface is read as the HTTP/1.1 request it parses as, refused
like any unknown route; the HTTP/2 frames after it are not HTTP/1.1 (400, connection closed).

Hypercorn picks its HTTP/1.1 protocol by the name `hypercorn.protocol.H11Protocol`; `install`
points that name here (in the server process only, before it serves).
"""

import json
import uuid

import h11
import hypercorn.protocol
from hypercorn.protocol.h11 import H11Protocol

from quart_iot.correlation import HEADER

MESSAGES = {
    400: ("MALFORMED_REQUEST", "The request is not valid HTTP/1.1"),
    431: ("HEADERS_TOO_LARGE", "The request's header block is larger than the limit"),
    501: ("NOT_IMPLEMENTED", "The request uses a transfer coding this server does not know"),
}


def error_body(status: int, correlation_id: str) -> bytes:
    code, message = MESSAGES.get(status, (f"HTTP_{status}", "The request was refused"))
    body = {
        "error": message,
        "code": code,
        "details": None,
        "correlationId": correlation_id,
        "status": status,
    }
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"  # as the app's


class ServerH11Protocol(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol, with its own error answers in the contract's body, and
    no switch to HTTP/2."""

    async def _check_protocol(self, event: h11.Request) -> None:
        """Every request stays HTTP/1.1 (hypercorn's raises to switch to HTTP/2 here)."""

    async def _send_error_response(self, status_code: int) -> None:
        correlation_id = uuid.uuid4().hex
        body = error_body(status_code, correlation_id)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (HEADER.lower().encode(), correlation_id.encode()),
            *self.config.response_headers("h11"),
        ]
        await self._send_h11_event(h11.Response(status_code=status_code, headers=headers))
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())


def install() -> None:
    """Serve HTTP/1.1 with ServerH11Protocol (for every connection from now on)."""
    hypercorn.protocol.H11Protocol = ServerH11Protocol  # type: ignore[attr-defined]
