"""Documents and kept versions in and out of the database as they are, bytes and ids kept: what
`python -m quart_iot copy` reads and writes (quart_iot/copy.py).

A document copied in is a change like any write (a change id, a NOTIFY: running replicas see
it), but it keeps no version of its own, as a file written outside the directory store: the
next save keeps it first (statements.py, `kept`). Versions copied in keep their ids."""

from collections.abc import AsyncIterator

import asyncpg

from quart_iot.store.postgres import statements
from quart_iot.store.postgres.database import Connection

ETAGS = "SELECT mac, etag FROM configs"
VERSION_IDS = "SELECT mac, id FROM config_versions"
MODELS = "SELECT code, data FROM device_models ORDER BY code"
MODEL_ETAGS = "SELECT code, etag FROM device_models"
PUT_MODEL = """
INSERT INTO device_models (code, data, etag) VALUES ($1, $2, $3)
ON CONFLICT (code) DO UPDATE SET data = excluded.data, etag = excluded.etag
"""
DOCUMENTS = "SELECT mac, data, etag FROM configs ORDER BY mac"
VERSIONS = "SELECT mac, id, change, data, etag, subject FROM config_versions ORDER BY mac, id"
LOCK_DOCUMENT = "SELECT FROM configs WHERE mac = $1 FOR UPDATE"
PUT_DOCUMENT = statements.PUT_DOCUMENT
PUT_VERSION = """
INSERT INTO config_versions (mac, id, change, data, etag, summary, size, subject)
VALUES ($1, $2, $3, $4::bytea, $5, $6, length($4::bytea), $7)
ON CONFLICT (mac, id) DO NOTHING
"""


async def etags(conn: Connection) -> dict[str, str]:
    """Every document's ETag, by MAC."""
    return {row["mac"]: row["etag"] for row in await conn.fetch(ETAGS)}


async def version_ids(conn: Connection) -> set[tuple[str, str]]:
    """Every kept version, as (MAC, id)."""
    return {(row["mac"], row["id"]) for row in await conn.fetch(VERSION_IDS)}


async def rows(conn: Connection, query: str) -> AsyncIterator[asyncpg.Record]:
    """The rows of a query, fetched a few hundred at a time (in the caller's transaction)."""
    async for row in conn.cursor(query, prefetch=500):
        yield row
