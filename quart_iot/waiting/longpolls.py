"""Long polls: one future in a set per device, set when the device leaves the ETag it holds.

A change to one device wakes only its own waiters, and an idle process with thousands of them
runs no code at all (their only timer is the deadline).
"""

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

_UNKNOWN = object()  # a waiter's ETag before its route has read the document's


class Waiter:
    """One long poll."""

    __slots__ = ("etag", "future")

    def __init__(self, future: "asyncio.Future[None]") -> None:
        self.future = future
        self.etag: object = _UNKNOWN


class LongPolls:
    """The waiters of this process, by device."""

    def __init__(self) -> None:
        self._by_mac: dict[str, set[Waiter]] = {}

    def __len__(self) -> int:
        return sum(len(waiters) for waiters in self._by_mac.values())

    def macs(self) -> list[str]:
        """The devices long polls wait on now."""
        return list(self._by_mac)

    def on(self, mac: str) -> int:
        """How many long polls wait on this device now."""
        return len(self._by_mac.get(mac, ()))

    @contextmanager
    def registered(self, mac: str) -> Iterator[Waiter]:
        """A waiter for `mac`, woken by every change from now until the block ends."""
        waiter = Waiter(asyncio.get_running_loop().create_future())
        self._by_mac.setdefault(mac, set()).add(waiter)
        try:
            yield waiter
        finally:
            waiters = self._by_mac.get(mac)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._by_mac[mac]

    def wake(self, mac: str, etag: str | None) -> None:
        """The device now has `etag`: wake those that hold another one."""
        for waiter in self._by_mac.get(mac, ()):
            if waiter.etag != etag and not waiter.future.done():
                waiter.future.set_result(None)

    def wake_all(self) -> None:
        for waiters in self._by_mac.values():
            for waiter in waiters:
                if not waiter.future.done():
                    waiter.future.set_result(None)


async def left(waiter: Waiter, etag: str, seconds: float) -> bool:
    """Wait up to `seconds` for the device to leave `etag`: whether it was woken."""
    waiter.etag = etag
    if not waiter.future.done():  # else a change arrived while the route read the ETag
        await asyncio.wait((waiter.future,), timeout=seconds)
    return waiter.future.done()
