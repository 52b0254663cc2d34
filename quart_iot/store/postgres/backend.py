"""PostgresBackend: the store in a PostgreSQL database, shared by every replica.

Reads are one query each (read-your-writes on every replica: nothing is cached but the list
body, which each request validates against the last change id, one indexed row). Writes are
one transaction each (statements.py). Changes reach every replica by LISTEN/NOTIFY
(listener.py). The database may be down at start, or go away later: requests answer 503
within DB_TIMEOUT, and the backend connects again by itself (database.py).
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio.to_thread
import asyncpg

from quart_iot.bulk import Journal
from quart_iot.documents import Document, dump_document, etag_of
from quart_iot.errors import (
    ConfigExists,
    ConfigNotFound,
    DocumentTooLarge,
    PreconditionFailed,
    StorageUnavailable,
)
from quart_iot.models import StorageState
from quart_iot.settings import Settings
from quart_iot.store.backend import (
    Change,
    ChangeSink,
    Deleted,
    DeletedModel,
    Saved,
    SavedModel,
    StorageStats,
    WriteMeta,
)
from quart_iot.store.devicemodels import ModelEntry, StoredModel
from quart_iot.store.postgres import changes as change_sql
from quart_iot.store.postgres import history, statements
from quart_iot.store.postgres import models as model_sql
from quart_iot.store.postgres.database import (
    BACKOFF_FIRST,
    UNAVAILABLE,
    Connection,
    Database,
    Limits,
    backoff,
)
from quart_iot.store.postgres.listener import Listener
from quart_iot.store.postgres.schema import PRUNE_LOCK, SchemaTooNew, migrate
from quart_iot.store.postgres.search import PostgresSearches
from quart_iot.store.records import Precondition, StoredConfig, summary_json
from quart_iot.store.search import Search

log = logging.getLogger(__name__)

DAY_NS = 86_400 * 1_000_000_000
SUBJECT_CHARS = 255  # OpenID Connect's limit for `sub`, as the directory store keeps it
CHANGES_KEPT = 10_000  # the change feed `changes_after` answers from (older: reset)
PRUNE_SECONDS = 60.0
SURVEY_SECONDS = 60.0  # the history's figures for the metrics, refreshed (as the directory's)
CREATE_ATTEMPTS = 3  # a save that found no document, then lost the race to create it
CANCEL_AGAIN_SECONDS = 0.5  # a task still running this long after its cancel is cancelled again


class _CreateRaced(Exception):
    """Another writer created the document first: roll back, and decide again."""


def check(mac: str, precondition: Precondition, current: str | None) -> None:
    """If-Match and If-None-Match against the current ETag, as the directory decides them."""
    if_match, if_none_match = precondition.if_match, precondition.if_none_match
    if if_match and not (current and (if_match.star_tag or if_match.contains(current))):
        raise PreconditionFailed(mac, "If-Match")
    if if_none_match and current and if_none_match.contains_weak(current):
        raise PreconditionFailed(mac, "If-None-Match")


def refuse_existing(mac: str, precondition: Precondition) -> None:
    """A create-only write found a document."""
    if precondition.if_none_match.star_tag:
        raise PreconditionFailed(mac, "If-None-Match")
    raise ConfigExists(mac)


def signed_by(meta: WriteMeta) -> bytes | None:
    """The subject as kept: UTF-8 (a lone surrogate replaced), any character, NUL included."""
    if meta.subject is None:
        return None
    return meta.subject[:SUBJECT_CHARS].encode("utf-8", "replace")


def _count(status: str) -> int:
    """The rows a DELETE removed, from its status ("DELETE 3")."""
    return int(status.rsplit(" ", 1)[-1])


async def end_tasks(tasks: list["asyncio.Task[None]"]) -> None:
    """Cancel the tasks and wait for their end, cancelling again any task that goes on.

    On Python 3.11, `asyncio.wait_for` loses a cancellation that arrives as the awaited call
    completes (gh-86296, fixed in 3.12), and asyncpg's connect waits that way: the listener,
    cancelled while connecting, went on listening, and a start refused for a newer schema
    hung until hypercorn's 60 s startup timeout."""
    for task in tasks:
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=CANCEL_AGAIN_SECONDS)
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _one_row(conn: Connection, query: str, *args: Any) -> asyncpg.Record:
    """The row of a statement that always returns one (a write's outcome)."""
    row = await conn.fetchrow(query, *args)
    if row is None:  # config_feed lost its row: the schema was tampered with
        raise StorageUnavailable("the database's change feed is missing")
    return row


class PostgresBackend:
    """The Backend of a PostgreSQL database (DATABASE_URL)."""

    def __init__(
        self,
        url: str,
        limits: Limits | None = None,
        *,
        max_document_bytes: int = 1024 * 1024,
        history_max_versions: int = 50,
        history_max_days: float = 90.0,
    ) -> None:
        self.limits = limits or Limits()
        self.db = Database(url, self.limits)
        self.max_bytes = max_document_bytes
        self.keep_versions = history_max_versions  # 0: history off
        self.max_age_ns = int(history_max_days * DAY_NS)
        self.prune_seconds = min(PRUNE_SECONDS, history_max_days * 86_400 / 2)
        self.epoch: str | None = None  # the change feed's, once the schema is in place
        self.refused: str | None = None  # why this version cannot use the database at all
        self._listed: tuple[int, bytes, int] | None = None  # (last change id, body, count)
        self._tasks: list[asyncio.Task[None]] = []
        self.searches = PostgresSearches(self._read, self._connection, self._long_session)
        self._survey: tuple[int, int] | None = None  # (versions, bytes), as last surveyed
        self.listener: Listener | None = None
        self._pruned = 0  # versions retention removed in this process
        # The bulk changes this process runs: the connection holding each one's lock.
        self._change_owners: dict[str, asyncpg.Connection] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> "PostgresBackend":
        assert settings.database_url is not None
        limits = Limits(
            settings.db_timeout,
            settings.db_pool_size,
            settings.db_connect_timeout,
            settings.db_statement_timeout,
        )
        return cls(
            settings.database_url,
            limits,
            max_document_bytes=settings.max_content_length,
            history_max_versions=settings.history_max_versions,
            history_max_days=settings.history_max_days,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, sink: ChangeSink) -> None:
        """Connect and migrate if the database answers (SchemaTooNew stops the start), else
        go on connecting in the background; then listen, and prune now and then."""
        await self.db.open()
        self.listener = Listener(self.db.connect, sink, self.limits.timeout)
        self._tasks = [asyncio.create_task(self.listener.run(), name="postgres listener")]
        try:
            await self._prepare()
        except StorageUnavailable as error:
            log.warning("database not usable at start (%s): connecting in the background", error)
            self._spawn(self._prepare_until_ready(), "postgres connector")
        except SchemaTooNew:
            await self.stop()
            raise
        else:
            self._serve_in_background()
            with contextlib.suppress(TimeoutError):  # serving starts listening to changes
                await asyncio.wait_for(self.listener.listening.wait(), self.limits.timeout)

    def _serve_in_background(self) -> None:
        self._spawn(self._prune_now_and_then(), "postgres retention")
        self._spawn(self._survey_now_and_then(), "postgres history survey")

    async def stop(self) -> None:
        await end_tasks(self._tasks)
        self._tasks = []
        await self.db.close()

    def stats(self) -> StorageStats:
        """The history's figures as last surveyed (absent before the first survey)."""
        versions, size = self._survey or (None, None)
        return StorageStats(versions_kept=versions, history_bytes=size, pruned=self._pruned)

    async def health(self) -> tuple[StorageState, str | None]:
        """(the storage state, the reason when it is unavailable)."""
        try:
            async with self._connection() as conn:
                read_only = await conn.fetchval(statements.READ_ONLY)
        except StorageUnavailable as error:
            return "unavailable", error.reason
        return ("read-only" if read_only else "read-write"), None

    def _spawn(self, work: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(work, name=name))

    async def _prepare(self) -> None:
        """Migrate (on a connection of its own: a long migration, or another replica's, is
        not cut short by DB_TIMEOUT) and learn the change feed's epoch. Bounded all the same:
        a server that accepts connections and answers nothing must not hold up the start."""
        seconds = self.limits.connect_timeout + self.limits.statement_timeout
        async with self.db.session(seconds) as conn:
            await migrate(conn)
            self.epoch = await conn.fetchval("SELECT epoch FROM config_feed")

    async def _prepare_until_ready(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            await asyncio.sleep(delay)
            try:
                await self._prepare()
            except StorageUnavailable:
                delay = backoff(delay)
                continue
            except SchemaTooNew as error:
                self.refused = str(error)
                log.error("%s", error)  # noqa: TRY400 (one clear line, no traceback)
                return
            log.warning("database usable: serving")
            self._serve_in_background()
            return

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A connection, once the schema is in place."""
        if self.epoch is None:
            raise StorageUnavailable(self.refused or "the database is not reachable yet")
        async with self.db.connection() as conn:
            yield conn

    async def _read(self, query: str, *args: Any) -> Any:
        """One row of one read (None: no row); tried again on a fresh connection."""
        if self.epoch is None:
            raise StorageUnavailable(self.refused or "the database is not reachable yet")
        return await self.db.read(lambda conn: conn.fetchrow(query, *args))

    # -- documents ---------------------------------------------------------------------------

    async def list_json(self) -> bytes:
        """The list body, from the cache while no change was made since it was built."""
        return (await self._listing())[1]

    async def count(self) -> int:
        return (await self._listing())[2]

    async def _listing(self) -> tuple[int, bytes, int]:
        listed = self._listed
        if listed is not None:
            row = await self._read(statements.LAST_CHANGE)
            if row[0] == listed[0]:
                return listed
        row = await self._read(statements.LIST)
        body = b'{"configs":[%s],"count":%d}' % (row[1] or b"", row[2])
        listed = (row[0], body, row[2])
        if self._listed is None or listed[0] > self._listed[0]:
            self._listed = listed
        return listed

    async def get(self, mac: str) -> StoredConfig:
        row = await self._read(statements.GET, mac)
        if row is None:
            raise ConfigNotFound(mac)
        return StoredConfig(mac, row["data"], row["summary"], row["etag"])

    async def current_etag(self, mac: str) -> str:
        row = await self._read(statements.ETAG, mac)
        if row is None:
            raise ConfigNotFound(mac)
        etag: str = row["etag"]
        return etag

    async def save(
        self, mac: str, content: Document, precondition: Precondition, meta: WriteMeta
    ) -> Saved:
        """Create or replace in one transaction, the condition decided on the locked row."""
        data = dump_document(content)
        if len(data) > self.max_bytes:
            raise DocumentTooLarge(len(data), self.max_bytes)
        new = StoredConfig(mac, data, summary_json(mac, content), etag_of(data))
        for _ in range(CREATE_ATTEMPTS):
            with contextlib.suppress(_CreateRaced):
                return await self._save(new, precondition, meta)
            if precondition.create_only:
                refuse_existing(mac, precondition)
        raise StorageUnavailable("the document kept changing under the write; retry")

    async def _save(self, new: StoredConfig, precondition: Precondition, meta: WriteMeta) -> Saved:
        async with self._connection() as conn, conn.transaction():
            row = await conn.fetchrow(statements.LOCK_CURRENT, new.mac)
            before = row["etag"] if row is not None else None
            check(new.mac, precondition, before)
            if row is not None and precondition.create_only:
                refuse_existing(new.mac, precondition)
            if precondition.model is not None:
                await model_sql.require(conn, *precondition.model)
            if before == new.etag:  # a 128-bit hash of the bytes: the same bytes
                return Saved(new, before, None, unchanged=True)
            statement = statements.SAVE_NEW if row is None else statements.SAVE_REPLACE
            written = await _one_row(
                conn, statement, new.mac, new.raw, new.etag, new.summary_json, signed_by(meta),
                meta.change_id, self.keep_versions, self.max_age_ns, row is not None,
            )  # fmt: skip
            if not written["written"]:
                raise _CreateRaced  # rolls back the change id it took
        self._pruned += written["pruned"]
        return Saved(new, before, written["version"])

    async def delete(self, mac: str, precondition: Precondition, meta: WriteMeta) -> Deleted:
        """Remove in one transaction; the history keeps a `deleted` version."""
        async with self._connection() as conn, conn.transaction():
            row = await conn.fetchrow(statements.LOCK_CURRENT, mac)
            if row is None:
                raise ConfigNotFound(mac)
            check(mac, precondition, row["etag"])
            written = await _one_row(
                conn, statements.DELETE, mac, signed_by(meta), meta.change_id, self.keep_versions,
                self.max_age_ns,
            )  # fmt: skip
        self._pruned += written["pruned"]
        return Deleted(mac, row["etag"], written["version"])

    # -- bulk change records -----------------------------------------------------------------

    async def begin_change(self, journal: Journal) -> None:
        """Own the change (its lock, on a connection of its own), then keep its record."""
        if self.epoch is None:
            raise StorageUnavailable(self.refused or "the database is not reachable yet")
        try:
            owner = await self.db.connect()
        except UNAVAILABLE as error:
            raise StorageUnavailable(self.db.outage.failed(error)) from None
        try:
            try:
                await change_sql.own(owner, journal.change_id)
            except UNAVAILABLE as error:
                raise StorageUnavailable(self.db.outage.failed(error)) from None
            kept = await anyio.to_thread.run_sync(change_sql.rows, journal)  # large: off the loop
            async with self._connection() as conn:
                await change_sql.begin(conn, journal.change_id, kept)
        except BaseException:
            await owner.close()
            raise
        self._change_owners[journal.change_id] = owner

    async def end_change(self, journal: Journal) -> None:
        try:
            async with self._connection() as conn:
                await change_sql.end(conn, journal)
        finally:
            owner = self._change_owners.pop(journal.change_id, None)
            if owner is not None:
                await owner.close()

    async def change(self, change_id: str) -> tuple[Journal, bool]:
        async with self._connection() as conn:
            return await change_sql.get(conn, change_id, set(self._change_owners))

    async def change_befores(self, change_id: str) -> dict[str, Document]:
        async with self._connection() as conn:
            found = await change_sql.read_befores(conn, change_id)
        return await anyio.to_thread.run_sync(change_sql.parse_befores, found)

    async def changes(self, limit: int, before: str | None) -> list[tuple[Journal, bool]]:
        async with self._connection() as conn:
            return await change_sql.recent(conn, limit, before, set(self._change_owners))

    async def change_writes(self, change_id: str) -> dict[str, str]:
        async with self._connection() as conn:
            return await change_sql.writes(conn, change_id)

    # -- history -----------------------------------------------------------------------------

    async def versions_json(self, mac: str, limit: int, before: str | None) -> bytes:
        """One page of a device's kept versions, newest first, older than version `before`."""
        async with self._connection() as conn:
            return await history.page(conn, mac, limit, before)

    async def version(self, mac: str, version: str) -> StoredConfig:
        async with self._connection() as conn:
            return await history.version(conn, mac, version)

    async def deleted(self) -> list[dict[str, Any]]:
        async with self._connection() as conn:
            return await history.deleted(conn)

    async def _prune_now_and_then(self) -> None:
        """Retention for what no write touches (aged versions), and the change feed's end;
        one replica at a time. The first pass also applies a lowered HISTORY_MAX_VERSIONS."""
        counted = self.keep_versions > 0
        while True:
            with contextlib.suppress(StorageUnavailable):
                await self._prune(counted)
                counted = False
            await asyncio.sleep(self.prune_seconds)

    async def _prune(self, counted: bool) -> None:
        """On a connection of its own: a pass over every version may outlast DB_TIMEOUT."""
        seconds = self.limits.connect_timeout + self.limits.statement_timeout
        async with self.db.session(seconds) as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", PRUNE_LOCK):
                return  # another replica is at it
            if self.keep_versions > 0:
                self._pruned += _count(await conn.execute(history.PRUNE_AGED, self.max_age_ns))
            if counted:
                status = await conn.execute(history.PRUNE_COUNTED, self.keep_versions)
                self._pruned += _count(status)
            await conn.execute(
                "DELETE FROM config_changes WHERE id <= (SELECT last_id FROM config_feed) - $1",
                CHANGES_KEPT,
            )

    # -- fleet search ------------------------------------------------------------------------

    async def search_json(self, search: Search) -> bytes:
        return await self.searches.answer(search)

    def _long_session(self) -> AbstractAsyncContextManager[Connection]:
        """A pooled connection bounded by the statement timeout rather than DB_TIMEOUT."""
        seconds = self.limits.connect_timeout + self.limits.statement_timeout
        return self.db.connection(asyncio.get_running_loop().time() + seconds)

    async def _survey_now_and_then(self) -> None:
        """The history's figures for the metrics: one query a minute, not one per scrape."""
        while True:
            with contextlib.suppress(StorageUnavailable):  # the last figures stay meanwhile
                row = await self._read(statements.SURVEY)
                self._survey = (row["versions"], row["bytes"])
            await asyncio.sleep(SURVEY_SECONDS)

    # -- device models -----------------------------------------------------------------------

    async def models(self, code: str | None = None) -> list[ModelEntry]:
        async with self._connection() as conn:
            return model_sql.entries(await conn.fetch(model_sql.MODELS, code))

    async def model(self, code: str) -> StoredModel:
        return model_sql.stored(code, await self._read(model_sql.MODEL, code))

    async def save_model(self, model: StoredModel, precondition: Precondition) -> SavedModel:
        model.check_size(self.max_bytes)
        for _ in range(CREATE_ATTEMPTS):
            with contextlib.suppress(model_sql.CreateRaced):
                async with self._connection() as conn, conn.transaction():
                    return await model_sql.save(conn, model, precondition)
        raise StorageUnavailable("the device model kept changing under the write; retry")

    async def delete_model(self, code: str, precondition: Precondition) -> DeletedModel:
        async with self._connection() as conn, conn.transaction():
            return await model_sql.delete(conn, code, precondition)

    async def documents_of(self, code: str) -> list[StoredConfig]:
        async with self._connection() as conn:
            return await model_sql.documents(conn, code)

    # -- the change feed ---------------------------------------------------------------------

    async def changes_after(self, change_id: str) -> list[Change] | None:
        """The changes after `change_id` (`<epoch>-<n>`), oldest first; None when they are no
        longer all kept, the id is not of this database, or this process does not listen to
        changes now (those after the answer could be missed)."""
        epoch, _, number = change_id.partition("-")
        if epoch != self.epoch or not number.isdigit() or len(number) > 18:
            return None
        if self.listener is None or not self.listener.listening.is_set():
            return None  # changes from now on might not be heard: no promise of the rest
        after = int(number)
        last, first = await self._read(
            "SELECT last_id, (SELECT min(id) FROM config_changes) FROM config_feed"
        )
        if after > last or last - after > CHANGES_KEPT:
            return None
        if after == last:
            return []
        if first is None or first > after + 1:
            return None
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT id, mac, etag FROM config_changes WHERE id > $1 AND id <= $2 ORDER BY id",
                after,
                last,
            )
        if len(rows) != last - after:  # pruned meanwhile
            return None
        return [Change(f"{epoch}-{row['id']}", row["mac"], row["etag"]) for row in rows]
