"""The store interface: what every store implementation (the directory, PostgreSQL) provides.

Routes, waiting, history, notifications and metrics speak to `ConfigStore`, the extension; it
speaks to one `Backend`. What is the same for every store lives in the extension (MACs and
version ids checked, the gate that refuses writes while stopping, writes that finish whatever
the client does, the write events that the audit, MQTT and waiting hear); what differs lives
in the backend. The same behaviour tests run against every backend.

Values every backend shares are in `records.py` (StoredConfig, Precondition, `to_store` for
the stored bytes, the JSON of a history page).
"""

from dataclasses import dataclass
from typing import Any, Protocol

from quart_iot.bulk import Journal
from quart_iot.documents import Document
from quart_iot.errors import WriteNotConfirmed
from quart_iot.models import StorageState
from quart_iot.store.devicemodels import ModelEntry, StoredModel
from quart_iot.store.records import Precondition, StoredConfig
from quart_iot.store.search import Search


@dataclass(frozen=True, slots=True)
class WriteMeta:
    """What a write records beside the document: who made it, and the bulk change it is part
    of (issue 21). Both are kept with the history version the write makes."""

    subject: str | None = None  # "sub:alice", "client_id:robot"; None with access control off
    change_id: str | None = None


@dataclass(frozen=True, slots=True)
class Saved:
    """The outcome of a save."""

    stored: StoredConfig
    etag_before: str | None  # decided with the write (under its lock or in its transaction)
    version: str | None  # the history version this save made (None: history off, unchanged)
    unchanged: bool = False  # the stored bytes equal the current ones: nothing new was kept
    # A restore (never refused by validation) of content that does not meet its model: the
    # number of violations (at most 50), or "unknown-model" (the Schema-Violations header).
    schema_violations: str | None = None


@dataclass(frozen=True, slots=True)
class Deleted:
    """The outcome of a delete."""

    mac: str
    etag_before: str | None  # None: what was removed was not a usable document
    version: str | None  # the `deleted` history version (None: history off)


@dataclass(frozen=True, slots=True)
class SavedModel:
    """The outcome of a device model's save."""

    stored: StoredModel
    etag_before: str | None  # decided with the write
    devices: int  # documents naming the model, counted with the write
    unchanged: bool = False  # the very bytes it held: nothing was written


@dataclass(frozen=True, slots=True)
class DeletedModel:
    """The outcome of a device model's delete."""

    code: str
    etag_before: str


class Unconfirmed(WriteNotConfirmed):
    """A write that happened and is visible, whose durability the storage did not confirm
    (503 WRITE_NOT_CONFIRMED): its listeners hear of it as a write that took effect."""

    def __init__(self, outcome: "Saved | Deleted | SavedModel | DeletedModel") -> None:
        if isinstance(outcome, Saved):
            super().__init__(outcome.stored.mac, "saved", outcome.stored.etag)
        elif isinstance(outcome, Deleted):
            super().__init__(outcome.mac, "deleted", None)
        elif isinstance(outcome, SavedModel):
            super().__init__(outcome.stored.code, "saved", outcome.stored.etag, "Device model")
        else:
            super().__init__(outcome.code, "deleted", None, "Device model")
        self.outcome = outcome


@dataclass(frozen=True, slots=True)
class Change:
    """A document changed, by any writer: this process, another process or replica, a hand
    edit. `id` is the event stream's id: ordered, unique within what `changes_after` knows."""

    id: str
    mac: str
    etag: str | None  # None: the document is gone (or no longer usable)


class ChangeSink(Protocol):
    """Who hears the store's changes (the waiting extension), on the event loop."""

    def change_seen(self, change: Change) -> None:
        """One change; must not block."""

    def changes_missed(self) -> None:
        """Changes may have been missed (a lost connection to the database, say): event
        streams must `reset`, long polls must check their document again."""


class StartRefused(Exception):
    """The store will not serve what it found (a database schema newer than this code): the
    process stops at start with this one line, and a non-zero exit."""


@dataclass(frozen=True, slots=True)
class StorageStats:
    """What the metrics show of the storage, as the backend last knew it (no I/O to read)."""

    writes_blocked: bool = False  # writes time out waiting for a lock held elsewhere
    versions_kept: int | None = None  # None: not known yet
    history_bytes: int | None = None
    pruned: int = 0  # versions retention removed in this process


class Backend(Protocol):
    """One store implementation. MACs and version ids arrive canonical and checked. Errors are
    ApiErrors (quart_iot.errors): ConfigNotFound, PreconditionFailed, ConfigExists,
    StorageUnavailable, WritesBlocked, Unconfirmed..."""

    async def start(self, sink: ChangeSink) -> None:
        """Begin serving (connect, migrate, start background work); changes go to `sink`."""

    async def stop(self) -> None:
        """End background work and release connections and threads."""

    async def health(self) -> tuple[StorageState, str | None]:
        """(the storage state, the reason when it is unavailable)."""

    def stats(self) -> StorageStats:
        """The storage's figures for the metrics (cheap: what the backend already knows)."""

    # -- documents ---------------------------------------------------------------------------

    async def list_json(self) -> bytes:
        """The list body, `{"configs": [...], "count": n}`, sorted by MAC, as of now."""

    async def count(self) -> int:
        """How many usable documents there are now."""

    async def get(self, mac: str) -> StoredConfig:
        """One device's stored document, as of now (read-your-writes on every replica)."""

    async def current_etag(self, mac: str) -> str:
        """One device's ETag, cheaper than `get` where the backend can."""

    async def save(
        self, mac: str, content: Document, precondition: Precondition, meta: WriteMeta
    ) -> Saved:
        """Create or replace atomically and durably (`records.to_store` gives the bytes); the
        precondition decided inside the write; bytes equal to the current ones keep nothing
        new (`Saved.unchanged`)."""

    async def delete(self, mac: str, precondition: Precondition, meta: WriteMeta) -> Deleted:
        """Remove atomically; the history keeps a `deleted` version only if the delete
        happened."""

    # -- history -----------------------------------------------------------------------------

    async def versions_json(self, mac: str, limit: int, before: str | None) -> bytes:
        """One page of a device's kept versions, newest first, older than version `before`
        (`records.history_page`; ConfigNotFound if it never had a document)."""

    async def version(self, mac: str, version: str) -> StoredConfig:
        """One kept version."""

    async def deleted(self) -> list[dict[str, Any]]:
        """Devices whose document is gone but whose history remains."""

    # -- fleet search (issue 21) -------------------------------------------------------------

    async def search_json(self, search: Search) -> bytes:
        """The list body of the devices the search selects, `{"configs": [...], "count": n}`
        with each device's `search.entry`, sorted by MAC, as of now (read-your-writes on
        every replica), from a `search.SearchCache` kept up to date by evaluating only the
        devices changed since its answer was made."""

    # -- bulk changes (issue 21): their records --------------------------------------------
    # A record is the change's Journal without the documents before (kept apart, for a
    # revert). The process that runs a change owns it (a lock that dies with the process):
    # a `running` record with no owner is a change its process did not finish.

    async def begin_change(self, journal: Journal) -> None:
        """Keep the record, and the documents before, durably before the first device is
        written; this process owns the change until `end_change`. Older records past the
        retention go."""

    async def end_change(self, journal: Journal) -> None:
        """Keep the record with every device decided (completed or interrupted), durably; the
        change is no longer owned."""

    async def change(self, change_id: str) -> tuple[Journal, bool]:
        """A change's record, and whether a process owns it now (ChangeNotFound)."""

    async def change_befores(self, change_id: str) -> dict[str, Document]:
        """The documents a change found, by MAC: what its revert writes back."""

    async def changes(self, limit: int, before: str | None) -> list[tuple[Journal, bool]]:
        """Up to `limit` records older than change id `before`, newest first (as `change`)."""

    async def change_writes(self, change_id: str) -> dict[str, str]:
        """The devices whose history keeps a version the change wrote: that version's ETag."""

    # -- the change feed ---------------------------------------------------------------------

    async def changes_after(self, change_id: str) -> list[Change] | None:
        """The changes after `change_id`, oldest first, when the backend still knows them all;
        None when it cannot tell (too old, another epoch): the event stream sends `reset`."""

    # -- device models (issue 20) --------------------------------------------------------------
    # Codes arrive checked. A save of a document whose Precondition names a model (code, ETag)
    # is decided only while that model is still that version (else ModelChanged; UnknownModel
    # once it is gone), and the model cannot be deleted before that save is decided.

    async def models(self, code: str | None = None) -> list[ModelEntry]:
        """Every device model (or only `code`), sorted by code, with the documents naming it."""

    async def model(self, code: str) -> StoredModel:
        """One model as stored now, cheaply (ModelNotFound): every validated write reads it."""

    async def save_model(self, model: StoredModel, precondition: Precondition) -> SavedModel:
        """Create or replace a model atomically and durably, its condition decided inside the
        write (as for documents)."""

    async def delete_model(self, code: str, precondition: Precondition) -> DeletedModel:
        """Remove a model, unless documents name it (ModelInUse, counted inside the write)."""

    async def documents_of(self, code: str) -> list[StoredConfig]:
        """Every usable document naming the model, sorted by MAC."""
