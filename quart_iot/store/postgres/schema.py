"""The tables, and their migrations: applied at start, in order, under an advisory lock so that
replicas starting together never race; `config_schema` records which were applied."""

import logging
import secrets
from typing import TYPE_CHECKING

from quart_iot.store.backend import StartRefused

if TYPE_CHECKING:
    from quart_iot.store.postgres.database import Connection

log = logging.getLogger(__name__)

# pg_advisory_xact_lock keys (any bigint; these spell "quart_io" and "quart_pr" in ASCII).
MIGRATION_LOCK = 0x71756172745F696F
PRUNE_LOCK = 0x71756172745F7072
# pg_advisory_lock(CHANGE_LOCK, hashtext(<change id>)): held by the process running a bulk
# change (the two-key form: never one of the keys above). "qich" in ASCII.
CHANGE_LOCK = 0x71696368
CHANNEL = "quart_iot_changes"  # NOTIFY payload: "<change id> <mac> <etag or ->"

_MAC_CHECK = r"mac ~ '^[0-9a-f]{2}(-[0-9a-f]{2}){5}$'"

# Each entry is one schema version; never edit one that was released, append a new one.
MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE configs (
        mac text COLLATE "C" PRIMARY KEY CHECK ({_MAC_CHECK}),
        data bytea NOT NULL,            -- the stored bytes, as the directory store writes them
        etag text NOT NULL,             -- etag_of(data)
        summary bytea NOT NULL,         -- the list item (JSON), rendered once per version
        change_id bigint NOT NULL       -- the change that made this version current
    );
    CREATE TABLE config_versions (
        mac text COLLATE "C" NOT NULL CHECK ({_MAC_CHECK}),
        id text COLLATE "C" NOT NULL CHECK (id ~ '^[0-9]{{19}}-[0-9a-f]{{8}}$'),
        change text NOT NULL CHECK (change IN ('created', 'updated', 'deleted')),
        data bytea NOT NULL,
        etag text NOT NULL,
        summary bytea NOT NULL,
        size integer NOT NULL,
        subject text,                   -- who made it (access control on)
        bulk_change_id text,            -- the bulk change it is part of
        PRIMARY KEY (mac, id)
    );
    CREATE INDEX config_versions_by_age ON config_versions (id);
    CREATE TABLE config_feed (          -- one row: the change feed's epoch and last id
        epoch text NOT NULL,
        last_id bigint NOT NULL
    );
    CREATE TABLE config_changes (
        id bigint PRIMARY KEY,
        mac text COLLATE "C" NOT NULL,
        etag text,                      -- NULL: the document is gone
        at timestamptz NOT NULL DEFAULT now()
    );
    """,
    # 2: a subject is any JSON string, NUL included, which `text` cannot hold: its UTF-8 bytes.
    """
    ALTER TABLE config_versions ALTER COLUMN subject TYPE bytea USING convert_to(subject, 'UTF8');
    """,
    # 3: device models (issue 20); the list item gains device_model.
    r"""
    CREATE TABLE device_models (
        code text COLLATE "C" PRIMARY KEY CHECK (code ~ '^[a-z0-9_]{1,64}$'),
        data bytea NOT NULL,            -- {"name", "configSchema"}: .models/<code>.json's bytes
        etag text NOT NULL              -- etag_of(data)
    );
    -- The list item as records.summary_json renders it now: device_model after device_name,
    -- the deviceModel string or null (tests/test_postgres_models.py compares the two). A
    -- \u0000 escape (which PostgreSQL's json functions refuse) is read as U+FFFD.
    CREATE FUNCTION pg_temp.with_device_model(summary bytea, data bytea) RETURNS bytea
    LANGUAGE sql IMMUTABLE AS $$
        SELECT overlay(summary PLACING convert_to(',"device_model":' || CASE
                   WHEN json_typeof(doc -> 'deviceModel') = 'string'
                   THEN to_json(doc ->> 'deviceModel')::text ELSE 'null' END, 'UTF8')
               FROM position(',"device_entity_id":'::bytea IN summary) FOR 0)
        FROM (SELECT replace(convert_from(data, 'UTF8'), '\u0000', '\ufffd')::json AS doc) AS d
    $$;
    UPDATE configs SET summary = pg_temp.with_device_model(summary, data)
    WHERE position(',"device_entity_id":'::bytea IN summary) > 0;
    UPDATE config_versions SET summary = pg_temp.with_device_model(summary, data)
    WHERE position(',"device_entity_id":'::bytea IN summary) > 0;
    DROP FUNCTION pg_temp.with_device_model(bytea, bytea);
    -- The model a document names: devicemodels.MODEL_IN_SUMMARY, on the bytes of its summary
    -- (encode(..., 'escape') leaves ASCII as it is, and a code is ASCII).
    ALTER TABLE configs ADD COLUMN device_model text COLLATE "C" GENERATED ALWAYS AS (
        substring(encode(summary, 'escape') FROM '"device_model":"([a-z0-9_]{1,64})"')
    ) STORED;
    CREATE INDEX configs_by_model ON configs (device_model);
    """,
    # 4: bulk change records (issue 21; quart_iot/store/postgres/changes.py).
    r"""
    CREATE TABLE bulk_changes (
        id text COLLATE "C" PRIMARY KEY CHECK (id ~ '^[0-9]{19}-[0-9a-f]{8}$'),
        record bytea NOT NULL,          -- bulk.Journal without the documents before (JSON)
        running boolean NOT NULL
    );
    CREATE TABLE bulk_change_befores (  -- the documents a change found: a revert's
        change_id text COLLATE "C" NOT NULL REFERENCES bulk_changes (id) ON DELETE CASCADE,
        mac text COLLATE "C" NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (change_id, mac)
    );
    CREATE INDEX config_versions_by_bulk_change ON config_versions (bulk_change_id)
        WHERE bulk_change_id IS NOT NULL;
    """,
)


class SchemaTooNew(StartRefused):
    """The database was migrated by a newer version of the service than this one."""

    def __init__(self, found: int) -> None:
        super().__init__(
            f"the database schema is version {found}, newer than this version of quart_iot "
            f"knows ({len(MIGRATIONS)}): run the newer version, or restore a backup"
        )


async def migrate(conn: "Connection") -> int:
    """Bring the schema up to date (SchemaTooNew if it is newer); the version it is at. A
    schema already up to date is only read (a read-only standby serves reads)."""
    if await schema_version(conn) == len(MIGRATIONS):
        return len(MIGRATIONS)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS config_schema ("
            " version integer PRIMARY KEY, migrated_at timestamptz NOT NULL DEFAULT now())"
        )
        found = await schema_version(conn)
        for version in range(found + 1, len(MIGRATIONS) + 1):
            await conn.execute(MIGRATIONS[version - 1])
            if version == 1:
                await conn.execute("INSERT INTO config_feed VALUES ($1, 0)", secrets.token_hex(4))
            await conn.execute("INSERT INTO config_schema (version) VALUES ($1)", version)
            log.info("database schema migrated to version %d", version)
    return len(MIGRATIONS)


async def schema_version(conn: "Connection") -> int:
    """The schema's version (0: none yet); SchemaTooNew past what this code knows."""
    if await conn.fetchval("SELECT to_regclass('config_schema')") is None:
        return 0
    found: int = await conn.fetchval("SELECT coalesce(max(version), 0) FROM config_schema")
    if found > len(MIGRATIONS):
        raise SchemaTooNew(found)
    return found
