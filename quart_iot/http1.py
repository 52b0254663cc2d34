"""The server's HTTP/1.1: hypercorn's, with what it lacks for this service.

Every change to hypercorn lives in this module (tests/test_dependencies.py fails when hypercorn
changes under it):

- **Its own errors in the contract's body.** A request that is not HTTP/1.1 (raw non-ASCII
  bytes in the request line, a NUL or a line without a colon in the headers, a Content-Length
  that is not a number, a header block over `h11_max_incomplete_size`, a transfer coding other
  than chunked) never reaches the app: h11 refuses it, and hypercorn answers with an empty body.
  The contract wants every error as JSON, so the protocol sends the same status with the body
  the app would send (there is no request yet: the correlation id is a new one).
- **Never HTTP/2.** On a cleartext port hypercorn switches a connection to HTTP/2 on the
  preface or `Upgrade: h2c`. No client of this service needs it, and HTTP/2 would bypass what
  is bounded here: a client that never opens its flow-control window holds its stream, and the
  answer, for ever, with no unsent TCP data for SEND_TIMEOUT to see. `Upgrade: h2c` is ignored
  (RFC 9110 lets a server answer in the current protocol); the preface is read as the HTTP/1.1
  request it parses as, refused like any unknown route, and the frames after it are not
  HTTP/1.1 (400, connection closed).
- **Status lines with their reason phrase** (`HTTP/1.1 404 Not Found`: hypercorn sends none,
  and Node's `fetch` shows an empty `statusText`), and no `Content-Type` on a 204 (it has no
  content; Quart gives every response one).
- **A connection cut by SEND_TIMEOUT** (the kernel's ETIMEDOUT, TCP_USER_TIMEOUT) ends as a
  closed connection does, with one INFO line: hypercorn handles ConnectionError only, so each
  one was an ERROR traceback.
- **Answers not sent by the end of the stop are aborted** (`abort_unsent`): closing a
  connection waits until its unsent data is sent, so one client that stopped reading held the
  process's exit until SEND_TIMEOUT cut it.

Hypercorn picks its HTTP/1.1 protocol by the name `hypercorn.protocol.H11Protocol`;
`replace_protocol` points that name here (in the server process only, before it serves).
Upstream features that would remove this module: a hypercorn setting for the protocol class or
for the body of its own error responses, one to refuse h2c and prior-knowledge HTTP/2 on
cleartext, reason phrases in its status lines, and an abort of the connections left at the
end of its graceful timeout (Python 3.13's `asyncio.Server.abort_clients()` is the tool).
"""

import asyncio
import errno
import json
import logging
import socket
import uuid
import weakref
from http import HTTPStatus

import h11
import hypercorn.asyncio.run
import hypercorn.protocol
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config, Sockets
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.typing import AppWrapper, H11SendableEvent, LifespanState

from quart_iot.correlation import HEADER

log = logging.getLogger(__name__)

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


class ServerConfig(Config):
    """hypercorn's Config, whose listening sockets give up on a client that stops taking its
    answer: with unsent data and no progress for `send_timeout` seconds (a window left at zero,
    or no acknowledgement at all), the kernel aborts the connection (TCP_USER_TIMEOUT, which
    each accepted socket inherits; Linux). nginx's `send_timeout` does the same in user space.
    Sockets it is handed (`fd://`) listen already: they become ListeningSockets. It also knows
    the connections it serves, for `abort_unsent`."""

    send_timeout: float | None = None

    def __init__(self) -> None:
        self.connections: weakref.WeakSet[ServerTCPServer] = weakref.WeakSet()

    def create_sockets(self) -> Sockets:
        sockets = super().create_sockets()
        if all(bind.startswith("fd://") for bind in self.bind):
            sockets.insecure_sockets[:] = [
                ListeningSocket(fileno=sock.detach()) for sock in sockets.insecure_sockets
            ]
        option = getattr(socket, "TCP_USER_TIMEOUT", None)
        if self.send_timeout is not None and option is not None:
            for sock in sockets.insecure_sockets:
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, option, int(self.send_timeout * 1000))
        return sockets


class ListeningSocket(socket.socket):
    """A socket handed over listening already (`python -m quart_iot` binds once): asyncio's
    `listen(backlog)` leaves its queue as it is. asyncio also takes `backlog` as the number of
    connections to accept at each wake-up (bpo-27906): with its queue kept, `backlog` can be
    small, so that workers sharing the socket share a burst of connections instead of the
    first one awake accepting them all. Upstream feature that would remove it: a setting of
    asyncio's (or hypercorn's) for the connections accepted per wake-up."""

    def listen(self, backlog: int = 0) -> None:
        """Nothing to do: the socket listens with the queue it was given when bound."""


def standard_response(
    event: h11.Response | h11.InformationalResponse,
) -> h11.Response | h11.InformationalResponse:
    """The response with its status's reason phrase, and no Content-Type if it is a 204."""
    headers = event.headers.raw_items()
    if event.status_code == HTTPStatus.NO_CONTENT:
        headers = [(name, value) for name, value in headers if name.lower() != b"content-type"]
    try:
        reason = event.reason or HTTPStatus(event.status_code).phrase.encode()
    except ValueError:  # a status with no standard phrase keeps none
        reason = event.reason
    return type(event)(
        status_code=event.status_code,
        headers=headers,
        reason=reason,
        http_version=event.http_version,
    )


class ServerH11Protocol(H11Protocol):
    """hypercorn's HTTP/1.1 protocol: its own errors in the contract's body, never HTTP/2,
    reason phrases, no Content-Type on a 204."""

    async def _check_protocol(self, event: h11.Request) -> None:
        """Every request stays HTTP/1.1 (hypercorn's raises to switch to HTTP/2 here)."""

    async def _send_h11_event(self, event: H11SendableEvent) -> None:
        if isinstance(event, h11.Response | h11.InformationalResponse):
            event = standard_response(event)
        await super()._send_h11_event(event)

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


class ServerTCPServer(TCPServer):
    """hypercorn's connection, which ends quietly when the kernel cuts it (SEND_TIMEOUT's
    ETIMEDOUT), and which the end of the stop can abort."""

    def __init__(
        self,
        app: AppWrapper,
        loop: asyncio.AbstractEventLoop,
        config: Config,
        context: WorkerContext,
        state: LifespanState,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        super().__init__(app, loop, config, context, state, reader, writer)
        self._lost = False
        if isinstance(config, ServerConfig):
            config.connections.add(self)

    async def protocol_send(self, event: Event) -> None:
        if self._lost and isinstance(event, RawData):
            return  # gone: answers to requests it had pipelined go nowhere (and log nothing)
        try:
            await super().protocol_send(event)
        except OSError as error:  # hypercorn catches ConnectionError only
            self._log_lost(error)
            await self.protocol.handle(Closed())

    async def _close(self) -> None:
        try:
            await super()._close()
        except OSError as error:  # from wait_closed: the error that ended the connection
            self._log_lost(error)

    def _log_lost(self, error: OSError) -> None:
        if self._lost:
            return
        self._lost = True
        peer = self.writer.get_extra_info("peername") or ("a client", "")
        if error.errno == errno.ETIMEDOUT:
            reason = "it took none of its answer for SEND_TIMEOUT"
        else:
            reason = error.strerror or type(error).__name__
        log.info("connection from %s:%s cut: %s", peer[0], peer[1], reason)

    def unsent(self) -> int:
        """Bytes of answers this process has not yet handed to the kernel."""
        return self.writer.transport.get_write_buffer_size()

    def abort(self) -> None:
        self.writer.transport.abort()


def abort_unsent(config: ServerConfig) -> int:
    """Abort every connection whose answer is not all sent yet; how many were."""
    aborted = 0
    for connection in list(config.connections):
        if connection.unsent():
            connection.abort()
            aborted += 1
    if aborted:
        log.warning(
            "stopping: %d connection(s) whose client took none of its answer by the end of "
            "SHUTDOWN_TIMEOUT aborted",
            aborted,
        )
    return aborted


def quiet_cancelled_connections(loop: asyncio.AbstractEventLoop) -> None:
    """At the end of the graceful timeout hypercorn cancels the connections still open; before
    Python 3.13, asyncio's callback on each cancelled connection task then raised (it asks a
    cancelled task for its exception) and logged an ERROR traceback per connection. Such a
    cancellation is the stop working as documented: a DEBUG line. Anything else is logged as
    asyncio would."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        if isinstance(context.get("exception"), asyncio.CancelledError):
            log.debug("stopping: a connection was cancelled: %s", context.get("message"))
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


def patch_hypercorn() -> None:
    """Serve every connection from now on with ServerTCPServer and ServerH11Protocol (hypercorn
    looks both up by these module names each time a connection arrives)."""
    hypercorn.asyncio.run.TCPServer = ServerTCPServer  # type: ignore[attr-defined]
    hypercorn.protocol.H11Protocol = ServerH11Protocol  # type: ignore[attr-defined]
