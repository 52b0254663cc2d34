"""Fleet search on PostgreSQL: the filter evaluated in the database (`quart_iot.rql.sql`), its
answer cached in each process and validated against the change feed's last id as the list is
(one indexed row), brought up to date by evaluating only the devices changed since.

jsonb cannot hold `\\u0000`, which JSON (and so a stored document) may: a document holding the
escape is not cast, and is evaluated in Python instead (`odd` below). `fields` values come from
the stored bytes, parsed in Python, so that they read exactly as the directory store gives them.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio.to_thread
import asyncpg
from asyncpg.transaction import Transaction

from quart_iot.documents import parse_document
from quart_iot.rql.sql import Param, to_sql
from quart_iot.store.postgres.database import Connection
from quart_iot.store.postgres.statements import LAST_CHANGE
from quart_iot.store.search import Search, SearchCache, Selection

# How far behind the change feed a kept answer may be to be brought up to date from it
# (the feed keeps the last 10,000 changes; further behind, the filter is evaluated afresh).
CATCH_UP_MAX = 10_000
BATCH = 1000  # rows a whole evaluation reads at a time
BACKSLASH_U0000 = "decode('5c7530303030', 'hex')"  # the six bytes `\u0000`

Read = Callable[..., Awaitable[Any]]  # one row of one query (`PostgresBackend._read`)
Session = Callable[[], AbstractAsyncContextManager[Connection]]

CHANGED = """
SELECT count(*) AS changes, array_agg(DISTINCT mac) AS macs FROM config_changes
WHERE id > $1 AND id <= $2
"""


def snapshot(conn: Connection) -> Transaction:
    """A read-only transaction whose statements all see the database at one moment."""
    return conn.transaction(isolation="repeatable_read", readonly=True)


def select(search: Search, macs: bool) -> tuple[str, list[Any]]:
    """The query of a search's entries: every device it selects (or, with `macs`, those of the
    MACs in $1), with the bytes the entries are made from where Python must read them."""
    where, params = ["c.mac = ANY($1::text[])"] if macs else [], []
    data, odd, joined = "c.data" if search.fields is not None else "NULL::bytea", "false", ""
    if search.filter is not None:
        clause = to_sql(search.filter.node, content="d.doc", mac="c.mac", first=2 if macs else 1)
        where.append(f"(o.odd OR {clause.where})")
        params = list[Param](clause.params)
        odd = "o.odd"
        if search.fields is None:
            data = "CASE WHEN o.odd THEN c.data END"
        # OFFSET 0 keeps each a subquery of its own, computed once per row, not once per use.
        joined = (
            f", LATERAL (SELECT position({BACKSLASH_U0000} IN c.data) > 0 AS odd OFFSET 0) o"
            ", LATERAL (SELECT CASE WHEN NOT o.odd THEN convert_from(c.data, 'UTF8')::jsonb END"
            " AS doc OFFSET 0) d"
        )
    query = f"SELECT c.mac, c.summary, {data} AS data, {odd} AS odd FROM configs c{joined}"  # noqa: S608 (our own SQL; values are $n)
    return query + (" WHERE " + " AND ".join(where) if where else ""), params


def entries(search: Search, rows: Sequence[asyncpg.Record]) -> list[tuple[str, bytes | None]]:
    """The entries of the rows the database selected (an odd one filtered here)."""
    found: list[tuple[str, bytes | None]] = []
    for row in rows:
        mac, summary, data = row["mac"], bytes(row["summary"]), row["data"]
        if row["odd"]:
            found.append((mac, search.entry_of(mac, data, summary)))
        elif data is not None:
            found.append((mac, search.entry(mac, parse_document(data), summary)))
        else:
            found.append((mac, summary))
    return found


async def entries_off_the_loop(
    search: Search, rows: Sequence[asyncpg.Record]
) -> list[tuple[str, bytes | None]]:
    """`entries`, in a worker thread when documents must be parsed (a second at 20,000)."""
    if not any(row["data"] is not None for row in rows):
        return entries(search, rows)
    return await anyio.to_thread.run_sync(entries, search, rows)


class PostgresSearches:
    """The search cache of one process, and how its answers are made."""

    def __init__(self, read: Read, connection: Session, session: Session) -> None:
        self._read = read  # pooled, within DB_TIMEOUT
        self._connection = connection
        self._session = session  # for a whole evaluation: one of the pool's, for longer
        self._evaluating = asyncio.Lock()  # one evaluation at a time per process
        self.cache = SearchCache()

    async def answer(self, search: Search) -> bytes:
        """The body as of now: from the cache, brought up to date, or evaluated afresh."""
        last = (await self._read(LAST_CHANGE))[0]
        found = await self._from_cache(search, last)
        if found is not None:
            return found
        async with self._evaluating:
            # Whoever held the lock may have evaluated this very search.
            found = await self._from_cache(search, last)
            return found if found is not None else await self._evaluate(search)

    async def _from_cache(self, search: Search, last: int) -> bytes | None:
        kept = self.cache.get(search.key)
        if kept is None or last - kept.version > CATCH_UP_MAX:
            return None
        if kept.version >= last:
            return kept.body
        async with self._connection() as conn, snapshot(conn):
            changes, macs = await conn.fetchrow(CHANGED, kept.version, last) or (0, [])
            if changes != last - kept.version:  # the feed no longer holds them all
                return None
            query, params = select(search, macs=True)
            rows = await conn.fetch(query, macs, *params)
        selected = await entries_off_the_loop(search, rows)
        changed = dict.fromkeys(macs, None) | dict(selected)
        return self.cache.keep(search.key, kept.updated(last, changed.items())).body

    async def _evaluate(self, search: Search) -> bytes:
        """Every device, in the database (bounded by the statement timeout, not DB_TIMEOUT: at
        20,000 devices it takes a second or more; one at a time, so the pool keeps the rest),
        read in batches: the documents `fields` needs are never all in memory at once."""
        items: dict[str, bytes] = {}
        async with self._session() as conn, snapshot(conn):
            version = await conn.fetchval(LAST_CHANGE)
            query, params = select(search, macs=False)
            cursor = await conn.cursor(query, *params)
            while rows := await cursor.fetch(BATCH):
                items.update(
                    (mac, entry) for mac, entry in await entries_off_the_loop(search, rows) if entry
                )
        return self.cache.keep(search.key, Selection(version, items)).body
