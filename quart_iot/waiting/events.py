"""The event buffer: the last changes, each encoded once as its server-sent-events frame.

A change gets a sequence number in this process (its position in the buffer) and an id on
the wire. The directory store has no ids of its own, so the id is `<epoch>-<sequence>`, the
epoch being random per process: an id from another process or an older one is unknown, and
the stream says `reset`. A store that numbers its changes (PostgreSQL: one sequence for all
replicas) passes its own id to `append`; ids are only ever looked up, never parsed, so either
kind works, and a lookup that misses is where such a store's `changes_after` answers
(streams.py, `resume`). When the store may have missed changes, a gap event tells every stream
that reads past it to `reset`.
"""

import json
import secrets
from dataclasses import dataclass

BUFFER_SIZE = 1024  # changes kept for streams that reconnect with Last-Event-ID, or lag
CONNECTED = b": connected\n\n"
KEEP_ALIVE = b": keep-alive\n\n"


@dataclass(frozen=True, slots=True)
class Event:
    """One change as every stream sends it."""

    seq: int  # its position in this process's buffer: 1, 2, 3...
    id: str
    frame: bytes


def event_frame(event_id: str, mac: str, etag: str | None) -> bytes:
    kind = "saved" if etag else "deleted"
    data = json.dumps({"mac_address": mac, "etag": etag})
    return f"id: {event_id}\nevent: {kind}\ndata: {data}\n\n".encode()


def reset_frame(event_id: str) -> bytes:
    """The client must read everything again; `event_id` is where it resumes after that."""
    return f"id: {event_id}\nevent: reset\ndata: {{}}\n\n".encode()


def id_frame(event_id: str) -> bytes:
    """Sets the client's Last-Event-ID without an event (a frame with no data dispatches none),
    so that a stream we end resumes where it stood."""
    return f"id: {event_id}\n\n".encode()


class EventBuffer:
    """A ring of the last `size` events. A reader keeps a position (a sequence number) and asks
    for the events after it: it gets a list of its own, which no later append changes, or None
    when some of them are gone already (it then sends `reset`, never a gap)."""

    def __init__(self, size: int | None = None) -> None:
        self.size = size or BUFFER_SIZE
        self.epoch = secrets.token_hex(4)
        self.head = 0  # the sequence of the newest event; 0: none yet
        self._origin = f"{self.epoch}-0"  # the id of position 0, before any event
        self._ring = [Event(0, self._origin, b"")] * self.size  # slot `seq % size` holds event seq
        self._positions: dict[str, int] = {self._origin: 0}

    def append(self, mac: str, etag: str | None, event_id: str | None = None) -> Event:
        """Add one change, encoded once; `event_id` when the store numbers its changes."""
        seq = self.head + 1
        event_id = event_id or f"{self.epoch}-{seq}"
        return self._add(Event(seq, event_id, event_frame(event_id, mac, etag)))

    def append_gap(self) -> Event:
        """Changes may have been missed here (the store lost its feed for a while): whoever
        reads past this point is told `reset`. Its id is this process's own: resumed from on
        another replica, it is unknown there, and resets again."""
        seq = self.head + 1
        event_id = f"{self.epoch}-{seq}"
        return self._add(Event(seq, event_id, reset_frame(event_id)))

    def _add(self, event: Event) -> Event:
        self._ring[event.seq % self.size] = event
        self.head = event.seq
        self._positions[event.id] = event.seq
        if len(self._positions) > 2 * self.size:  # forget the ids of events long gone
            self._positions = {event.id: event.seq for event in self._ring}
        return event

    def position(self, event_id: str) -> int | None:
        """The position just after the event `event_id`; None when it cannot be resumed from."""
        seq = self._positions.get(event_id)
        return seq if seq is not None and self._kept(seq) else None

    def id_at(self, position: int) -> str:
        """The id of the event at `position` (which must be resumable from)."""
        return self._ring[position % self.size].id if position else self._origin

    def after(self, position: int) -> list[Event] | None:
        """The events after `position`, oldest first; None when some are no longer kept."""
        if not self._kept(position):
            return None
        ring, size = self._ring, self.size
        return [ring[seq % size] for seq in range(position + 1, self.head + 1)]

    def _kept(self, position: int) -> bool:
        """Whether every event after `position` is still in the ring."""
        return self.head - self.size <= position <= self.head
