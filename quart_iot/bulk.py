"""A bulk change's pure parts (issue 21): the plan for each device, the journal that makes the
change safe to interrupt, what an interrupted change did, and the plan of its revert.

A change is written as: journal `running` (every device planned: the ETag it read and the
ETag its write will give, the document before) -> one conditional write per device (If-Match
the ETag read, the change's id kept with the version) -> journal `completed` with each
outcome. Whatever stops it, each device is at the ETag before or the ETag after (or at
another writer's, a conflict), and `recover` tells which: from the versions carrying the
change's id in the device's history (changed, whatever happened since), else from the ETags
(an ETag is the hash of the stored bytes, so the one a write will give is known before it is
made). Stores keep the journal without the documents before (`without_befores`), those apart
(`befores`): a revert alone reads them. quart_iot/store/bulkchanges.py carries changes out.
"""

import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel

from quart_iot.documents import Document, dump_document, etag_of
from quart_iot.patch import Operation, make_patch, merge_patch

DeviceStatus = Literal["changed", "unchanged", "conflict", "invalid", "not_applied"]
ChangeState = Literal["running", "completed", "interrupted"]


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """One device's part of a change, decided before anything is written."""

    mac: str
    etag_before: str  # the ETag the change read: its write is conditional on it
    before: Document
    after: Document
    stored_after: bytes  # the bytes the write stores (dump_document of `after`)
    diff: list[Operation]  # RFC 6902, before -> after: what a dry run shows
    # Whether there is anything to write: a patch that changes nothing writes nothing.
    changes: bool

    @property
    def etag_after(self) -> str:
        """The ETag the device has once written (the same on every store: it is the bytes')."""
        return etag_of(self.stored_after)


def plan_device(mac: str, content: Document, etag: str, target: Document) -> DevicePlan:
    """The plan that takes a device from `content` (read with `etag`) to `target`."""
    stored = dump_document(target)
    diff = make_patch(content, target)
    return DevicePlan(mac, etag, content, target, stored, diff, stored != dump_document(content))


def plan_change(devices: Iterable[tuple[str, Document, str]], patch: Document) -> list[DevicePlan]:
    """Each device's plan for a merge patch, from `(mac, content, etag)` as read."""
    return [plan_device(mac, c, etag, merge_patch(c, patch)) for mac, c, etag in devices]


# -- the journal: what a store keeps of a change ----------------------------------------------


class JournalEntry(BaseModel):
    """One device in a change's journal."""

    mac: str
    etag_before: str
    etag_after: str
    # What a revert writes back: stores keep it apart from the record (`without_befores`),
    # read only by a revert.
    before: Document | None = None
    status: DeviceStatus | None  # None: not decided yet (being written, or interrupted)
    etag: str | None = None  # the device's ETag when decided (a conflict: the other writer's)
    violations: list[dict[str, Any]] | None = None


class Journal(BaseModel):
    """A change as a store keeps it: written `running` before the first device, `completed`
    after the last (stores keep it as `model_dump_json()`, the same bytes in both)."""

    change_id: str
    state: ChangeState
    created_at: datetime
    completed_at: datetime | None = None
    subject: str | None
    comment: str | None
    filter: str
    patch: Document | None  # None for a revert
    revert_of: str | None = None
    devices: list[JournalEntry]

    def entry(self, mac: str) -> JournalEntry:
        """The device's entry (KeyError if the change did not include it)."""
        return next(entry for entry in self.devices if entry.mac == mac)


def new_change_id(now_ns: int | None = None) -> str:
    """`<nanoseconds since 1970>-<8 hex digits>`, like a history version: sorted by time."""
    now = time.time_ns() if now_ns is None else now_ns
    return f"{now:019d}-{secrets.token_hex(4)}"


def start_journal(
    change_id: str,
    plans: Iterable[DevicePlan],
    *,
    subject: str | None,
    comment: str | None,
    filter_text: str,
    patch: Document | None,
    revert_of: str | None = None,
    violations: Mapping[str, list[dict[str, Any]]] | None = None,
) -> Journal:
    """The journal before the first write: a device with nothing to change, or whose result
    breaks its model (`violations` by MAC), is decided already and will not be written."""
    entries = [_planned_entry(plan, (violations or {}).get(plan.mac)) for plan in plans]
    return Journal(
        change_id=change_id,
        state="running",
        created_at=datetime.now(UTC),
        subject=subject,
        comment=comment,
        filter=filter_text,
        patch=patch,
        revert_of=revert_of,
        devices=entries,
    )


def planned_status(plan: DevicePlan, violations: list[Any] | None) -> DeviceStatus | None:
    """What is decided before anything is written: unchanged (whatever the document's model
    says of it: the change did not make it so), invalid, or None (to be written)."""
    if not plan.changes:
        return "unchanged"
    return "invalid" if violations else None


def _planned_entry(plan: DevicePlan, violations: list[dict[str, Any]] | None) -> JournalEntry:
    status = planned_status(plan, violations)
    return JournalEntry(
        mac=plan.mac,
        etag_before=plan.etag_before,
        etag_after=plan.etag_after,
        before=plan.before,
        status=status,
        etag=None if status is None else plan.etag_before,
        violations=violations or None,
    )


def complete(journal: Journal) -> Journal:
    """The journal once every device is decided."""
    if any(entry.status is None for entry in journal.devices):
        raise ValueError("a change completes only when every device is decided")
    return journal.model_copy(update={"state": "completed", "completed_at": datetime.now(UTC)})


def recover(
    journal: Journal,
    current: Mapping[str, str | None],
    written: Mapping[str, str] | None = None,
) -> Journal:
    """What an interrupted change did. `written`: the devices whose history keeps a version
    carrying the change's id (by MAC, that version's ETag): changed, whatever happened since.
    Else from each undecided device's ETag now (None: gone): the ETag it would write ->
    changed; the ETag it read -> not_applied; any other -> conflict (someone else wrote it)."""
    made = written or {}
    entries = [
        entry
        if entry.status is not None
        else entry.model_copy(update={"status": "changed", "etag": made[entry.mac]})
        if entry.mac in made
        else _decided(entry, current.get(entry.mac))
        for entry in journal.devices
    ]
    return journal.model_copy(
        update={"state": "interrupted", "completed_at": datetime.now(UTC), "devices": entries}
    )


def _decided(entry: JournalEntry, etag: str | None) -> JournalEntry:
    status: DeviceStatus = (
        "changed"
        if etag == entry.etag_after
        else "not_applied"
        if etag == entry.etag_before
        else "conflict"
    )
    return entry.model_copy(update={"status": status, "etag": etag})


def plan_revert(
    journal: Journal,
    current: Mapping[str, tuple[Document, str]],
    befores: Mapping[str, Document] | None = None,
) -> tuple[list[DevicePlan], list[str]]:
    """The plans that put back each device the change wrote, if it is still at the version
    the change wrote; and the MACs that are not (written since, or gone): conflicts. The
    documents before come from `befores` (by MAC) or else from the journal's entries."""
    plans, conflicts = [], []
    for entry in journal.devices:
        if entry.status != "changed":
            continue
        found = current.get(entry.mac)
        before = (befores or {}).get(entry.mac, entry.before)
        if found is None or found[1] != entry.etag_after or before is None:
            conflicts.append(entry.mac)
        else:
            plans.append(plan_device(entry.mac, found[0], found[1], before))
    return plans, conflicts


def without_befores(journal: Journal) -> Journal:
    """The record as stores keep it, the documents before kept apart (`befores`)."""
    devices = [entry.model_copy(update={"before": None}) for entry in journal.devices]
    return journal.model_copy(update={"devices": devices})


def befores(journal: Journal) -> dict[str, Document]:
    """The documents a revert writes back, by MAC."""
    return {e.mac: e.before for e in journal.devices if e.before is not None}
