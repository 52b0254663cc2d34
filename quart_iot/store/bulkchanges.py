"""Bulk changes (issue 21) carried out: select, plan, validate, keep the record, write each
device through the store's one write path, and settle what an interrupted change did.

A change: the devices the filter selects are read (each one's document and ETag: the version
the change read), each one's result planned (bulk.py) and validated against its model; the
record is kept durably (`Backend.begin_change`) before the first device is written; each
device is then its own write, conditional on the version read (`ConfigStore.change_device`:
412 there is a `conflict`), a few at a time; the record is kept again with every outcome.
The whole runs as a task of its own that the stop's drain awaits (`ConfigStore.carry_out`).
A record left `running` by a process that died is settled when it is next read: each device
whose history keeps a version carrying the change's id was `changed`, the others by ETag.
"""

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, TypeVar

import anyio.to_thread

from quart_iot.bulk import (
    DevicePlan,
    DeviceStatus,
    Journal,
    JournalEntry,
    complete,
    new_change_id,
    plan_change,
    plan_revert,
    recover,
    start_journal,
)
from quart_iot.documents import Document
from quart_iot.errors import (
    ApiError,
    ChangeRunning,
    ConfigNotFound,
    ConfigUnreadable,
    PreconditionFailed,
    SchemaViolation,
    TooManyDevices,
    UnknownModel,
    WriteOutlived,
)
from quart_iot.rql import Filter
from quart_iot.store.backend import Unconfirmed, WriteMeta
from quart_iot.store.extension import ConfigStore
from quart_iot.store.records import StoredConfig
from quart_iot.store.search import Search

# Devices written at once: enough to keep the write pool busy, few enough that a PUT or a
# GET arriving meanwhile waits behind a handful of writes, not behind the change.
WRITES_AT_ONCE = 4
READS_AT_ONCE = 16
Violations = list[dict[str, Any]]
T = TypeVar("T")
log = logging.getLogger(__name__)
R = TypeVar("R")


async def plan(
    store: ConfigStore, filter_text: str, patch: Document, max_devices: int
) -> tuple[list[DevicePlan], dict[str, Violations]]:
    """Each selected device's plan, and the violations of the results that break their model
    (TooManyDevices past `max_devices`, before any document is read)."""
    search = Search(Filter(filter_text), None)
    listed = json.loads(await store.search_json(search))["configs"]
    if len(listed) > max_devices:
        raise TooManyDevices(len(listed), max_devices)
    found = await _each([entry["mac_address"] for entry in listed], store_read(store))
    # Off the event loop: a thousand parses, merges, renderings and diffs would hold it up.
    plans = await anyio.to_thread.run_sync(_plans, search, found, patch)
    return plans, await violations_of(store, plans)


def _plans(search: Search, found: list[StoredConfig | None], patch: Document) -> list[DevicePlan]:
    """The plans of the devices read; one written meanwhile is planned from the version read
    (the one the change is about), if the filter still selects it."""
    devices = [
        (s.mac, s.content, s.etag)
        for s in found
        if s is not None and search.selects(s.mac, s.content)
    ]
    return plan_change(devices, patch)


def store_read(store: ConfigStore) -> Callable[[str], Awaitable[StoredConfig | None]]:
    async def read(mac: str) -> StoredConfig | None:
        try:
            return await store.get(mac)
        except (ConfigNotFound, ConfigUnreadable):  # deleted since, or not a document now
            return None

    return read


async def violations_of(store: ConfigStore, plans: list[DevicePlan]) -> dict[str, Violations]:
    """The results that would not be written (UNKNOWN_MODEL, SCHEMA_VIOLATION), by MAC."""

    async def check(device: DevicePlan) -> Violations | None:
        if not device.changes:
            return None
        try:
            await store.check_content(device.after)
        except (SchemaViolation, UnknownModel) as error:
            return violations(error)
        return None

    found = await _each(plans, check)
    return {p.mac: v for p, v in zip(plans, found, strict=True) if v is not None}


def violations(error: SchemaViolation | UnknownModel) -> Violations:
    """A refusal's violations, as a device's entry shows them."""
    if isinstance(error, SchemaViolation):
        return list((error.details or {}).get("violations") or [])
    return [{"path": "/deviceModel", "keyword": "deviceModel", "message": error.message}]


async def change(
    store: ConfigStore,
    filter_text: str,
    patch: Document,
    comment: str | None,
    subject: str | None,
) -> Journal:
    """A bulk change, from the selection to its final record."""
    plans, found = await plan(store, filter_text, patch, store.max_bulk_devices)
    start = partial(
        start_journal,
        new_change_id(),
        plans,
        subject=subject,
        comment=comment,
        filter_text=filter_text,
        patch=patch,
        violations=found,
    )
    journal = await anyio.to_thread.run_sync(start)  # a thousand entries: off the event loop
    return await run(store, journal, plans, subject)


async def revert(
    store: ConfigStore, change_id: str, subject: str | None, comment: str | None
) -> Journal:
    """A change's revert, itself a change, from the original's record to its own."""
    original = await record(store, change_id)
    plans, conflicts, found = await plan_undo(store, original)
    journal = await anyio.to_thread.run_sync(
        revert_journal, original, plans, conflicts, found, subject, comment
    )
    return await run(store, journal, plans, subject)


async def run(
    store: ConfigStore, journal: Journal, plans: list[DevicePlan], subject: str | None
) -> Journal:
    """Keep the record, write each undecided device, keep the record with every outcome."""
    await store.backend.begin_change(journal)
    meta = WriteMeta(subject, journal.change_id)
    by_mac = {device.mac: device for device in plans}
    todo = [entry for entry in journal.devices if entry.status is None]
    try:
        write = lambda entry: _write(store, by_mac[entry.mac], meta)  # noqa: E731
        outcomes = await _each(todo, write, WRITES_AT_ONCE)
    except BaseException:
        if not store.gave_up:  # else the process ends now: the next read settles it
            await asyncio.shield(settle(store, journal))
        raise
    decided = dict(zip((entry.mac for entry in todo), outcomes, strict=True))
    written = journal.model_copy(
        update={"devices": [decided.get(entry.mac, entry) for entry in journal.devices]}
    )
    if any(entry.status is None for entry in written.devices):
        return await settle(store, written)  # a write failed unforeseen: decided from the store
    done = complete(written)
    await store.backend.end_change(done)
    return done


async def _write(store: ConfigStore, device: DevicePlan, meta: WriteMeta) -> JournalEntry:
    """One device's write, and its entry."""
    status: DeviceStatus
    violations_found: Violations | None = None
    try:
        etag: str | None = (
            await store.change_device(device.mac, device.after, device.etag_before, meta)
        ).stored.etag
        status = "changed"
    except Unconfirmed:  # written (its durability unconfirmed): the change's
        status, etag = "changed", device.etag_after
    except (PreconditionFailed, ConfigNotFound):
        status, etag = "conflict", await _etag_now(store, device.mac)
    except (SchemaViolation, UnknownModel) as error:  # its model changed since it was checked
        status, etag, violations_found = "invalid", device.etag_before, violations(error)
    except WriteOutlived:  # the stop gave up on it, and the process ends: settled at a read
        raise
    except ApiError as error:  # the storage failed, the stop began: written or not, the
        # store tells (`settle`), once the other writes ended
        log.warning("bulk change %s: %s not decided: %s", meta.change_id, device.mac, error)
        return _entry(device, None, None)
    except Exception:  # a failure nobody foresaw: as above
        log.exception("bulk change %s: the write of %s failed", meta.change_id, device.mac)
        return _entry(device, None, None)
    entry = _entry(device, status, etag)
    return entry.model_copy(update={"violations": violations_found})


def _entry(device: DevicePlan, status: DeviceStatus | None, etag: str | None) -> JournalEntry:
    return JournalEntry(
        mac=device.mac,
        etag_before=device.etag_before,
        etag_after=device.etag_after,
        status=status,
        etag=etag,
    )


async def _etag_now(store: ConfigStore, mac: str) -> str | None:
    try:
        return await store.current_etag(mac)
    except ApiError:
        return None


async def settle(store: ConfigStore, journal: Journal) -> Journal:
    """What a change no process runs any more did, kept as its record (`interrupted`)."""
    written = await store.backend.change_writes(journal.change_id)
    undecided = [entry.mac for entry in journal.devices if entry.status is None]
    current = dict(
        zip(undecided, await _each(undecided, lambda m: _etag_now(store, m)), strict=True)
    )
    settled = recover(journal, current, written)
    await store.backend.end_change(settled)
    return settled


async def record(store: ConfigStore, change_id: str) -> Journal:
    """A change's record (settled first if its process died during it)."""
    journal, owned = await store.backend.change(change_id)
    if journal.state == "running" and not owned:
        return await settle(store, journal)
    return journal


async def recent(store: ConfigStore, limit: int, before: str | None) -> list[Journal]:
    """Up to `limit` records older than `before`, newest first."""
    found = await store.backend.changes(limit, before)
    return [
        await settle(store, journal) if journal.state == "running" and not owned else journal
        for journal, owned in found
    ]


async def plan_undo(
    store: ConfigStore, original: Journal
) -> tuple[list[DevicePlan], list[JournalEntry], dict[str, Violations]]:
    """A revert's plans (the devices still at the version the change wrote, back to the one
    before), its conflicts (the others), and the violations of plans that break a model."""
    if original.state == "running":
        raise ChangeRunning(original.change_id)
    befores = await store.backend.change_befores(original.change_id)
    changed = [entry.mac for entry in original.devices if entry.status == "changed"]
    found = await _each(changed, store_read(store))
    plans, entries = await anyio.to_thread.run_sync(_undo_plans, original, found, befores)
    return plans, entries, await violations_of(store, plans)


def _undo_plans(
    original: Journal, found: list[StoredConfig | None], befores: dict[str, Document]
) -> tuple[list[DevicePlan], list[JournalEntry]]:
    """A revert's plans and conflicts (off the event loop: parses, renderings, diffs)."""
    current = {s.mac: (s.content, s.etag) for s in found if s is not None}
    plans, conflicts = plan_revert(original, current, befores)
    return plans, [_conflict(original.entry(mac), current.get(mac)) for mac in conflicts]


def _conflict(entry: JournalEntry, found: tuple[Document, str] | None) -> JournalEntry:
    """A device the revert leaves alone: written since the change (or gone)."""
    etag = found[1] if found is not None else None
    return JournalEntry(
        mac=entry.mac,
        etag_before=etag or "",
        etag_after=entry.etag_before,
        status="conflict",
        etag=etag,
    )


def revert_journal(
    original: Journal,
    plans: list[DevicePlan],
    conflicts: Iterable[JournalEntry],
    found: dict[str, Violations],
    subject: str | None,
    comment: str | None,
) -> Journal:
    """The revert's record before its first write."""
    journal = start_journal(
        new_change_id(),
        plans,
        subject=subject,
        comment=comment,
        filter_text=original.filter,
        patch=None,
        revert_of=original.change_id,
        violations=found,
    )
    entries = sorted([*journal.devices, *conflicts], key=lambda entry: entry.mac)
    return journal.model_copy(update={"devices": entries})


async def _each(items: list[T], func: Callable[[T], Awaitable[R]], at_once: int = 0) -> list[R]:
    """`func` of each item, in order, at most `at_once` (READS_AT_ONCE) running together."""
    limit = asyncio.Semaphore(at_once or READS_AT_ONCE)

    async def one(item: T) -> R:
        async with limit:
            return await func(item)

    return list(await asyncio.gather(*(one(item) for item in items)))
