"""The Waiting extension: long polls and event streams, woken by the store's changes."""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator

from aioprometheus.collectors import Gauge
from quart import Quart, Response, current_app, request

from quart_iot.errors import ApiError, ConfigNotFound
from quart_iot.metrics import Metrics
from quart_iot.oidc.errors import Unauthorized
from quart_iot.settings import Settings
from quart_iot.shutdown import GracefulStop
from quart_iot.store import Change, ConfigStore, Written, canonical_mac
from quart_iot.waiting.events import EventBuffer
from quart_iot.waiting.headers import last_event_id, preferred_wait
from quart_iot.waiting.holds import Holds, TooManyWaits
from quart_iot.waiting.longpolls import LongPolls, Waiter, left
from quart_iot.waiting.peers import Peers
from quart_iot.waiting.streams import Streams
from quart_iot.waiting.subject import request_subject

log = logging.getLogger("quart_iot.waiting")

# What `watching` yields: a registered waiter, the error a wait would get, or None (no wait).
Watch = Waiter | ApiError | None
_CANNOT_TELL = "?"  # an ETag no document has: every long poll of the device wakes


class Waiting:
    """Extension: holds long polls and event streams until a change (or the stop) ends them."""

    def __init__(self, settings: Settings) -> None:
        self.max_wait = settings.max_wait_seconds
        self.max_stream_seconds = settings.events_max_seconds
        self.per_device = settings.max_waiters_per_device
        self.access_control = settings.oidc_issuer is not None
        self.stopping = False
        self.buffer = EventBuffer()
        self.long_polls = LongPolls()
        self.streams = Streams(self.buffer, settings.events_heartbeat_seconds)
        self.holds = Holds(settings.max_waiters, settings.max_waiters_per_subject, self._count)
        # With PostgreSQL, NOTIFY reaches every process: the workers need no datagrams.
        self.peers = Peers.from_environment() if settings.database_url is None else None
        self._checks: set[asyncio.Task[None]] = set()

    @classmethod
    def of(cls, app: Quart) -> "Waiting":
        """The Waiting extension of `app`."""
        waiting = app.extensions["waiting"]
        assert isinstance(waiting, cls)
        return waiting

    def init_app(self, app: Quart) -> None:
        app.extensions["waiting"] = self
        self._gauge = Gauge(
            "iot_waiting_requests",
            "Requests held open: long polls (kind=long_poll) and event streams (kind=events).",
            registry=Metrics.of(app).registry,
        )
        self._count("long_poll", 0)
        self._count("events", 0)
        store = self._store = ConfigStore.of(app)
        store.change_sinks.append(self)
        GracefulStop.of(app).stop_listeners.append(self.stop)
        if self.peers is not None:
            self._listen_to_peers(app, store, self.peers)

    def _count(self, kind: str, step: int) -> None:
        self._gauge.add({"kind": kind}, step)

    # -- long polls ---------------------------------------------------------------------------

    def requested_wait(self) -> int:
        """The seconds this request may wait (`Prefer: wait=n`, capped), 0 when none."""
        if self.stopping or not request.if_none_match or self._anonymous(request_subject()):
            return 0
        return min(preferred_wait(request.headers.getlist("Prefer")), self.max_wait)

    @contextlib.contextmanager
    def watching(self, mac: str, seconds: int) -> Iterator[Watch]:
        """A waiter for `mac` when the request may wait, registered before the route reads
        the ETag, so that no change is missed between that read and the wait. Instead, the
        error to answer if it must wait but may not (a bound is reached), or None."""
        if not seconds:
            yield None
            return
        mac, subject = canonical_mac(mac), request_subject()
        refusal = self.holds.refusal(subject) or self._device_refusal(mac)
        if refusal is not None:
            yield refusal
            return
        with self.holds.held("long_poll", subject), self.long_polls.registered(mac) as waiter:
            yield waiter

    async def wait_for_change(self, watch: Watch, etag: str, seconds: int) -> bool:
        """Wait up to `seconds` for the document to leave `etag`: whether it did (False when
        the process stops). The refusal of `watching`, when a bound left no room."""
        if isinstance(watch, ApiError):
            raise watch
        assert watch is not None, "a wait of 0 seconds is not waited for"
        return await left(watch, etag, seconds) and not self.stopping

    def _device_refusal(self, mac: str) -> ApiError | None:
        if self.long_polls.on(mac) < self.per_device:
            return None
        return TooManyWaits("MAX_WAITERS_PER_DEVICE", self.per_device, "This device")

    def _anonymous(self, subject: str | None) -> bool:
        """With access control on, a request without a subject never holds a wait."""
        return self.access_control and subject is None

    # -- the event stream ---------------------------------------------------------------------

    def stream(
        self, resume_after: str | None, subject: str | None, expires_at: float | None = None
    ) -> AsyncIterator[bytes]:
        """The event stream from now, or after the event `resume_after` when the buffer still
        has it (`reset` first when not). It ends at EVENTS_MAX_SECONDS, or at `expires_at`
        (a UNIX time: the token's `exp`) when that is sooner."""
        if self._anonymous(subject):
            raise Unauthorized("A bearer token is required to follow the event stream")
        refusal = self.holds.refusal(subject)
        if refusal is not None:
            raise refusal
        buffer = self.buffer
        position = buffer.head if resume_after is None else buffer.position(resume_after)
        seconds = self.max_stream_seconds
        if expires_at is not None:
            seconds = min(seconds, expires_at - time.time())
        deadline = asyncio.get_running_loop().time() + seconds
        if position is None and resume_after:  # not in the buffer: the store may know it
            resumed = self.streams.resume(resume_after, deadline, self._store.changes_after)
            return self._held(resumed, subject)
        return self._held(self.streams.follow(position, deadline), subject)

    async def _held(
        self, chunks: AsyncGenerator[bytes, None], subject: str | None
    ) -> AsyncIterator[bytes]:
        """Counted from its first chunk: a stream never started holds nothing."""
        with self.holds.held("events", subject):
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    yield chunk

    # -- changes and the stop -----------------------------------------------------------------

    def change_seen(self, change: Change) -> None:
        """The store's ChangeSink: one change, by any writer, with the store's event id."""
        self.document_changed(change.mac, change.etag, change.id)

    def changes_missed(self) -> None:
        """The store's ChangeSink: changes may have been missed (the PostgreSQL store lost its
        LISTEN connection for a while; the directory store never calls it). Streams reading
        past this point get `reset`; long polls look at their document again."""
        self.buffer.append_gap()
        self.streams.wake()
        check = asyncio.get_running_loop().create_task(self._check_long_polls())
        self._checks.add(check)
        check.add_done_callback(self._checks.discard)

    async def _check_long_polls(self) -> None:
        """Wake the long polls whose document changed, one read per device, one at a time
        (a few pooled connections, however many wait)."""
        for mac in self.long_polls.macs():
            try:
                etag: str | None = await self._store.current_etag(mac)
            except ConfigNotFound:
                etag = None
            except ApiError:  # cannot tell: they read it again themselves
                self.long_polls.wake(mac, _CANNOT_TELL)
                continue
            self.long_polls.wake(mac, etag)

    def document_changed(self, mac: str, etag: str | None, event_id: str | None = None) -> None:
        """A device's document changed (by any writer): wake its long polls and the streams.
        `event_id`: the change's id when the store numbers its changes."""
        self.long_polls.wake(mac, etag)
        self.buffer.append(mac, etag, event_id)
        self.streams.wake()

    def stop(self) -> None:
        """Answer every waiter now (304, the streams close): the process is stopping."""
        self.stopping = True
        log.info(
            "stopping: answering %d long poll(s) and %d stream(s)",
            len(self.long_polls),
            self.streams.open,
        )
        self.long_polls.wake_all()
        self.streams.stop()

    # -- other workers ------------------------------------------------------------------------

    def _listen_to_peers(self, app: Quart, store: ConfigStore, peers: Peers) -> None:
        async def check(mac: str) -> None:
            """Look at a document another worker wrote: the store tells us if it changed."""
            with contextlib.suppress(ApiError):
                await store.current_etag(mac)

        async def start() -> None:
            peers.start(check)

        async def stop() -> None:
            peers.stop()

        app.before_serving(start)
        app.after_serving(stop)

        def wrote(written: Written) -> None:
            """Every write of this process that changed the store, whatever the route (a
            restore too): the store decides what a write is."""
            if written.changed_store:
                peers.wrote(written.mac)

        store.write_listeners.append(wrote)


def current_waiting() -> Waiting:
    """The Waiting extension of the running app."""
    return Waiting.of(current_app)


def event_stream_response(header: str | None, expires_at: float | None = None) -> Response:
    """The `text/event-stream` response to a request with this `Last-Event-ID` header, never
    cached or buffered by a proxy; `expires_at`: when the request's credentials expire."""
    chunks = current_waiting().stream(last_event_id(header), request_subject(), expires_at)
    response = Response(chunks, mimetype="text/event-stream")
    response.timeout = None  # Quart's RESPONSE_TIMEOUT would cut the stream after 60 s
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response
