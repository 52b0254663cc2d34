"""DirectoryBackend: the store as a directory, one `<mac>.json` per device, its history under
`.history/`, its blocking file code run in worker threads.

Data flows one way: DirectoryBackend -> Index / Writer / Catalogue -> History / Retention /
WriteLock -> Shelves / Directory; the Sweeper runs the background work.
"""

import asyncio
import contextlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import anyio.to_thread

from quart_iot.bulk import Journal
from quart_iot.documents import Document
from quart_iot.errors import ApiError, StorageUnavailable
from quart_iot.models import StorageState
from quart_iot.settings import Settings
from quart_iot.storagetime import timed
from quart_iot.store.backend import (
    Change,
    ChangeSink,
    Deleted,
    DeletedModel,
    Saved,
    SavedModel,
    StorageStats,
    WriteMeta,
)
from quart_iot.store.devicemodels import ModelEntry, StoredModel
from quart_iot.store.directory.batches import BatchedThreads
from quart_iot.store.directory.catalogue import Catalogue
from quart_iot.store.directory.changes import ChangeFiles
from quart_iot.store.directory.files import Directory
from quart_iot.store.directory.history import History
from quart_iot.store.directory.index import Index
from quart_iot.store.directory.lock import WriteLock
from quart_iot.store.directory.models import ModelFiles
from quart_iot.store.directory.outage import Outage, storage_errors
from quart_iot.store.directory.retention import Retention
from quart_iot.store.directory.search import DirectorySearches
from quart_iot.store.directory.sweeper import Sweeper
from quart_iot.store.directory.versions import Shelves
from quart_iot.store.directory.writes import Writer
from quart_iot.store.records import Precondition, StoredConfig
from quart_iot.store.search import Search

DEFAULT_MAX_BYTES = 1024 * 1024  # MAX_CONTENT_LENGTH's default: the body and the file limit
DEFAULT_LOCK_TIMEOUT = 5.0
DEFAULT_HISTORY_VERSIONS = 50
DEFAULT_HISTORY_DAYS = 90.0

P = ParamSpec("P")
R = TypeVar("R")

# Shared by every directory store in the process, as anyio's threads are; apart, so that a
# slow fsync never holds up a read, and lists (which may wait for a long rescan) never hold
# the threads of gets. One list worker: every list queued behind a rescan shares it.
_reads = BatchedThreads()
_lists = BatchedThreads(workers=1)
_writes = BatchedThreads()
# Searches apart from lists: answers from the cache in one thread, and evaluations over every
# document (a second or more at 20,000) one at a time in another, each answered when done.
_searches = BatchedThreads(workers=1)
_evaluations = BatchedThreads(workers=1, batch=1)


def stop_worker_threads(timeout: float | None = None) -> bool:
    """End the worker threads once their calls are done (a write in progress ends first)."""
    pools = (_writes, _lists, _reads, _searches, _evaluations)
    ended = [pool.close(timeout) for pool in pools]  # each, not the first
    return all(ended)


class DirectoryBackend:
    """The Backend of one configs directory."""

    def __init__(
        self,
        path: Path,
        *,
        max_document_bytes: int = DEFAULT_MAX_BYTES,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        history_max_versions: int = DEFAULT_HISTORY_VERSIONS,
        history_max_days: float = DEFAULT_HISTORY_DAYS,
    ) -> None:
        # One limit for what a PUT may store and what a read accepts: what we accept we can
        # read back (both come from MAX_CONTENT_LENGTH).
        self.directory = Directory(path, max_document_bytes)
        self.lock = WriteLock(self.directory, lock_timeout)
        self.index = Index(self.directory, self._saw_change)
        shelves = Shelves(self.directory)
        self.retention = Retention(shelves, history_max_versions, history_max_days)
        self.history = History(shelves, self.retention)
        self.catalogue = Catalogue(shelves)
        self.change_files = ChangeFiles(self.directory, shelves)
        self.change_outage = Outage("change records")
        self.searches = DirectorySearches(self.directory, self.index)
        self.model_files = ModelFiles(
            self.directory, self.lock, self._devices, Outage("model writes")
        )
        self.writer = Writer(
            self.directory, self.lock, self.index, self.history, self.model_files.require
        )
        self.sweeper = Sweeper(
            self.directory, self.index, self.retention, self.lock, self.writer.outage
        )
        self.sweeper.temp_sweeps.append(self.model_files.remove_stale_temps)
        # Change ids: `<process epoch>-<sequence>`, unique to this process (the event stream
        # resets a client whose id is from another).
        self.epoch = secrets.token_hex(4)
        self._sequence = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sink: ChangeSink | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "DirectoryBackend":
        assert settings.esp32_configs_dir is not None  # the settings hold one of the two
        return cls(
            settings.esp32_configs_dir,
            max_document_bytes=settings.max_content_length,  # a body's limit is a file's too
            lock_timeout=settings.lock_timeout,
            history_max_versions=settings.history_max_versions,
            history_max_days=settings.history_max_days,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, sink: ChangeSink) -> None:
        self._loop, self._sink = asyncio.get_running_loop(), sink
        await self.sweeper.start()

    async def stop(self) -> None:
        await self.sweeper.stop()

    async def health(self) -> tuple[StorageState, str | None]:
        return await _run(self._health)

    def stats(self) -> StorageStats:
        return StorageStats(
            writes_blocked=self.lock.blocked,
            versions_kept=self.retention.versions_kept,
            history_bytes=self.retention.bytes_used,
            pruned=self.retention.pruned,
        )

    # -- documents, one worker-thread hop per call --------------------------------------------

    async def list_json(self) -> bytes:
        body, _ = await _lists.run(timed(partial(self.index.listing, time.monotonic_ns())))
        return body

    async def count(self) -> int:
        _, count = await _lists.run(timed(partial(self.index.listing, time.monotonic_ns())))
        return count

    async def get(self, mac: str) -> StoredConfig:
        return await _read(self.index.get, mac)

    async def current_etag(self, mac: str) -> str:
        return await _read(self.index.current_etag, mac)

    async def save(
        self, mac: str, content: Document, precondition: Precondition, meta: WriteMeta
    ) -> Saved:
        deadline = time.monotonic() + self.lock.timeout  # a wait in the queue counts too
        write = partial(self.writer.save, mac, content, precondition, deadline, meta)
        return await _writes.submit(timed(write))

    async def delete(self, mac: str, precondition: Precondition, meta: WriteMeta) -> Deleted:
        deadline = time.monotonic() + self.lock.timeout
        write = partial(self.writer.delete, mac, precondition, deadline, meta)
        return await _writes.submit(timed(write))

    # -- history -----------------------------------------------------------------------------

    async def versions_json(self, mac: str, limit: int, before: str | None) -> bytes:
        return await _read(self._history_read, self.catalogue.listing, mac, limit, before)

    async def version(self, mac: str, version: str) -> StoredConfig:
        _, stored = await _read(self._history_read, self.catalogue.read, mac, version)
        return stored

    async def deleted(self) -> list[dict[str, Any]]:
        return await _run(self._history_read, self.catalogue.deleted)

    def _history_read(self, func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        with storage_errors("read of the history", self.index.outage):
            return func(*args, **kwargs)

    # -- fleet search ------------------------------------------------------------------------

    async def search_json(self, search: Search) -> bytes:
        arrived = time.monotonic_ns()
        found = await _searches.run(timed(partial(self.searches.answer, search, arrived)))
        if found is not None:
            return found
        abandoned = threading.Event()
        evaluate = partial(self.searches.evaluate, search, arrived, abandoned)
        try:
            return await _evaluations.run(timed(evaluate))
        except asyncio.CancelledError:
            abandoned.set()  # its client went away: the evaluation stops where it is
            raise

    # -- bulk change records -----------------------------------------------------------------

    async def begin_change(self, journal: Journal) -> None:
        await _run(self._changes_io, self.change_files.begin, journal)

    async def end_change(self, journal: Journal) -> None:
        await _run(self._changes_io, self.change_files.end, journal)

    async def change(self, change_id: str) -> tuple[Journal, bool]:
        return await _run(self._changes_io, self.change_files.get, change_id)

    async def change_befores(self, change_id: str) -> dict[str, Document]:
        return await _run(self._changes_io, self.change_files.befores, change_id)

    async def changes(self, limit: int, before: str | None) -> list[tuple[Journal, bool]]:
        return await _run(self._changes_io, self.change_files.recent, limit, before)

    async def change_writes(self, change_id: str) -> dict[str, str]:
        journal, _ = await self.change(change_id)
        return await _run(self._changes_io, self.change_files.writes, journal)

    def _changes_io(self, func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        with storage_errors("change records", self.change_outage):
            return func(*args, **kwargs)

    # -- the change feed ---------------------------------------------------------------------

    async def changes_after(self, change_id: str) -> list[Change] | None:
        """None: the directory keeps no changes (the waiting extension's buffer does)."""
        return None

    # -- device models -----------------------------------------------------------------------

    async def models(self, code: str | None = None) -> list[ModelEntry]:
        return await _read(self._model_read, self._models, code)

    async def model(self, code: str) -> StoredModel:
        return await _read(self._model_read, self.model_files.read, code)

    async def save_model(self, model: StoredModel, precondition: Precondition) -> SavedModel:
        deadline = time.monotonic() + self.lock.timeout
        return await _writes.submit(
            timed(partial(self.model_files.save, model, precondition, deadline))
        )

    async def delete_model(self, code: str, precondition: Precondition) -> DeletedModel:
        deadline = time.monotonic() + self.lock.timeout
        return await _writes.submit(
            timed(partial(self.model_files.delete, code, precondition, deadline))
        )

    async def documents_of(self, code: str) -> list[StoredConfig]:
        return await _run(self._model_read, self._documents_of, code)

    def _model_read(self, func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        with storage_errors("read of the device models", self.index.outage):
            return func(*args, **kwargs)

    def _models(self, code: str | None) -> list[ModelEntry]:
        models = self.model_files.listing() if code is None else [self.model_files.read(code)]
        counts = self.index.model_counts(time.monotonic_ns())
        return [ModelEntry(model, counts[model.code]) for model in models]

    def _devices(self, code: str) -> int:
        """Documents naming the model now (under the write lock: every write is seen)."""
        return self.index.model_counts(time.monotonic_ns())[code]

    def _documents_of(self, code: str) -> list[StoredConfig]:
        documents = []
        for mac in self.index.named(code, time.monotonic_ns()):
            with contextlib.suppress(ApiError):  # deleted or spoilt meanwhile: not one of them
                documents.append(self.index.get(mac))
        return documents

    def _saw_change(self, name: str, etag: str | None) -> None:
        """The index saw a document change (called from any thread): told on the loop."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody listens
                self._loop.call_soon_threadsafe(self._tell_sink, name[:-5], etag)

    def _tell_sink(self, mac: str, etag: str | None) -> None:
        self._sequence += 1  # on the loop: ids in the order the sink hears them
        if self._sink is not None:
            self._sink.change_seen(Change(f"{self.epoch}-{self._sequence}", mac, etag))

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


async def _run(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    return await anyio.to_thread.run_sync(timed(lambda: func(*args, **kwargs)))


async def _read(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """The hot reads, mostly answered from the index: a cheaper, batched hop."""
    return await _reads.run(timed(lambda: func(*args, **kwargs)))
