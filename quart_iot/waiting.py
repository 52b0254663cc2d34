"""Waiting extension: long polls and the event stream, woken by the store's change listeners.

A long poll is one future in a set per MAC, so a change to one device wakes only its own
waiters, and an idle process with thousands of them runs no code at all (their only timer is
the deadline). The event stream replays from a bounded ring buffer of changes whose ids are
`<process epoch>-<sequence>`: an id from another process (or one older than the buffer) is
answered with `event: reset`. With several worker processes on one host, a write in one is
passed to the others at once over UNIX datagram sockets (`PEERS_ENV`); other replicas see
it at their next directory sweep.
"""

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import cast

from aioprometheus.collectors import Gauge
from quart import Quart, Response, current_app, request

from quart_iot import store
from quart_iot.errors import ApiError, TooManyWaiters
from quart_iot.settings import Settings
from quart_iot.shutdown import GracefulStop
from quart_iot.store import ConfigStore, Written, canonical_mac

log = logging.getLogger(__name__)

BUFFER_SIZE = 1024  # changes kept for streams that reconnect with Last-Event-ID
# Set by `python -m quart_iot` for its workers: "<directory>:<this worker's index>:<workers>".
PEERS_ENV = "QUART_IOT_PEERS"
_UNKNOWN = object()  # a waiter's ETag before its route has read the document's


@dataclass(frozen=True, slots=True)
class Change:
    """One change as the event stream tells it."""

    seq: int
    mac: str
    etag: str | None

    def event(self, epoch: str) -> bytes:
        kind = "saved" if self.etag else "deleted"
        data = json.dumps({"mac_address": self.mac, "etag": self.etag})
        return f"id: {epoch}-{self.seq}\nevent: {kind}\ndata: {data}\n\n".encode()


class Waiter:
    """One long poll: its future is set when its device leaves the ETag it holds."""

    __slots__ = ("etag", "future")

    def __init__(self, future: "asyncio.Future[None]") -> None:
        self.future = future
        self.etag: object = _UNKNOWN


class Waiting:
    """Extension: holds long polls and event streams until a change (or the stop) ends them."""

    def __init__(self, settings: Settings) -> None:
        self.max_wait = settings.max_wait_seconds
        self.max_waiters = settings.max_waiters
        self._held = 0  # long polls and event streams held open now
        self.heartbeat = settings.events_heartbeat_seconds
        self.stopping = False
        self.epoch = secrets.token_hex(4)  # event ids are unique to this process
        self._seq = 0
        self._changes: deque[Change] = deque(maxlen=BUFFER_SIZE)
        self._waiters: dict[str, set[Waiter]] = {}
        self._streams: set[asyncio.Future[None]] = set()
        self._peers = Peers.from_environment()

    def init_app(self, app: Quart) -> None:
        app.extensions["waiting"] = self
        self._gauge = Gauge(
            "iot_waiting_requests",
            "Requests held open: long polls (kind=long_poll) and event streams (kind=events).",
            registry=app.extensions["metrics"].registry,
        )
        self._count("long_poll", 0)
        self._count("events", 0)
        store = ConfigStore.of(app)
        store.change_sinks.append(self)
        cast(GracefulStop, app.extensions["graceful_stop"]).stop_listeners.append(self.stop)
        if self._peers is not None:
            self._peers.init_app(app, store)

    @property
    def waiters(self) -> int:
        return sum(len(waiters) for waiters in self._waiters.values())

    def _count(self, kind: str, step: int) -> None:
        self._held += step
        self._gauge.add({"kind": kind}, step)

    def _room(self) -> None:
        """TooManyWaiters when MAX_WAITERS requests are held already (an event stream)."""
        if self._held >= self.max_waiters:
            raise TooManyWaiters(self.max_waiters)

    # -- long polls ---------------------------------------------------------------------------

    def requested_wait(self) -> int:
        """The seconds this request may wait (`Prefer: wait=n`, capped), 0 when none."""
        if self.stopping or not request.if_none_match:
            return 0
        return min(preferred_wait(request.headers.getlist("Prefer")), self.max_wait)

    @contextlib.contextmanager
    def watching(self, mac: str, seconds: int) -> Iterator[Waiter | None]:
        """A waiter for `mac` when the request may wait, registered before the route reads
        the ETag, so that no change is missed between that read and the wait. None when it
        may not wait, or when MAX_WAITERS are held (`changed` then refuses the wait)."""
        if not seconds or self._held >= self.max_waiters:
            yield None
            return
        mac = canonical_mac(mac)
        waiter = Waiter(asyncio.get_running_loop().create_future())
        self._waiters.setdefault(mac, set()).add(waiter)
        self._count("long_poll", 1)
        try:
            yield waiter
        finally:
            self._count("long_poll", -1)
            waiters = self._waiters.get(mac)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[mac]

    async def changed(self, waiter: Waiter | None, etag: str, seconds: int) -> bool:
        """Wait up to `seconds` for the document to leave `etag`: whether it did.
        TooManyWaiters when `watching` found no room for the wait."""
        if waiter is None:
            raise TooManyWaiters(self.max_waiters)
        waiter.etag = etag
        if waiter.future.done():  # a change arrived while the route read the ETag
            return not self.stopping
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter.future, seconds)
        return waiter.future.done() and not waiter.future.cancelled() and not self.stopping

    # -- the event stream ---------------------------------------------------------------------

    def stream(self, last_event_id: str | None) -> AsyncIterator[bytes]:
        """The event stream from now, or from `last_event_id` when the buffer still has it."""
        start = self._resume_point(last_event_id) if last_event_id is not None else self._seq
        self._room()  # counted from its first chunk (a stream never started ends nothing)
        return self._events(start)

    async def _events(self, seq: int | None) -> AsyncIterator[bytes]:
        self._count("events", 1)
        try:
            async for chunk in self._events_from(seq):
                yield chunk
        finally:
            self._count("events", -1)

    async def _events_from(self, seq: int | None) -> AsyncIterator[bytes]:
        yield b": connected\n\n"
        if seq is None:
            yield f"id: {self.epoch}-{self._seq}\nevent: reset\ndata: {{}}\n\n".encode()
            seq = self._seq
        while not self.stopping:
            for change in self._since(seq):
                yield change.event(self.epoch)
                seq = change.seq
            future = asyncio.get_running_loop().create_future()
            self._streams.add(future)
            try:
                await asyncio.wait((future,), timeout=self.heartbeat)
            finally:
                self._streams.discard(future)
            if not future.done():
                yield b": keep-alive\n\n"

    def _resume_point(self, last_event_id: str) -> int | None:
        """The sequence to resume after, or None when the events since are not all kept."""
        epoch, _, number = last_event_id.strip().partition("-")
        if epoch != self.epoch or not number.isdigit() or int(number) > self._seq:
            return None
        oldest = self._changes[0].seq if self._changes else self._seq + 1
        return int(number) if int(number) >= oldest - 1 else None

    def _since(self, seq: int) -> Iterator[Change]:
        if not self._changes or seq >= self._seq:
            return iter(())
        return islice(self._changes, max(0, seq - self._changes[0].seq + 1), None)

    # -- changes and the stop -----------------------------------------------------------------

    def _changed(self, mac: str, etag: str | None) -> None:
        for waiter in self._waiters.get(mac, ()):
            if waiter.etag != etag and not waiter.future.done():
                waiter.future.set_result(None)
        self._seq += 1
        self._changes.append(Change(self._seq, mac, etag))
        for stream in self._streams:
            if not stream.done():
                stream.set_result(None)

    def change_seen(self, change: store.Change) -> None:
        """The store's ChangeSink: one change (ids stay this extension's own for now)."""
        self._changed(change.mac, change.etag)

    def changes_missed(self) -> None:
        """The store's ChangeSink: the directory store never misses one."""

    def stop(self) -> None:
        """Answer every waiter now (304, the streams close): the process is stopping."""
        self.stopping = True
        log.info(
            "stopping: answering %d long poll(s) and %d stream(s)", self.waiters, len(self._streams)
        )
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.future.done():
                    waiter.future.set_result(None)
        for stream in self._streams:
            if not stream.done():
                stream.set_result(None)


def preferred_wait(values: list[str]) -> int:
    """`wait=<seconds>` from Prefer headers (RFC 7240): the first well-formed one, else 0."""
    for value in values:
        for preference in value.split(","):
            name, _, rest = preference.split(";")[0].partition("=")
            number = rest.strip().strip('"')
            if name.strip().lower() == "wait" and number.isdigit() and number.isascii():
                return int(number)
    return 0


def event_stream_response(last_event_id: str | None) -> Response:
    """The `text/event-stream` response, never cached or buffered by a proxy."""
    response = Response(current_waiting().stream(last_event_id), mimetype="text/event-stream")
    response.timeout = None  # Quart's RESPONSE_TIMEOUT would cut the stream after 60 s
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


class Peers:
    """The other worker processes on this host, told of each write by a UNIX datagram."""

    def __init__(self, directory: Path, index: int, count: int) -> None:
        self.path = directory / f"worker-{index}.sock"
        self.others = [directory / f"worker-{n}.sock" for n in range(count) if n != index]
        self._sock: socket.socket | None = None
        self._store: ConfigStore | None = None
        self._checks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_environment(cls) -> "Peers | None":
        rest, _, count = os.environ.get(PEERS_ENV, "").rpartition(":")
        directory, _, index = rest.rpartition(":")
        if not (directory and index.isdigit() and count.isdigit()):
            return None
        return cls(Path(directory), int(index), int(count))

    def init_app(self, app: Quart, store: ConfigStore) -> None:
        self._store = store
        app.before_serving(self._start)
        app.after_serving(self._stop)
        store.write_listeners.append(self._wrote)

    async def _start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock.bind(str(self.path))
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._received)

    async def _stop(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self.path.unlink(missing_ok=True)

    def _wrote(self, written: Written) -> None:
        """Every write of this process that changed the store (a restore too)."""
        if self._sock is not None and written.changed_store:
            for peer in self.others:
                with contextlib.suppress(OSError):  # a peer not there: its sweep will see it
                    self._sock.sendto(written.mac.encode(), str(peer))

    def _received(self) -> None:
        assert self._sock is not None
        with contextlib.suppress(OSError):
            while True:
                mac = self._sock.recv(64).decode("ascii", "replace")
                check = asyncio.create_task(self._check(mac))
                self._checks.add(check)
                check.add_done_callback(self._checks.discard)

    async def _check(self, mac: str) -> None:
        """Look at the document now: the store tells its listeners if it changed."""
        assert self._store is not None
        with contextlib.suppress(ApiError):
            await self._store.current_etag(mac)


def current_waiting() -> Waiting:
    """The Waiting extension of the running app."""
    return cast(Waiting, current_app.extensions["waiting"])
