"""ConfigStore, the extension: the store's async API, the same whatever the store.

It checks MACs and version ids, speaks only to its Backend, and decides once what a write is:
every write (save, delete, restore, and any added later) goes through `_write`, which refuses
it when its request arrived after the stop began (503 SHUTTING_DOWN), carries it out in a
task of its own (a client that hangs up never cancels a write half-told) and tells the write
listeners how it ended (the audit line, MQTT, the other workers' wake-ups).
"""

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import anyio.to_thread
from quart import Quart, current_app, g, has_request_context
from werkzeug.datastructures import ETags

from quart_iot.documents import Document
from quart_iot.errors import (
    ApiError,
    ConfigNotFound,
    ModelNotFound,
    PreconditionFailed,
    ShuttingDown,
    StorageUnavailable,
    WriteOutlived,
)
from quart_iot.jsonrequest import PARSE_INLINE_BYTES
from quart_iot.models import HISTORY_PAGE, HISTORY_PAGE_MAX, StorageState
from quart_iot.patch import Operation, apply_patch, check_patch, make_patch
from quart_iot.settings import Settings
from quart_iot.store.backend import (
    Backend,
    Change,
    ChangeSink,
    Deleted,
    DeletedModel,
    Saved,
    SavedModel,
    StartRefused,
    StorageStats,
    Unconfirmed,
    WriteMeta,
)
from quart_iot.store.conformance import Conformance, ModelReport
from quart_iot.store.devicemodels import ModelChanged, ModelEntry, StoredModel
from quart_iot.store.directory.backend import DirectoryBackend
from quart_iot.store.events import WriteAction, Written
from quart_iot.store.records import Precondition, StoredConfig, canonical_mac, check_version
from quart_iot.store.search import Search
from quart_iot.validation import model_code

log = logging.getLogger(__name__)

Outcome = TypeVar("Outcome", Saved, Deleted, SavedModel, DeletedModel)
T = TypeVar("T")

WRITE_END_SECONDS = 30.0  # at the end of the stop, how long writes still running are awaited
ANYONE = WriteMeta()
# A validated save whose model changed before the save was decided is validated again, at
# most this often (a model is rarely written twice a second).
MODEL_ATTEMPTS = 5
# A PATCH whose document changed before it was saved is applied again to the newer one. Each
# time it loses, another writer's write landed: with at most this many writers of one device
# at once, every PATCH lands.
PATCH_ATTEMPTS = 10


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
        self.conformance = Conformance(backend)
        self._writes: set[asyncio.Task[Any]] = set()  # writes in flight
        self._gave_up: asyncio.Future[None] | None = None  # done: the stop stops waiting
        self.start_refused: str | None = None  # why the store would not start (one line)
        self.max_bulk_devices = 1000  # MAX_BULK_DEVICES: the devices one bulk change may change

    @classmethod
    def from_settings(cls, settings: Settings) -> "ConfigStore":
        """The store the settings choose: here, and only here (ESP32_CONFIGS_DIR: a
        directory; DATABASE_URL: PostgreSQL)."""
        if settings.database_url is not None:
            from quart_iot.store.postgres import PostgresBackend  # asyncpg only when used

            store = cls(PostgresBackend.from_settings(settings))
        else:
            store = cls(DirectoryBackend.from_settings(settings))
        store.max_bulk_devices = settings.max_bulk_devices
        return store

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
        """Create or replace a document, atomically and durably, once it meets its model."""
        mac, condition = canonical_mac(mac), precondition or Precondition()
        return await self._write(
            "save", mac, meta, lambda: self._save_conforming(mac, content, condition, meta)
        )

    async def patch(
        self,
        mac: str,
        mimetype: str,
        patch: Any,
        precondition: Precondition | None = None,
        meta: WriteMeta = ANYONE,
    ) -> Saved:
        """Apply a merge patch or a JSON Patch to a document and save the result as a PUT is
        saved; never creates. Saved only while the document is still the one patched: else
        applied again to the newer one (a PATCH never undoes a write it did not see)."""
        mac, condition = canonical_mac(mac), precondition or Precondition()
        check_patch(mimetype, patch)  # 400 before the document is read (404) or written

        async def patching() -> Saved:
            for _ in range(PATCH_ATTEMPTS):
                current = await self._patched_document(mac, condition)
                content = await _patched(current, mimetype, patch)
                pinned = Precondition(if_match=ETags([current.etag]))
                try:
                    return await self._save_conforming(mac, content, pinned, meta)
                except PreconditionFailed:
                    continue  # written meanwhile (or deleted: the next read says 404)
            raise StorageUnavailable("the document kept changing under the PATCH; retry")

        return await self._write("patch", mac, meta, patching)

    async def _patched_document(self, mac: str, condition: Precondition) -> StoredConfig:
        """The document a PATCH applies to, meeting the client's conditions (412)."""
        try:
            current = await self.backend.get(mac)
        except ConfigNotFound:
            if condition.if_match:  # as PUT and DELETE answer If-Match on nothing
                raise PreconditionFailed(mac, "If-Match") from None
            raise
        check_condition(mac, condition, current.etag)
        return current

    async def check_content(self, content: Document) -> None:
        """Nothing when content may be written; UnknownModel or SchemaViolation (422) when
        it names a model nobody defined, or breaks its model's schema (for dry runs)."""
        await self.conformance.conform(content)

    async def _save_conforming(
        self, mac: str, content: Document, condition: Precondition, meta: WriteMeta
    ) -> Saved:
        """Validated (first against the model version last read), then saved on the condition
        that the model it was validated against is still that version when the save is decided
        (else read, and validated again)."""
        for attempt in range(MODEL_ATTEMPTS):
            model = await self.conformance.conform(content, last_read=attempt == 0)
            pinned = dataclasses.replace(condition, model=model)
            try:
                return await self.backend.save(mac, content, pinned, meta)
            except ModelChanged:
                continue
        raise StorageUnavailable("the device model kept changing under the write; retry")

    async def change_device(self, mac: str, content: Document, etag: str, meta: WriteMeta) -> Saved:
        """A bulk change's write of one device (`meta.change_id`): saved as a PUT is, only
        while the device is still at `etag`, the version the change read (else 412)."""
        mac, pinned = canonical_mac(mac), Precondition(if_match=ETags([etag]))
        return await self._write(
            "bulk_change", mac, meta, lambda: self._save_conforming(mac, content, pinned, meta)
        )

    async def carry_out(
        self, target: str, meta: WriteMeta, work: Callable[[], Coroutine[Any, Any, T]]
    ) -> T:
        """Long work made of writes (a bulk change, `target` its path for the audit): refused
        once the stop began (unless its request arrived before), carried out in a task of its
        own that the stop's drain awaits, whatever its client does. Each write in it goes
        through `_write`."""
        if self._refuses():
            refusal = ShuttingDown()
            self._tell(Written.refused("bulk_change", target, meta, refusal))
            raise refusal
        task: asyncio.Task[T] = asyncio.get_running_loop().create_task(work())
        self._writes.add(task)
        task.add_done_callback(self._write_ended)
        return await self._outcome(task)

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
            content = (await self.backend.version(mac, version)).content
            # Never refused by validation (an old version may predate its model's schema):
            # reported in the answer instead.
            report = await self.conformance.report(content)
            saved = await self.backend.save(mac, content, condition, meta)
            return dataclasses.replace(saved, schema_violations=report) if report else saved

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

    async def _outcome(self, task: "asyncio.Task[T]") -> T:
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

    # -- device models -----------------------------------------------------------------------

    async def models(self) -> list[ModelEntry]:
        """Every device model, by code, with the documents naming it."""
        return await self.backend.models()

    async def model(self, code: str) -> ModelEntry:
        """One device model, with the documents naming it (ModelNotFound)."""
        code = model_code(code)
        found = await self.backend.models(code)
        if not found:
            raise ModelNotFound(code)
        return found[0]

    async def save_model(
        self,
        code: str,
        name: str,
        schema: Document | None,
        precondition: Precondition | None = None,
        meta: WriteMeta = ANYONE,
    ) -> SavedModel:
        """Create or replace a device model, once its schema is a valid JSON Schema."""
        code, condition = model_code(code), precondition or Precondition()

        async def saving() -> SavedModel:
            model = StoredModel.of_content(code, name, schema)
            await self.conformance.check_schema(model)
            return await self.backend.save_model(model, condition)

        return await self._write("save_model", code, meta, saving)

    async def delete_model(
        self, code: str, precondition: Precondition | None = None, meta: WriteMeta = ANYONE
    ) -> DeletedModel:
        """Remove a device model that no document names (ModelInUse otherwise)."""
        code, condition = model_code(code), precondition or Precondition()
        return await self._write(
            "delete_model", code, meta, lambda: self.backend.delete_model(code, condition)
        )

    async def model_report(self, code: str) -> ModelReport:
        """The documents naming a model that do not meet its schema as it is now."""
        return await self.conformance.model_report(model_code(code))

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

    @property
    def gave_up(self) -> bool:
        """Whether the stop stopped waiting for the writes still running."""
        return self._gave_up is not None and self._gave_up.done()

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


def check_condition(mac: str, precondition: Precondition, current: str) -> None:
    """If-Match and If-None-Match against an existing document's ETag (412)."""
    if_match, if_none_match = precondition.if_match, precondition.if_none_match
    if if_match and not (if_match.star_tag or if_match.contains(current)):
        raise PreconditionFailed(mac, "If-Match")
    if if_none_match and if_none_match.contains_weak(current):
        raise PreconditionFailed(mac, "If-None-Match")


async def _patched(current: StoredConfig, mimetype: str, patch: Any) -> Document:
    """The document a patch makes of `current` (in a worker thread when it is large)."""
    if len(current.raw) <= PARSE_INLINE_BYTES:
        return apply_patch(current.content, mimetype, patch, current.raw)
    return await anyio.to_thread.run_sync(
        lambda: apply_patch(current.content, mimetype, patch, current.raw)
    )


def current_store() -> ConfigStore:
    """The ConfigStore of the running app."""
    return ConfigStore.of(current_app)


async def _arrived() -> None:
    """When the request arrived: a write whose request came before the stop is carried out."""
    g.store_arrived = time.monotonic()
