"""The one listening connection of a process: LISTEN for every replica's changes, however many
requests wait. A lost connection is noticed (a closed socket at once, a silent one by a ping
every few seconds), made again with backoff, and then the sink hears `missed()`: whatever
changed meanwhile, waiters check again."""

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable

import asyncpg

from quart_iot.store.backend import Change, ChangeSink
from quart_iot.store.postgres.database import BACKOFF_FIRST, UNAVAILABLE, backoff
from quart_iot.store.postgres.schema import CHANNEL

log = logging.getLogger(__name__)

PING_SECONDS = 5.0
_PAYLOAD = re.compile(
    r"(?P<id>[0-9a-f]{8}-[0-9]{1,19}) "
    r"(?P<mac>[0-9a-f]{2}(?:-[0-9a-f]{2}){5}) "
    r"(?P<etag>[0-9a-f]{32}|-)"
)


def parse_notification(payload: str) -> Change | None:
    """'<change id> <mac> <etag or ->' as a Change (None for anything else: any role that
    may connect can NOTIFY on the channel)."""
    match = _PAYLOAD.fullmatch(payload)
    if match is None:
        return None
    etag = match["etag"]
    return Change(match["id"], match["mac"], None if etag == "-" else etag)


class Listener:
    """Runs while the backend serves: connects, listens, pings, reconnects."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        sink: ChangeSink,
        ping_timeout: float,
    ) -> None:
        self.connect = connect
        self.sink = sink
        self.ping_timeout = ping_timeout
        self.listening = asyncio.Event()  # set while LISTEN is in place

    async def run(self) -> None:
        delay, lost_before = BACKOFF_FIRST, False
        while True:
            try:
                conn = await self.connect()
            except UNAVAILABLE:
                await asyncio.sleep(delay)
                delay = backoff(delay)
                continue
            delay = BACKOFF_FIRST
            try:
                await self._serve(conn, lost_before)
            finally:
                self.listening.clear()
                conn.terminate()
            lost_before = True
            log.warning("the database connection listening for changes was lost; reconnecting")

    async def _serve(self, conn: asyncpg.Connection, lost_before: bool) -> None:
        """Listen until the connection is lost."""
        closed = asyncio.Event()
        conn.add_termination_listener(lambda _: closed.set())
        try:
            await asyncio.wait_for(conn.add_listener(CHANNEL, self._notified), self.ping_timeout)
        except UNAVAILABLE:
            return
        self.listening.set()
        if lost_before:
            self.sink.changes_missed()  # changes made while nobody listened are not re-sent
        while not closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closed.wait(), PING_SECONDS)
                return
            if not await self._ping(conn):
                return

    async def _ping(self, conn: asyncpg.Connection) -> bool:
        try:
            await asyncio.wait_for(conn.execute("SELECT 1"), self.ping_timeout)
        except UNAVAILABLE:
            return False
        return True

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        change = parse_notification(str(payload))
        if change is None:
            log.warning("ignored a notification that is not a change: %.80r", payload)
            return
        self.sink.change_seen(change)
