"""Version history read back from `config_versions`: a device's versions (a page at a time),
one version, the deleted devices; and the retention pass that catches versions aging out with
no write (writes prune their own device as they go)."""

import json
from datetime import UTC, datetime
from typing import Any

import asyncpg

from quart_iot.errors import ConfigNotFound, VersionNotFound
from quart_iot.store.postgres.database import Connection
from quart_iot.store.records import StoredConfig

VERSIONS = """
SELECT id, change, etag, summary, size, subject, bulk_change_id FROM config_versions
WHERE mac = $1 AND ($2::text IS NULL OR id < $2) ORDER BY id DESC LIMIT $3
"""
KNOWN = """
SELECT EXISTS (SELECT 1 FROM configs WHERE mac = $1)
    OR EXISTS (SELECT 1 FROM config_versions WHERE mac = $1)
"""
VERSION = "SELECT data, etag, summary FROM config_versions WHERE mac = $1 AND id = $2"
DELETED = """
SELECT DISTINCT ON (mac) mac, id, change, etag, summary, size, subject, bulk_change_id
FROM config_versions v
WHERE NOT EXISTS (SELECT 1 FROM configs c WHERE c.mac = v.mac)
ORDER BY mac, id DESC
"""
# Versions older than HISTORY_MAX_DAYS ($1, ns), except the newest of a live device.
PRUNE_AGED = """
DELETE FROM config_versions v
WHERE v.id < lpad(greatest((extract(epoch FROM clock_timestamp()) * 1000000)::bigint * 1000
                           - $1, 0)::text, 19, '0')
  AND NOT (EXISTS (SELECT 1 FROM configs c WHERE c.mac = v.mac)
           AND v.id = (SELECT max(id) FROM config_versions w WHERE w.mac = v.mac))
"""
# Versions past HISTORY_MAX_VERSIONS ($1) per device (after the setting was lowered).
PRUNE_COUNTED = """
DELETE FROM config_versions v USING (
    SELECT mac, id, row_number() OVER (PARTITION BY mac ORDER BY id DESC) AS n
    FROM config_versions
) r
WHERE v.mac = r.mac AND v.id = r.id AND r.n > $1
"""


def saved_at(version_id: str) -> str:
    """RFC 3339, UTC, to the microsecond, from the ns in the version id."""
    moment = datetime.fromtimestamp(int(version_id[:19]) / 1e9, UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def subject_of(row: asyncpg.Record) -> str | None:
    """Who made a version (kept as UTF-8 bytes: `text` cannot hold a NUL)."""
    subject: bytes | None = row["subject"]
    return subject.decode() if subject is not None else None


def item_json(row: asyncpg.Record) -> bytes:
    """A version's listing item: its summary, then what it is (one JSON object)."""
    about = {
        "version": row["id"],
        "etag": row["etag"],
        "saved_at": saved_at(row["id"]),
        "size": row["size"],
        "change": row["change"],
        "subject": subject_of(row),
        "changeId": row["bulk_change_id"],
    }
    summary: bytes = row["summary"]
    return summary[:-1] + b"," + _json(about)[1:]


async def page(conn: Connection, mac: str, limit: int, before: str | None) -> bytes:
    """Up to `limit` versions older than `before`, newest first, and the cursor of the next
    page (`next`: null on the last one)."""
    rows = await conn.fetch(VERSIONS, mac, before, limit + 1)
    if not rows and not await conn.fetchval(KNOWN, mac):
        raise ConfigNotFound(mac)
    more = len(rows) > limit
    rows = rows[:limit]
    items = b",".join(item_json(row) for row in rows)
    head = _json({"mac_address": mac})[:-1]
    cursor = _json(rows[-1]["id"] if more else None)
    return b'%s,"versions":[%s],"count":%d,"next":%s}' % (head, items, len(rows), cursor)


async def version(conn: Connection, mac: str, version_id: str) -> StoredConfig:
    row = await conn.fetchrow(VERSION, mac, version_id)
    if row is None:
        raise VersionNotFound(mac, version_id)
    return StoredConfig(mac, row["data"], row["summary"], row["etag"])


async def deleted(conn: Connection) -> list[dict[str, Any]]:
    """Devices whose document is gone but whose history remains, by MAC."""
    found = []
    for row in await conn.fetch(DELETED):
        item = json.loads(item_json(row))
        deleted_at = item["saved_at"] if row["change"] == "deleted" else None
        found.append({**item, "deleted_at": deleted_at})
    return found


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
