"""Event streams: each follows the buffer from its own position; a fan-out wakes them.

A change does not run every stream at once: the fan-out wakes `FAN_OUT_BATCH` sleeping
streams, lets them send, then leaves the event loop to other work for as long as that took,
so that with thousands of streams other requests (liveness, reads) are served between
batches. A stream that wakes sends every event since its position in one chunk, so a burst
of changes costs a stream one send per wake-up, not one per change; and the frames were
encoded once, in the buffer.
"""

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection

from quart_iot.errors import ApiError
from quart_iot.store import Change
from quart_iot.waiting.events import (
    CONNECTED,
    KEEP_ALIVE,
    EventBuffer,
    event_frame,
    id_frame,
    reset_frame,
)

ChangesAfter = Callable[[str], Awaitable[list[Change] | None]]  # the store's feed
FAN_OUT_BATCH = 8  # streams woken per turn of the event loop (bench-bursts chose it)


class Streams:
    """The open event streams of this process and the one task that wakes them."""

    def __init__(self, buffer: EventBuffer, heartbeat: float) -> None:
        self.buffer = buffer
        self.heartbeat = heartbeat
        self.stopping = False
        self.open = 0
        self._sleeping: set[asyncio.Future[bool]] = set()
        self._fan_out: asyncio.Task[None] | None = None
        self._again = False  # a change arrived while the fan-out ran: one more round

    async def follow(
        self,
        position: int | None,
        deadline: float,
        sent: Collection[str] = (),
        greeting: bytes = CONNECTED,
    ) -> AsyncGenerator[bytes, None]:
        """A stream after `position` (None: unknown, it starts with `reset`) that ends by itself
        at `deadline` (event loop time), sending where it stood. Events whose id is in `sent`
        were sent already (by `resume`), and are not sent again."""
        loop = asyncio.get_running_loop()
        buffer = self.buffer
        self.open += 1
        try:
            if greeting:  # never an empty chunk: it would end a chunked answer
                yield greeting
            # What the client has seen, where it resumes when we end the stream.
            last_id = buffer.id_at(position) if position is not None else ""
            while not self.stopping:
                events = buffer.after(position) if position is not None else None
                if events is None:  # unknown, or it fell further behind than the buffer keeps
                    position, last_id = buffer.head, buffer.id_at(buffer.head)
                    yield reset_frame(last_id)
                elif events:
                    position, last_id = events[-1].seq, events[-1].id
                    if chunk := b"".join(e.frame for e in events if e.id not in sent):
                        yield chunk
                elif not await self._sleep(deadline) and loop.time() < deadline:
                    yield KEEP_ALIVE
                if loop.time() >= deadline:
                    yield id_frame(last_id)
                    return
        finally:
            self.open -= 1

    async def resume(
        self, last: str, deadline: float, changes_after: ChangesAfter
    ) -> AsyncGenerator[bytes, None]:
        """A stream after the event `last`, which the buffer does not hold (it was sent by
        another replica, or before this process listened): the store's own feed brings the
        client up to date, then the buffer takes over. `reset` when the store cannot tell
        (the directory keeps no feed; an id older than the store keeps; the store is down)."""
        yield CONNECTED
        sent = {last}
        position: int | None = None
        while (position := self.buffer.position(last)) is None:
            head = self.buffer.head  # every event up to here was heard before the store's answer
            try:
                changes = await changes_after(last)
            except ApiError:
                changes = None
            if not changes:  # None: cannot tell (reset); []: up to date, the buffer goes on
                position = None if changes is None else head
                break
            yield b"".join(event_frame(c.id, c.mac, c.etag) for c in changes)
            sent.update(change.id for change in changes)
            last = changes[-1].id
        async with contextlib.aclosing(self.follow(position, deadline, sent, b"")) as rest:
            async for chunk in rest:
                yield chunk

    async def _sleep(self, deadline: float) -> bool:
        """Until woken (True), or the heartbeat or the deadline is due (False)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        timeout = max(0.0, min(self.heartbeat, deadline - loop.time()))
        timer = loop.call_later(timeout, _settle, future, False)
        self._sleeping.add(future)
        try:
            return await future
        finally:
            timer.cancel()
            self._sleeping.discard(future)

    def wake(self) -> None:
        """A change was appended: wake every sleeping stream, a batch per turn of the loop."""
        if self._fan_out is not None and not self._fan_out.done():
            self._again = True
            return
        self._fan_out = asyncio.get_running_loop().create_task(self._wake_all())

    async def _wake_all(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            sleeping, self._sleeping = self._sleeping, set()
            for count, future in enumerate(sleeping, 1):
                _settle(future, True)
                if count % FAN_OUT_BATCH == 0:
                    await _take_turns()

    def stop(self) -> None:
        """Every stream ends now: the process is stopping."""
        self.stopping = True
        for future in self._sleeping:
            _settle(future, True)


async def _take_turns() -> None:
    """Let the woken streams send (one turn of the loop), then leave the loop to others for as
    long again: a fan-out takes at most about half of the loop while other requests wait, and
    the changes of a burst gather meanwhile, so that each stream sends them in fewer chunks."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.sleep(0)
    await asyncio.sleep(loop.time() - started)


def _settle(future: "asyncio.Future[bool]", woken: bool) -> None:
    if not future.done():
        future.set_result(woken)
