"""ConfigStore, the extension: the store's async API, its worker threads and its lifecycle.

Data flows one way: routes -> ConfigStore -> Index / Writer / Catalogue -> History /
Retention / WriteLock -> Shelves / Directory; the Sweeper runs the background work. All the
blocking file code lives in this package and runs in worker threads.
"""

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

import anyio.to_thread
from quart import Quart, current_app

from quart_iot.documents import Document
from quart_iot.errors import StorageUnavailable, WriteOutlived
from quart_iot.models import StorageState
from quart_iot.patch import Operation, make_patch
from quart_iot.settings import Settings
from quart_iot.storagetime import timed
from quart_iot.store.directory.batches import BatchedThreads
from quart_iot.store.directory.catalogue import Catalogue
from quart_iot.store.directory.files import Directory
from quart_iot.store.directory.history import History
from quart_iot.store.directory.index import Index
from quart_iot.store.directory.lock import WriteLock
from quart_iot.store.directory.outage import storage_errors
from quart_iot.store.directory.retention import Retention
from quart_iot.store.directory.sweeper import Sweeper
from quart_iot.store.directory.versions import Shelves, check_version
from quart_iot.store.directory.writes import SaveNotConfirmed, Writer
from quart_iot.store.records import Precondition, StoredConfig, canonical_mac

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1024 * 1024  # MAX_CONTENT_LENGTH's default: the body and the file limit
DEFAULT_LOCK_TIMEOUT = 5.0
DEFAULT_HISTORY_VERSIONS = 50
DEFAULT_HISTORY_DAYS = 90.0

P = ParamSpec("P")
R = TypeVar("R")

# Shared by every store in the process, as anyio's threads are; apart, so that a slow fsync
# never holds up a read, and lists (which may wait for a long rescan) never hold the threads
# of gets. One list worker: every list queued behind a rescan shares it.
_reads = BatchedThreads()
_lists = BatchedThreads(workers=1)
_writes = BatchedThreads()


def stop_worker_threads(timeout: float | None = None) -> bool:
    """End the worker threads once their calls are done (a write in progress ends first)."""
    ended = [pool.close(timeout) for pool in (_writes, _lists, _reads)]  # each, not the first
    return all(ended)


class ConfigStore:
    """Extension: one JSON document per device in `directory`, named `<mac>.json`."""

    def __init__(
        self,
        directory: Path,
        *,
        max_document_bytes: int = DEFAULT_MAX_BYTES,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        history_max_versions: int = DEFAULT_HISTORY_VERSIONS,
        history_max_days: float = DEFAULT_HISTORY_DAYS,
    ) -> None:
        # One limit for what a PUT may store and what a read accepts: what we accept we can
        # read back (both come from MAX_CONTENT_LENGTH).
        self.directory = Directory(directory, max_document_bytes)
        self.lock = WriteLock(self.directory, lock_timeout)
        self.index = Index(self.directory, self._changed)
        shelves = Shelves(self.directory)
        self.retention = Retention(shelves, history_max_versions, history_max_days)
        self.history = History(shelves, self.retention)
        self.catalogue = Catalogue(shelves)
        self.writer = Writer(self.directory, self.lock, self.index, self.history)
        self.sweeper = Sweeper(
            self.directory, self.index, self.retention, self.lock, self.writer.outage
        )
        # Called (on the event loop, must not block) after each save of this process that
        # became visible.
        self.saved_listeners: list[Callable[[StoredConfig], None]] = []
        # Called on the event loop with (mac, ETag or None when gone or unusable) whenever the
        # store sees a document change: a write of this process at once, another process's
        # or an outside edit at the next sweep (SWEEP_INTERVAL). Must not block.
        self.change_listeners: list[Callable[[str, str | None], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gave_up: asyncio.Future[None] | None = None  # done: the stop stops waiting

    @classmethod
    def from_settings(cls, settings: Settings) -> "ConfigStore":
        return cls(
            settings.esp32_configs_dir,
            max_document_bytes=settings.max_content_length,  # a body's limit is a file's too
            lock_timeout=settings.lock_timeout,
            history_max_versions=settings.history_max_versions,
            history_max_days=settings.history_max_days,
        )

    def init_app(self, app: Quart) -> None:
        app.extensions["config_store"] = self
        app.before_serving(self._start)
        app.after_serving(self._stop)

    @property
    def writes_blocked(self) -> bool:
        """The last wait for the write lock timed out."""
        return self.lock.blocked

    # -- the async API, one worker-thread hop per call ------------------------------------

    async def list_json(self) -> bytes:
        """The list response body, `{"configs": [...], "count": n}`."""
        body, _ = await _lists.run(timed(partial(self.index.listing, time.monotonic_ns())))
        return body

    async def count(self) -> int:
        """How many usable configs the directory holds now."""
        _, count = await _lists.run(timed(partial(self.index.listing, time.monotonic_ns())))
        return count

    async def get(self, mac: str) -> StoredConfig:
        """The stored document of one device."""
        return await self._read(self.index.get, canonical_mac(mac))

    async def current_etag(self, mac: str) -> str:
        """The ETag of one device's document, without reading it when it has not changed."""
        return await self._read(self.index.current_etag, canonical_mac(mac))

    async def save(
        self,
        mac: str,
        content: Document,
        precondition: Precondition | None = None,
        by: str | None = None,
    ) -> StoredConfig:
        """Create or replace a document, atomically and durably; `by`: the writer's subject,
        kept with the version."""
        mac = canonical_mac(mac)
        deadline = time.monotonic() + self.lock.timeout  # a wait in the queue counts too
        condition = precondition or Precondition()
        write = partial(self.writer.save, mac, content, condition, deadline, by)
        saving = _writes.submit(timed(write))
        saving.add_done_callback(self._saved)  # a write that happened is told, whoever waits
        return await self._written(saving)

    async def delete(
        self, mac: str, precondition: Precondition | None = None, by: str | None = None
    ) -> None:
        """Remove a document (its history keeps it)."""
        mac = canonical_mac(mac)
        deadline = time.monotonic() + self.lock.timeout
        write = partial(self.writer.delete, mac, precondition or Precondition(), deadline, by)
        await self._written(_writes.submit(timed(write)))

    # -- history ---------------------------------------------------------------------------

    async def versions_json(self, mac: str) -> bytes:
        """The history body of one device: every kept version, newest first."""
        mac = canonical_mac(mac)
        return await self._read(self._history_read, self.catalogue.listing, mac)

    async def version(self, mac: str, version: str) -> StoredConfig:
        """One kept version of one device."""
        mac, version = canonical_mac(mac), check_version(version)
        _, stored = await self._read(self._history_read, self.catalogue.read, mac, version)
        return stored

    async def diff(self, mac: str, version: str, to: str | None = None) -> list[Operation]:
        """RFC 6902 JSON Patch from a version to the current document (or to version `to`)."""
        source = await self.version(mac, version)
        target = await (self.version(mac, to) if to is not None else self.get(mac))
        return make_patch(source.content, target.content)

    async def restore(
        self,
        mac: str,
        version: str,
        precondition: Precondition | None = None,
        by: str | None = None,
    ) -> StoredConfig:
        """Make a kept version current through the normal write path."""
        stored = await self.version(mac, version)
        return await self.save(mac, stored.content, precondition, by)

    async def deleted(self) -> list[dict[str, Any]]:
        """Devices whose document is gone but whose history remains."""
        return await self._run(self._history_read, self.catalogue.deleted)

    def _history_read(self, func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        with storage_errors("read of the history", self.index.outage):
            return func(*args, **kwargs)

    async def health(self) -> tuple[StorageState, str | None]:
        """(the storage state, the reason when it is unavailable)."""
        return await self._run(self._health)

    @staticmethod
    async def _run(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        return await anyio.to_thread.run_sync(timed(lambda: func(*args, **kwargs)))

    @staticmethod
    async def _read(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """The hot reads, mostly answered from the index: a cheaper, batched hop."""
        return await _reads.run(timed(lambda: func(*args, **kwargs)))

    async def _written(self, writing: "asyncio.Future[R]") -> R:
        """The write's outcome. Cancelling the wait leaves the write running, as a stop does."""
        loop = asyncio.get_running_loop()
        if self._gave_up is None or self._gave_up.get_loop() is not loop:
            self._gave_up = loop.create_future()
        await asyncio.wait((writing, self._gave_up), return_when=asyncio.FIRST_COMPLETED)
        if not writing.done():
            raise WriteOutlived
        return writing.result()

    def give_up_writes(self) -> None:
        """Answer the writes still running now (the stop's deadline passed); they go on."""
        if self._gave_up is not None and not self._gave_up.done():
            self._gave_up.set_result(None)

    def _saved(self, saving: "asyncio.Future[StoredConfig]") -> None:
        error = saving.exception()
        if error is None or isinstance(error, SaveNotConfirmed):  # visible either way
            stored = saving.result() if error is None else error.stored
            for listener in self.saved_listeners:
                listener(stored)

    def _changed(self, name: str, etag: str | None) -> None:
        """Tell the change listeners, on the event loop (called from any thread)."""
        if self._loop is not None and self.change_listeners:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody listens
                self._loop.call_soon_threadsafe(self._tell_changed, name[:-5], etag)

    def _tell_changed(self, mac: str, etag: str | None) -> None:
        for listener in self.change_listeners:
            listener(mac, etag)

    # -- lifecycle ---------------------------------------------------------------------------

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.sweeper.start()

    async def _stop(self) -> None:
        await self.sweeper.stop()

    # -- blocking, in worker threads ---------------------------------------------------------

    def _health(self) -> tuple[StorageState, str | None]:
        try:
            self.index.stat_dir()
            with os.scandir(self.directory.path) as entries:
                next(entries, None)
        except StorageUnavailable as error:
            return "unavailable", error.reason
        except OSError as error:
            self.index.outage.failed("the configs directory is not readable", error)
            return "unavailable", "the configs directory is not readable"
        self.index.outage.recovered()
        if self.writer.sync_fault and not self.writer.sync_recovers():
            return "unavailable", self.writer.sync_fault
        if not os.access(self.directory.path, os.W_OK):
            return "read-only", None
        return ("writes-blocked" if self.lock.still_blocked() else "read-write"), None


def current_store() -> ConfigStore:
    """The ConfigStore of the running app."""
    return cast(ConfigStore, current_app.extensions["config_store"])
