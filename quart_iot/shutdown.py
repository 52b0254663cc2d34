"""GracefulStop extension: at SIGTERM, the store refuses new writes and the writes in flight
finish.

On stop, readiness turns 503, the store answers 503 SHUTTING_DOWN with Retry-After every
write of a request that arrives from then on (the store decides what a write is: PUT, DELETE
and restore alike), and the stop waits up to SHUTDOWN_TIMEOUT for the writes the store is
carrying out; only then does hypercorn close its sockets, giving the requests still in flight
(a write whose body is still arriving, say) the rest of the timeout. A write still running at
the deadline is answered 503 (its outcome unknown to the client) and goes on to its end.
"""

import asyncio
import logging
from collections.abc import Callable

from quart import Quart, current_app

from quart_iot.store import ConfigStore

log = logging.getLogger(__name__)


class GracefulStop:
    """Extension: on stop, refuse the store's new writes and drain those in flight."""

    ANSWER_SECONDS = 1.0  # at least this long to send the answers after the drain

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.stopping = False
        self.gave_up = False  # some write outlived the timeout
        self._store: ConfigStore | None = None
        # Called on the loop the moment the stop begins (long polls are answered then).
        self.stop_listeners: list[Callable[[], None]] = []

    @classmethod
    def of(cls, app: Quart) -> "GracefulStop":
        stop = app.extensions["graceful_stop"]
        assert isinstance(stop, cls)
        return stop

    def init_app(self, app: Quart) -> None:
        app.extensions["graceful_stop"] = self
        self._store = ConfigStore.of(app)

    async def drain(self) -> float:
        """Refuse new writes, wait for those in flight; the seconds left of the timeout."""
        assert self._store is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        self.stopping = True
        self._store.refuse_writes()
        for listener in self.stop_listeners:
            listener()
        log.info("stopping: new writes refused, %d in flight", self._store.writes_in_flight)
        if not await self._store.drain(self.timeout):
            log.warning(
                "stopping: %d write(s) still running after SHUTDOWN_TIMEOUT (%gs); their "
                "clients get 503, and the process waits for each file operation to end",
                self._store.writes_in_flight,
                self.timeout,
            )
            self.gave_up = True
            self._store.give_up_writes()
        return max(0.0, deadline - loop.time())


def shutting_down() -> bool:
    """Whether the running app is stopping (readiness reports it)."""
    stop = current_app.extensions.get("graceful_stop")
    return isinstance(stop, GracefulStop) and stop.stopping
