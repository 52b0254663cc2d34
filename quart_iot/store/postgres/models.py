"""Device models in PostgreSQL: the `device_models` table, and the documents naming each model
(the generated column `configs.device_model`, indexed).

A model's write is one transaction: its row locked (`FOR UPDATE`), the condition decided on
it, then the change (a delete only once no document names the model, counted in that
transaction). A document's save validated against a model locks the model's row `FOR SHARE`
until it commits: the model cannot change or go before that save is decided, and a delete
waiting for the lock then counts the document.
"""

from typing import Any

import asyncpg

from quart_iot.errors import ModelInUse, ModelNotFound, PreconditionFailed, UnknownModel
from quart_iot.store.backend import DeletedModel, SavedModel
from quart_iot.store.devicemodels import (
    ModelChanged,
    ModelEntry,
    StoredModel,
    check_model_condition,
)
from quart_iot.store.postgres.database import Connection
from quart_iot.store.records import Precondition, StoredConfig

MODELS = """
SELECT m.code, m.data, (SELECT count(*) FROM configs c WHERE c.device_model = m.code) AS devices
FROM device_models m WHERE $1::text IS NULL OR m.code = $1 ORDER BY m.code
"""
MODEL = "SELECT data FROM device_models WHERE code = $1"
LOCK = "SELECT etag FROM device_models WHERE code = $1 FOR UPDATE"
SHARE = "SELECT etag FROM device_models WHERE code = $1 FOR SHARE"
DEVICES = "SELECT count(*) FROM configs WHERE device_model = $1"
INSERT = """
INSERT INTO device_models (code, data, etag) VALUES ($1, $2, $3)
ON CONFLICT (code) DO NOTHING RETURNING code
"""
UPDATE = "UPDATE device_models SET data = $2, etag = $3 WHERE code = $1"
DELETE = "DELETE FROM device_models WHERE code = $1"
DOCUMENTS = "SELECT mac, data, etag, summary FROM configs WHERE device_model = $1 ORDER BY mac"


class CreateRaced(Exception):
    """Another writer created the model first: roll back, and decide again."""


def entries(rows: list[asyncpg.Record]) -> list[ModelEntry]:
    return [ModelEntry(StoredModel.of_bytes(r["code"], r["data"]), r["devices"]) for r in rows]


def stored(code: str, row: Any) -> StoredModel:
    if row is None:
        raise ModelNotFound(code)
    return StoredModel.of_bytes(code, row["data"])


async def require(conn: Connection, code: str, etag: str) -> None:
    """In a document's save: model `code` is still version `etag`, and stays so until the
    commit (UnknownModel once it is gone, ModelChanged once it changed)."""
    current = await conn.fetchval(SHARE, code)
    if current is None:
        raise UnknownModel(code)
    if current != etag:
        raise ModelChanged


async def save(conn: Connection, model: StoredModel, precondition: Precondition) -> SavedModel:
    """In a transaction: create or replace the model, its condition decided on its row."""
    before = await conn.fetchval(LOCK, model.code)
    check_model_condition(model.code, precondition, before)
    if before is not None and precondition.create_only:
        raise PreconditionFailed(model.code, "If-None-Match", "Device model")
    devices = await conn.fetchval(DEVICES, model.code)
    if before == model.etag:
        return SavedModel(model, before, devices, unchanged=True)
    if before is None:
        if await conn.fetchval(INSERT, model.code, model.raw, model.etag) is None:
            raise CreateRaced
    else:
        await conn.execute(UPDATE, model.code, model.raw, model.etag)
    return SavedModel(model, before, devices)


async def delete(conn: Connection, code: str, precondition: Precondition) -> DeletedModel:
    """In a transaction: remove the model, unless documents name it."""
    before = await conn.fetchval(LOCK, code)
    check_model_condition(code, precondition, before)  # first: If-Match on nothing is a 412
    if before is None:
        raise ModelNotFound(code)
    devices = await conn.fetchval(DEVICES, code)
    if devices:
        raise ModelInUse(code, devices)
    await conn.execute(DELETE, code)
    return DeletedModel(code, before)


async def documents(conn: Connection, code: str) -> list[StoredConfig]:
    rows = await conn.fetch(DOCUMENTS, code)
    return [StoredConfig(r["mac"], r["data"], r["summary"], r["etag"]) for r in rows]
