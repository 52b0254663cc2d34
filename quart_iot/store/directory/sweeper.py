"""The store's background work, in two tasks that never wait for each other:

- the sweep, every SWEEP_INTERVAL: the directory checked for changes made by other processes
  or by hand (what wakes waiters on this replica for another's write), and every other time
  each file for rewrites in place;
- the housekeeping: retention of the devices written (each SWEEP_INTERVAL), the history
  surveyed (the gauges; retention by age of devices nobody writes), stale temp files removed.
  A survey takes about a second at 20,000 devices: it must never hold up the sweep.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial

import anyio.to_thread

from quart_iot.errors import StorageUnavailable, WritesBlocked
from quart_iot.storagetime import timed
from quart_iot.store.directory.files import Directory
from quart_iot.store.directory.index import Index
from quart_iot.store.directory.lock import WriteLock
from quart_iot.store.directory.outage import Outage, storage_errors
from quart_iot.store.directory.retention import Retention

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 0.5
TEMP_SWEEP_INTERVAL = 60.0
HISTORY_SURVEY_INTERVAL = 60.0  # retention by age of devices nobody writes; the gauges


class Sweeper:
    """Runs the sweep and the housekeeping while the app serves (`start`, `stop`)."""

    def __init__(
        self,
        directory: Directory,
        index: Index,
        retention: Retention,
        lock: WriteLock,
        write_outage: Outage,
    ) -> None:
        self.directory = directory
        self.index = index
        self.retention = retention
        self.lock = lock
        self.write_outage = write_outage
        self._tasks: list[asyncio.Task[None]] = []
        self.temp_sweeps: list[Callable[[], None]] = []  # other directories' temp files

    async def start(self) -> None:
        with contextlib.suppress(StorageUnavailable):  # logged; health reports it
            await _run(self.remove_stale_temps)
            await _run(self.survey)  # the history gauges exist from the first scrape
        self._tasks = [
            asyncio.create_task(self._sweep_forever()),
            asyncio.create_task(self._housekeeping_forever()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _sweep_forever(self) -> None:
        loop = asyncio.get_running_loop()
        took, sweeps = 0.0, 0
        while True:
            # One sweep starts every SWEEP_INTERVAL; one that took over a third of it rests
            # half as long as it took (at most two thirds of a core, whatever the directory).
            await asyncio.sleep(max(SWEEP_INTERVAL - took, took / 2))
            started, sweeps = loop.time(), sweeps + 1
            # Other replicas' writes at every sweep; rewrites in place (a stat per name,
            # nearly all of an idle sweep's cost) at every other one: within a second.
            await _guarded(_run(partial(self.index.sweep, in_place=sweeps % 2 == 0)))
            took = loop.time() - started

    async def _housekeeping_forever(self) -> None:
        temps_swept = surveyed = time.monotonic()  # both were done at the start
        # Often enough that a version past its days goes within half of them (tests use
        # seconds).
        survey_every = min(HISTORY_SURVEY_INTERVAL, self.retention.max_age_ns / 2e9)
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            if time.monotonic() - surveyed >= survey_every:
                surveyed = time.monotonic()
                await _guarded(_run(self.survey))
            await _guarded(_run(self.prune))
            # Crashed replicas' temp files too: in Kubernetes no pod restarts with their
            # host name, so waiting for "our" next start would keep them forever.
            if time.monotonic() - temps_swept >= TEMP_SWEEP_INTERVAL:
                temps_swept = time.monotonic()
                await _guarded(_run(self.remove_stale_temps))

    # -- blocking, in worker threads ---------------------------------------------------------

    def survey(self) -> None:
        with storage_errors("survey of the history", self.index.outage):
            self.retention.note(*self.retention.survey(time.time_ns()))

    def prune(self) -> None:
        """Retention for the devices that need it, each under the write lock."""
        if not self.retention.enabled:
            return
        for mac in self.retention.take_pending():
            now = time.time_ns()
            prune = partial(_after_nothing, self.retention.prune, mac, now)
            try:
                with storage_errors("retention of the history", self.write_outage):
                    if self.retention.has_work(mac, now):  # the lock only when there is work
                        self.lock.exclusively(time.monotonic() + 1.0, _nothing, prune)
            except WritesBlocked:
                self.retention.note(mac)  # the next sweep tries again

    def remove_stale_temps(self) -> None:
        with storage_errors("clean-up of temp files", self.write_outage):
            self.directory.remove_stale_temps()
            for sweep in self.temp_sweeps:
                sweep()


async def _run(func: Callable[[], None]) -> None:
    await anyio.to_thread.run_sync(timed(func))


async def _guarded(work: Awaitable[None]) -> None:
    """One round of background work; a failure is logged, the next round runs all the same."""
    try:
        await work
    except StorageUnavailable:
        pass  # the outage is logged once, and health and requests report it
    except Exception:
        log.exception("background work on the configs directory failed")


def _nothing() -> None:
    """No condition to check."""


def _after_nothing(prune: Callable[[str, int], int], mac: str, now: int, _: None) -> int:
    return prune(mac, now)
