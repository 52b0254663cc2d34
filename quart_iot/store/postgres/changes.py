"""Bulk change records in PostgreSQL: `bulk_changes` (the record: bulk.Journal without the
documents before, as JSON) and `bulk_change_befores` (those documents, a revert's).

The process running a change holds a session advisory lock, (CHANGE_LOCK, hashtext(id)), on
a connection of its own until the change's record is final: the lock dies with the process
(or its connection), so a record still `running` whose lock is free is a change its process
did not finish, which `ConfigStore.change` then settles from the versions the change wrote
(`config_versions.bulk_change_id`, each written in the same transaction as its document).
"""

import json

import asyncpg

from quart_iot.bulk import Journal, befores, without_befores
from quart_iot.documents import Document, parse_document
from quart_iot.errors import ChangeNotFound
from quart_iot.store.postgres.database import Connection
from quart_iot.store.postgres.schema import CHANGE_LOCK

CHANGES_KEPT = 1000  # records kept, newest first; older ones go as new changes begin

LOCK = "SELECT pg_advisory_lock($1, hashtext($2))"
BEGIN = "INSERT INTO bulk_changes (id, record, running) VALUES ($1, $2, true)"
BEFORES = """
INSERT INTO bulk_change_befores (change_id, mac, data)
SELECT $1, mac, data FROM unnest($2::text[], $3::bytea[]) AS b (mac, data)
"""
PRUNE = """
DELETE FROM bulk_changes WHERE NOT running
  AND id IN (SELECT id FROM bulk_changes ORDER BY id DESC OFFSET $1)
"""
END = "UPDATE bulk_changes SET record = $2, running = false WHERE id = $1"
RECORD = "SELECT record, running FROM bulk_changes WHERE id = $1"
RECENT = """
SELECT id, record, running FROM bulk_changes WHERE ($1::text IS NULL OR id < $1)
ORDER BY id DESC LIMIT $2
"""
# true: the lock was free (taken until the transaction ends): nobody runs the change.
UNOWNED = "SELECT pg_try_advisory_xact_lock($1, hashtext($2))"
READ_BEFORES = "SELECT mac, data FROM bulk_change_befores WHERE change_id = $1"
WRITES = "SELECT mac, etag FROM config_versions WHERE bulk_change_id = $1"


async def own(owner: asyncpg.Connection, change_id: str) -> None:
    """Take the change's lock on the owner's connection (held until it closes)."""
    await owner.execute(LOCK, CHANGE_LOCK, change_id)


Rows = tuple[bytes, list[str], list[bytes]]


def rows(journal: Journal) -> Rows:
    """What `begin` keeps: the record, and the documents before by MAC (blocking: large)."""
    found = befores(journal)
    data = [json.dumps(content, ensure_ascii=False).encode() for content in found.values()]
    return without_befores(journal).model_dump_json().encode(), list(found), data


async def begin(conn: Connection, change_id: str, kept: Rows) -> None:
    """The record and the documents before, in one transaction; old records pruned."""
    record, macs, data = kept
    async with conn.transaction():
        await conn.execute(BEGIN, change_id, record)
        await conn.execute(BEFORES, change_id, macs, data)
        await conn.execute(PRUNE, CHANGES_KEPT)


async def end(conn: Connection, journal: Journal) -> None:
    record = without_befores(journal).model_dump_json().encode()
    await conn.execute(END, journal.change_id, record)


async def get(conn: Connection, change_id: str, owned: set[str]) -> tuple[Journal, bool]:
    row = await conn.fetchrow(RECORD, change_id)
    if row is None:
        raise ChangeNotFound(change_id)
    return Journal.model_validate_json(row["record"]), await _owned(conn, row, change_id, owned)


async def recent(
    conn: Connection, limit: int, before: str | None, owned: set[str]
) -> list[tuple[Journal, bool]]:
    rows = await conn.fetch(RECENT, before, limit)
    return [
        (Journal.model_validate_json(row["record"]), await _owned(conn, row, row["id"], owned))
        for row in rows
    ]


async def read_befores(conn: Connection, change_id: str) -> dict[str, bytes]:
    """The documents before by MAC, as stored (`parse_befores` makes them documents)."""
    found = await conn.fetch(READ_BEFORES, change_id)
    if not found and await conn.fetchrow(RECORD, change_id) is None:
        raise ChangeNotFound(change_id)
    return {row["mac"]: row["data"] for row in found}


def parse_befores(found: dict[str, bytes]) -> dict[str, Document]:
    return {mac: parse_document(data) for mac, data in found.items()}


async def writes(conn: Connection, change_id: str) -> dict[str, str]:
    return {row["mac"]: row["etag"] for row in await conn.fetch(WRITES, change_id)}


async def _owned(conn: Connection, row: asyncpg.Record, change_id: str, owned: set[str]) -> bool:
    if not row["running"]:
        return False
    if change_id in owned:
        return True
    async with conn.transaction():
        return not await conn.fetchval(UNOWNED, CHANGE_LOCK, change_id)
