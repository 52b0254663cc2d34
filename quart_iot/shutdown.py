"""GracefulStop extension: at SIGTERM, refuse new writes and let the writes in flight finish.

A write request counts as started once its headers arrived (its body may still be on its
way). On stop, writes that arrive get 503 SHUTTING_DOWN with Retry-After, readiness turns
503, and the stop waits up to SHUTDOWN_TIMEOUT for the started ones to answer; only then does
hypercorn close its sockets. A write still running at that deadline is answered 503 (its
outcome unknown to the client) and the process waits for its file operation to end.
"""

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from quart import Quart, current_app, g, request

from quart_iot.errors import ShuttingDown
from quart_iot.store import ConfigStore

log = logging.getLogger(__name__)

WRITE_METHODS = frozenset({"PUT", "DELETE"})


class GracefulStop:
    """Extension: counts the write requests in flight and drains them on stop."""

    ANSWER_SECONDS = 1.0  # at least this long to send the answers after the drain

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.stopping = False
        self.gave_up = False  # some write outlived the timeout
        self._writes = 0
        self._idle = asyncio.Event()  # no write request in flight
        self._idle.set()
        self._store: ConfigStore | None = None
        # Called on the loop the moment the stop begins (long polls are answered then).
        self.stop_listeners: list[Callable[[], None]] = []

    def init_app(self, app: Quart) -> None:
        app.extensions["graceful_stop"] = self
        self._store = cast(ConfigStore, app.extensions["config_store"])
        app.before_request(self._admit)
        app.teardown_request(self._release)

    @classmethod
    def of(cls, app: Quart) -> "GracefulStop":
        """The app's GracefulStop."""
        stop = app.extensions["graceful_stop"]
        assert isinstance(stop, cls)
        return stop

    async def _admit(self) -> None:
        if request.method not in WRITE_METHODS or request.blueprint != "configs":
            return
        if self.stopping:
            raise ShuttingDown
        g.write_in_flight = True
        self._writes += 1
        self._idle.clear()

    async def _release(self, _: BaseException | None) -> None:
        if g.pop("write_in_flight", False):
            self._writes -= 1
            if not self._writes:
                self._idle.set()

    async def drain(self) -> float:
        """Refuse new writes, wait for those in flight; the seconds left of the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        self.stopping = True
        for listener in self.stop_listeners:
            listener()
        log.info("stopping: new writes refused, %d in flight", self._writes)
        try:
            await asyncio.wait_for(self._idle.wait(), self.timeout)
        except TimeoutError:
            log.warning(
                "stopping: %d write(s) still running after SHUTDOWN_TIMEOUT (%gs); their "
                "clients get 503, and the process waits for each file operation to end",
                self._writes,
                self.timeout,
            )
            assert self._store is not None
            self.gave_up = True
            self._store.give_up_writes()
        return max(0.0, deadline - loop.time())


def shutting_down() -> bool:
    """Whether the running app is stopping (readiness reports it)."""
    stop = current_app.extensions.get("graceful_stop")
    return isinstance(stop, GracefulStop) and stop.stopping
