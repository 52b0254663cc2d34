"""The connection pool, and the one place where database trouble becomes a 503: every call
is bounded by DB_TIMEOUT, and an outage is logged when it starts and when it ends."""

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from quart_iot import storagetime
from quart_iot.errors import StorageUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
Connection = asyncpg.Connection | PoolConnectionProxy

# The connection is gone or cannot be made: another connection may work (a restart, a
# failover), so the pool drops the ones it holds.
CONNECTION_LOST = (
    OSError,
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.InterfaceError,  # the connection closed under a query
    asyncpg.exceptions.OperatorInterventionError,  # 57: shutdown, cannot connect now, cancel
    # The pool's reset of a connection whose socket broke mid-transaction ("cannot switch to
    # state ...; another operation is in progress"): the connection is unusable, not the call.
    asyncpg.exceptions.InternalClientError,
)
# Whatever makes the database unusable for now, without being a bug of ours.
UNAVAILABLE = (
    *CONNECTION_LOST,
    TimeoutError,
    asyncpg.exceptions.InsufficientResourcesError,  # 53: disk full, too many connections
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a standby, or a read-only transaction
    asyncpg.exceptions.InsufficientPrivilegeError,  # the role lacks a grant
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # 28: bad password, no role
    asyncpg.exceptions.InvalidCatalogNameError,  # 3D000: no such database
)
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0  # seconds between two attempts at most: recovery well within 15 s


@dataclass(frozen=True, slots=True)
class Limits:
    """DB_TIMEOUT, DB_POOL_SIZE, DB_CONNECT_TIMEOUT and DB_STATEMENT_TIMEOUT."""

    timeout: float = 5.0
    pool_size: int = 10
    connect_timeout: float = 5.0
    statement_timeout: float = 30.0


class ConnectionLost(StorageUnavailable):
    """The connection broke (or could not be made): a read may try a fresh one."""


def reason_of(error: BaseException) -> str:
    """What a client and the health answer are told (never the URL, never a password)."""
    if isinstance(error, TimeoutError):
        return "the database did not answer within DB_TIMEOUT"
    if isinstance(error, asyncpg.exceptions.ReadOnlySQLTransactionError):
        return "the database is read-only"
    if isinstance(error, asyncpg.exceptions.InsufficientPrivilegeError):
        return "the database role lacks a privilege the service needs"
    if isinstance(error, asyncpg.exceptions.InvalidAuthorizationSpecificationError):
        return "the database refused the credentials"
    if isinstance(error, asyncpg.exceptions.InvalidCatalogNameError):
        return "the database does not exist"
    return "the database is unavailable"


def backoff(delay: float) -> float:
    """The next delay between attempts: doubled, capped, with jitter (replicas spread out)."""
    return min(delay * 2, BACKOFF_MAX) * random.uniform(0.8, 1.0)  # noqa: S311


class Outage:
    """Logs when the database stops answering and when it answers again, not each failure."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.reason: str | None = None

    def failed(self, error: BaseException) -> str:
        reason = reason_of(error)
        if self.since is None:
            self.since = time.monotonic()
            log.warning("database unusable: %s (%s)", reason, type(error).__name__)
        self.reason = reason
        return reason

    def recovered(self) -> None:
        if self.since is not None:
            log.warning("database usable again after %.1f s", time.monotonic() - self.since)
            self.since = self.reason = None


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """A connection back in the pool is kept as it is: the service sets nothing on it (no SET,
    no LISTEN, no session lock; a transaction left open is rolled back by the pool anyway).
    asyncpg's default reset is one more round trip per call: 244 against 150 us of the
    process's CPU per get, 8 concurrent gets on loopback (medians of 5 runs)."""


@contextlib.contextmanager
def _ended_at(deadline: float, conn: Connection) -> Iterator[list[BaseException | None]]:
    """Terminates the connection if the block still runs at `deadline` (the loop's time): its
    call then fails at once. Cancelling the call instead is not enough: a transaction's
    ROLLBACK, or the pool's reset, would then wait for a server that answers nothing (a
    network gone silent, a hung server) for ever. Yields [the TimeoutError, once ended]."""
    ended: list[BaseException | None] = [None]

    def end() -> None:
        ended[0] = TimeoutError()
        conn.terminate()

    timer = asyncio.get_running_loop().call_at(deadline, end)
    try:
        yield ended
    finally:
        timer.cancel()


class Database:
    """The pool of one process; `connection()` is the only way to a connection."""

    def __init__(self, url: str, limits: Limits) -> None:
        self.url = url
        self.limits = limits
        self.outage = Outage()
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        """Make the pool; it connects on demand, so a database that is down is no error."""
        self._pool = await asyncpg.create_pool(
            self.url,
            min_size=0,
            max_size=self.limits.pool_size,
            timeout=self.limits.connect_timeout,
            server_settings=self.server_settings(),
            reset=_keep_session,
        )

    def server_settings(self) -> dict[str, str]:
        return {"statement_timeout": str(int(self.limits.statement_timeout * 1000))}

    async def connect(self) -> asyncpg.Connection:
        """A connection of its own, outside the pool (the listener's), bounded in time."""
        conn: asyncpg.Connection = await asyncpg.connect(
            self.url,
            timeout=self.limits.connect_timeout,
            server_settings=self.server_settings(),
        )
        return conn

    @asynccontextmanager
    async def session(self, seconds: float) -> AsyncIterator[asyncpg.Connection]:
        """A connection of its own for long work (migrations), ended after `seconds` whatever
        it is doing; trouble is StorageUnavailable."""
        try:
            conn = await self.connect()
        except UNAVAILABLE as error:
            raise StorageUnavailable(self.outage.failed(error)) from None
        with _ended_at(asyncio.get_running_loop().time() + seconds, conn) as ended:
            try:
                yield conn
            except UNAVAILABLE as error:
                raise StorageUnavailable(self.outage.failed(ended[0] or error)) from None
            finally:
                with contextlib.suppress(*UNAVAILABLE):
                    await conn.close(timeout=self.limits.connect_timeout)

    async def close(self) -> None:
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), self.limits.timeout)
            except TimeoutError:
                self._pool.terminate()

    @asynccontextmanager
    async def connection(self, deadline: float | None = None) -> AsyncIterator[Connection]:
        """A pooled connection for one call, all of it within DB_TIMEOUT (or by the loop's
        time `deadline`); any trouble with the database is StorageUnavailable."""
        if self._pool is None:
            raise StorageUnavailable("the database is not connected yet")
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.limits.timeout
        ended: list[BaseException | None] = [None]
        try:
            with storagetime.measured():
                async with self._pool.acquire(timeout=max(deadline - loop.time(), 0.001)) as conn:
                    with _ended_at(deadline, conn) as ended:
                        yield conn
        except UNAVAILABLE as error:
            reason = self.outage.failed(ended[0] or error)
            if isinstance(error, CONNECTION_LOST) and ended[0] is None:
                await self._pool.expire_connections()  # the others are likely stale too
                raise ConnectionLost(reason) from None
            raise StorageUnavailable(reason) from None
        self.outage.recovered()

    async def read(self, query: Callable[[Connection], Awaitable[T]]) -> T:
        """A read, tried once more on a fresh connection when the first one was stale (the
        database restarted since it was made): reads are safe to repeat. Both within
        DB_TIMEOUT."""
        deadline = asyncio.get_running_loop().time() + self.limits.timeout
        try:
            async with self.connection(deadline) as conn:
                return await query(conn)
        except ConnectionLost:
            pass
        async with self.connection(deadline) as conn:
            return await query(conn)
