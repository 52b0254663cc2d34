"""ConfigStore, the extension: the store's async API, the same whatever the store.

It checks MACs and version ids, speaks only to its Backend, and decides once what a write is:
every write (save, delete, restore, and any added later) goes through `_write`, which refuses
it when its request arrived after the stop began (503 SHUTTING_DOWN), carries it out in a
task of its own (a client that hangs up never cancels a write half-told) and tells the write
listeners how it ended (the audit line, MQTT, the other workers' wake-ups).
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from quart import Quart, current_app, g, has_request_context

from quart_iot.documents import Document
from quart_iot.errors import ApiError, ShuttingDown, WriteOutlived
from quart_iot.models import HISTORY_PAGE, HISTORY_PAGE_MAX, StorageState
from quart_iot.patch import Operation, make_patch
from quart_iot.settings import Settings
from quart_iot.store.backend import (
    Backend,
    Change,
    ChangeSink,
    Deleted,
    Saved,
    StartRefused,
    StorageStats,
    Unconfirmed,
    WriteMeta,
)
from quart_iot.store.directory.backend import DirectoryBackend
from quart_iot.store.events import WriteAction, Written
from quart_iot.store.records import Precondition, StoredConfig, canonical_mac, check_version
from quart_iot.store.search import Search

log = logging.getLogger(__name__)

Outcome = TypeVar("Outcome", Saved, Deleted)

WRITE_END_SECONDS = 30.0  # at the end of the stop, how long writes still running are awaited
ANYONE = WriteMeta()


class ConfigStore:
    """Extension: one JSON document per device, in whichever store the settings chose."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        # Called on the event loop once per write of this process (one that took effect, was
        # refused, or failed), in the context of the request that made it, even after its
        # client hung up. Must not block.
        self.write_listeners: list[Callable[[Written], None]] = []
        # Hear every change the store sees, whoever made it (the waiting extension).
        self.change_sinks: list[ChangeSink] = []
        self.refusing_since: float | None = None  # monotonic time the stop began
        self._writes: set[asyncio.Task[Any]] = set()  # writes in flight
        self._gave_up: asyncio.Future[None] | None = None  # done: the stop stops waiting
        self.start_refused: str | None = None  # why the store would not start (one line)

    @classmethod
    def from_settings(cls, settings: Settings) -> "ConfigStore":
        """The store the settings choose: here, and only here (ESP32_CONFIGS_DIR: a
        directory; DATABASE_URL: PostgreSQL)."""
        if settings.database_url is not None:
            from quart_iot.store.postgres import PostgresBackend  # asyncpg only when used

            return cls(PostgresBackend.from_settings(settings))
        return cls(DirectoryBackend.from_settings(settings))

    @classmethod
    def of(cls, app: Quart) -> "ConfigStore":
        store = app.extensions["config_store"]
        assert isinstance(store, cls)
        return store

    def init_app(self, app: Quart) -> None:
        app.extensions["config_store"] = self
        app.logger.addFilter(_no_refusal_traceback)
        app.before_serving(self._start)
        app.after_serving(self._stop)
        app.before_request(_arrived)

    # -- reads ---------------------------------------------------------------------------

    async def list_json(self) -> bytes:
        """The list response body, `{"configs": [...], "count": n}`."""
        return await self.backend.list_json()

    async def search_json(self, search: Search) -> bytes:
        """A filtered list body: the entries of the devices the search selects."""
        return await self.backend.search_json(search)

    async def count(self) -> int:
        """How many usable configs the store holds now."""
        return await self.backend.count()

    async def get(self, mac: str) -> StoredConfig:
        """The stored document of one device."""
        return await self.backend.get(canonical_mac(mac))

    async def current_etag(self, mac: str) -> str:
        """The ETag of one device's document, cheaper than `get` where the store can."""
        return await self.backend.current_etag(canonical_mac(mac))

    async def versions_json(
        self, mac: str, limit: int = HISTORY_PAGE, before: str | None = None
    ) -> bytes:
        """A page of one device's history: `limit` versions, newest first, older than
        version `before`."""
        limit = max(1, min(limit, HISTORY_PAGE_MAX))
        older = check_version(before) if before is not None else None
        return await self.backend.versions_json(canonical_mac(mac), limit, older)

    async def version(self, mac: str, version: str) -> StoredConfig:
        """One kept version of one device."""
        return await self.backend.version(canonical_mac(mac), check_version(version))

    async def diff(self, mac: str, version: str, to: str | None = None) -> list[Operation]:
        """RFC 6902 JSON Patch from a version to the current document (or to version `to`)."""
        source = await self.version(mac, version)
        target = await (self.version(mac, to) if to is not None else self.get(mac))
        return make_patch(source.content, target.content)

    async def deleted(self) -> list[dict[str, Any]]:
        """Devices whose document is gone but whose history remains."""
        return await self.backend.deleted()

    async def health(self) -> tuple[StorageState, str | None]:
        """(the storage state, the reason when it is unavailable)."""
        return await self.backend.health()

    def stats(self) -> StorageStats:
        """The storage's figures for the metrics."""
        return self.backend.stats()

    async def changes_after(self, change_id: str) -> list[Change] | None:
        """The changes after `change_id` when the store still knows them all, else None."""
        return await self.backend.changes_after(change_id)

    # -- writes: each one through `_write` -------------------------------------------------

    async def save(
        self,
        mac: str,
        content: Document,
        precondition: Precondition | None = None,
        meta: WriteMeta = ANYONE,
    ) -> Saved:
        """Create or replace a document, atomically and durably."""
        mac, condition = canonical_mac(mac), precondition or Precondition()
        return await self._write(
            "save", mac, meta, lambda: self.backend.save(mac, content, condition, meta)
        )

    async def delete(
        self, mac: str, precondition: Precondition | None = None, meta: WriteMeta = ANYONE
    ) -> Deleted:
        """Remove a document (its history keeps it)."""
        mac, condition = canonical_mac(mac), precondition or Precondition()
        return await self._write(
            "delete", mac, meta, lambda: self.backend.delete(mac, condition, meta)
        )

    async def restore(
        self,
        mac: str,
        version: str,
        precondition: Precondition | None = None,
        meta: WriteMeta = ANYONE,
    ) -> Saved:
        """Make a kept version current, as a save of its content."""
        mac, version = canonical_mac(mac), check_version(version)
        condition = precondition or Precondition()

        async def restoring() -> Saved:
            stored = await self.backend.version(mac, version)
            return await self.backend.save(mac, stored.content, condition, meta)

        return await self._write("restore", mac, meta, restoring)

    async def _write(
        self,
        action: WriteAction,
        mac: str,
        meta: WriteMeta,
        write: Callable[[], Awaitable[Outcome]],
    ) -> Outcome:
        """The one way a write happens: the stop's gate, a task of its own, its listeners."""
        if self._refuses():
            refusal = ShuttingDown()
            self._tell(Written.refused(action, mac, meta, refusal))
            raise refusal
        task = asyncio.get_running_loop().create_task(self._carry_out(action, mac, meta, write))
        self._writes.add(task)
        task.add_done_callback(self._write_ended)
        return await self._outcome(task)

    async def _carry_out(
        self,
        action: WriteAction,
        mac: str,
        meta: WriteMeta,
        write: Callable[[], Awaitable[Outcome]],
    ) -> Outcome:
        try:
            outcome = await write()
        except Unconfirmed as error:  # it happened: told as a write that took effect
            self._tell(Written.took_effect(action, meta, error.outcome, error))
            raise
        except ApiError as error:
            self._tell(Written.refused(action, mac, meta, error))
            raise
        except Exception:
            self._tell(Written.refused(action, mac, meta, ApiError("Internal server error")))
            raise
        self._tell(Written.took_effect(action, meta, outcome))
        return outcome

    async def _outcome(self, task: "asyncio.Task[Outcome]") -> Outcome:
        """The write's outcome. Cancelling the wait leaves the write running, as a stop does."""
        loop = asyncio.get_running_loop()
        if self._gave_up is None or self._gave_up.get_loop() is not loop:
            self._gave_up = loop.create_future()
        await asyncio.wait((task, self._gave_up), return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            raise WriteOutlived
        return task.result()

    def _write_ended(self, task: "asyncio.Task[Any]") -> None:
        self._writes.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: its request (if still there) raises it

    def _tell(self, written: Written) -> None:
        for listener in self.write_listeners:
            try:
                listener(written)
            except Exception:  # one listener's fault must not cost the others their event
                log.exception("a write listener failed")

    # -- the stop --------------------------------------------------------------------------

    @property
    def writes_in_flight(self) -> int:
        return len(self._writes)

    def refuse_writes(self) -> None:
        """From now on a write is refused with 503 SHUTTING_DOWN, unless its request arrived
        before (its body may have been on its way): that one is carried out."""
        self.refusing_since = time.monotonic()

    def _refuses(self) -> bool:
        if self.refusing_since is None:
            return False
        arrived = g.get("store_arrived") if has_request_context() else None
        return arrived is None or arrived >= self.refusing_since

    async def drain(self, seconds: float) -> bool:
        """Wait up to `seconds` for the writes in flight; whether they all ended."""
        if not self._writes:
            return True
        _, running = await asyncio.wait(set(self._writes), timeout=seconds)
        return not running

    def give_up_writes(self) -> None:
        """Answer the writes still running now (the stop's deadline passed); they go on."""
        if self._gave_up is not None and not self._gave_up.done():
            self._gave_up.set_result(None)

    # -- the change sink the backend tells ---------------------------------------------------

    def change_seen(self, change: Change) -> None:
        for sink in self.change_sinks:
            sink.change_seen(change)

    def changes_missed(self) -> None:
        for sink in self.change_sinks:
            sink.changes_missed()

    # -- lifecycle ---------------------------------------------------------------------------

    async def _start(self) -> None:
        try:
            await self.backend.start(self)
        except StartRefused as refusal:  # `python -m quart_iot` then exits 1
            self.start_refused = str(refusal)
            log.error("not starting: %s", refusal)  # noqa: TRY400 (one line, no traceback)
            raise

    async def _stop(self) -> None:
        # A write that outlived SHUTDOWN_TIMEOUT still ends, and is told (its audit line).
        if self._writes and not await self.drain(WRITE_END_SECONDS):
            log.warning("stopping: %d write(s) still running, not awaited", len(self._writes))
        await self.backend.stop()


def _no_refusal_traceback(record: logging.LogRecord) -> bool:
    """Quart logs a failed start with its traceback; a refusal was said in one line."""
    return not (record.exc_info and isinstance(record.exc_info[1], StartRefused))


def current_store() -> ConfigStore:
    """The ConfigStore of the running app."""
    return ConfigStore.of(current_app)


async def _arrived() -> None:
    """When the request arrived: a write whose request came before the stop is carried out."""
    g.store_arrived = time.monotonic()
