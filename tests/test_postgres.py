"""The PostgreSQL store beyond the contract: migrations, two replicas on one database, and the
database going away (down at start, restarted under writes, too slow)."""

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import asyncpg
import pytest
from werkzeug.datastructures import ETags

from quart_iot.errors import ConfigExists, PreconditionFailed, StorageUnavailable
from quart_iot.settings import Settings
from quart_iot.store.backend import Change, WriteMeta
from quart_iot.store.postgres import Limits, PostgresBackend, SchemaTooNew
from quart_iot.store.postgres import backend as backend_module
from quart_iot.store.postgres import listener as listener_module
from quart_iot.store.postgres.schema import MIGRATION_LOCK, MIGRATIONS
from quart_iot.store.records import Precondition
from tests.conftest import MAC, OTHER_MAC
from tests.pg import Cluster
from tests.test_backend_contract import Recorder

NONE = Precondition()
META = WriteMeta()
FAST = Limits(timeout=1.0, connect_timeout=1.0)


class Replicas:
    """Backends started on one database, as replicas are; all stopped at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.started: list[PostgresBackend] = []

    async def start(self, limits: Limits = FAST) -> tuple[PostgresBackend, Recorder]:
        backend, sink = PostgresBackend(self.url, limits), Recorder()
        await backend.start(sink)
        self.started.append(backend)
        return backend, sink

    async def stop(self) -> None:
        for backend in self.started:
            await backend.stop()


@pytest.fixture
async def replicas(pg_url: str) -> AsyncIterator[Replicas]:
    made = Replicas(pg_url)
    yield made
    await made.stop()


@pytest.fixture
async def new_replicas(pg_empty_url: str) -> AsyncIterator[Replicas]:
    """Replicas of a database that has no table yet."""
    made = Replicas(pg_empty_url)
    yield made
    await made.stop()


@contextlib.contextmanager
def server_stopped(cluster: Cluster) -> Iterator[None]:
    """The database server down for the block (started again whatever happens)."""
    cluster.stop()
    try:
        yield
    finally:
        cluster.start()


async def eventually_healthy(backend: PostgresBackend, seconds: float = 15) -> None:
    async with asyncio.timeout(seconds):
        while await backend.health() != ("read-write", None):
            await asyncio.sleep(0.1)


# -- migrations -------------------------------------------------------------------------------


async def test_the_schema_is_created_once_and_recorded(
    pg_empty_url: str, new_replicas: Replicas
) -> None:
    await asyncio.gather(*(new_replicas.start() for _ in range(4)))  # starting together
    conn = await asyncpg.connect(pg_empty_url)
    try:
        recorded = await conn.fetch("SELECT version FROM config_schema ORDER BY version")
    finally:
        await conn.close()
    assert [row["version"] for row in recorded] == list(range(1, len(MIGRATIONS) + 1))


async def test_a_schema_of_version_1_is_migrated_with_its_subjects(
    pg_empty_url: str, new_replicas: Replicas
) -> None:
    conn = await asyncpg.connect(pg_empty_url)  # as phase 1 left a database
    version = f"{time.time_ns()}-0a1b2c3d"  # recent: retention (90 days) must not take it
    try:
        await conn.execute(
            "CREATE TABLE config_schema (version integer PRIMARY KEY,"
            " migrated_at timestamptz NOT NULL DEFAULT now());"
            + MIGRATIONS[0]
            + "INSERT INTO config_feed VALUES ('0a1b2c3d', 0);"
            " INSERT INTO config_schema (version) VALUES (1);"
            " INSERT INTO config_versions VALUES ('aa-bb-cc-dd-ee-ff',"
            f" '{version}', 'deleted', '{{}}', 'e',"
            """ '{"mac_address":"aa-bb-cc-dd-ee-ff"}', 2, 'sub:ünï', NULL);"""
        )
    finally:
        await conn.close()
    backend, _ = await new_replicas.start()
    (item,) = await backend.deleted()
    assert item["subject"] == "sub:ünï"
    await backend.save(OTHER_MAC, {}, NONE, WriteMeta(subject="nul\x00"))
    (version,) = json.loads(await backend.versions_json(OTHER_MAC, 5, None))["versions"]
    assert version["subject"] == "nul\x00"


async def test_a_newer_schema_refuses_to_start(pg_url: str, replicas: Replicas) -> None:
    await replicas.start()
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("INSERT INTO config_schema (version) VALUES ($1)", len(MIGRATIONS) + 1)
    finally:
        await conn.close()
    with pytest.raises(SchemaTooNew) as refused:
        await PostgresBackend(pg_url, FAST).start(Recorder())
    assert "newer than this version of quart_iot knows" in str(refused.value)
    assert "\n" not in str(refused.value)


# -- two replicas on one database -------------------------------------------------------------


async def test_a_write_on_one_replica_is_read_on_the_other(replicas: Replicas) -> None:
    a, _ = await replicas.start()
    b, _ = await replicas.start()
    assert json.loads(await b.list_json())["count"] == 0  # b's list is cached now
    saved = await a.save(MAC, {"deviceName": "one"}, NONE, META)
    assert (await b.get(MAC)).raw == saved.stored.raw
    assert await b.current_etag(MAC) == saved.stored.etag
    assert json.loads(await b.list_json())["configs"][0]["device_name"] == "one"
    await a.delete(MAC, NONE, META)
    assert await b.count() == 0


async def test_concurrent_if_match_writers_lose_no_update(replicas: Replicas) -> None:
    a, _ = await replicas.start()
    b, _ = await replicas.start()
    await a.save(MAC, {"n": 0}, NONE, META)

    async def increment(backend: PostgresBackend) -> int:
        refused = 0
        while True:
            current = await backend.get(MAC)
            condition = Precondition(if_match=ETags([current.etag]))
            try:
                await backend.save(MAC, {"n": current.content["n"] + 1}, condition, META)
            except PreconditionFailed:
                refused += 1
                continue
            return refused

    refusals = await asyncio.gather(*(increment(r) for r in (a, b) * 10))
    assert (await a.get(MAC)).content == {"n": 20}  # every increment counted once
    assert sum(refusals) > 0  # they did race
    page = json.loads(await b.versions_json(MAC, 50, None))
    assert page["count"] == 21


async def test_of_concurrent_creates_exactly_one_wins(replicas: Replicas) -> None:
    a, _ = await replicas.start()
    b, _ = await replicas.start()
    create_only = Precondition(overwrite=False)
    outcomes = await asyncio.gather(
        *(r.save(MAC, {"by": i}, create_only, META) for i, r in enumerate((a, b) * 8)),
        return_exceptions=True,
    )
    winners = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(o, ConfigExists) for o in outcomes if o not in winners)
    assert (await b.get(MAC)).etag == winners[0].stored.etag


async def test_concurrent_overwrites_of_a_new_document_all_succeed(replicas: Replicas) -> None:
    a, _ = await replicas.start()
    b, _ = await replicas.start()
    saved = await asyncio.gather(*(r.save(MAC, {"by": i}, NONE, META) for i, r in
                                   enumerate((a, b) * 5)))  # fmt: skip
    assert sum(s.etag_before is None for s in saved) == 1  # one created, the others replaced
    assert json.loads(await a.versions_json(MAC, 50, None))["count"] == 10


async def test_a_change_on_one_replica_wakes_the_other(replicas: Replicas) -> None:
    a, sink_a = await replicas.start()
    b, sink_b = await replicas.start()
    saved = await a.save(MAC, {"v": 1}, NONE, META)
    heard = await sink_b.heard(MAC, saved.stored.etag)
    assert heard == await sink_a.heard(MAC, saved.stored.etag)  # one id for every replica
    await b.save(OTHER_MAC, {"v": 2}, NONE, META)
    await a.delete(MAC, NONE, META)
    gone = await sink_b.heard(MAC, None)
    later = await b.changes_after(heard.id)
    assert later == await a.changes_after(heard.id)
    assert later is not None
    assert [(c.mac, c.etag is None) for c in later] == [(OTHER_MAC, False), (MAC, True)]
    assert later[-1] == gone


async def test_change_ids_follow_the_commit_order(replicas: Replicas) -> None:
    a, sink = await replicas.start()
    b, _ = await replicas.start()
    macs = [f"00-00-00-00-00-{n:02x}" for n in range(20)]
    pairs = zip(macs, (a, b) * 10, strict=True)
    await asyncio.gather(*(r.save(mac, {}, NONE, META) for mac, r in pairs))
    await sink.until(lambda: len(sink.changes) == 20)
    numbers = [int(change.id.rsplit("-", 1)[1]) for change in sink.changes]
    assert numbers == list(range(numbers[0], numbers[0] + 20))  # as heard: no gap, in order
    assert await b.changes_after(sink.changes[4].id) == sink.changes[5:]


async def test_changes_of_another_database_cannot_be_resumed(replicas: Replicas) -> None:
    a, sink = await replicas.start()
    saved = await a.save(MAC, {}, NONE, META)
    heard = await sink.heard(MAC, saved.stored.etag)
    epoch, number = heard.id.split("-")
    assert await a.changes_after(f"{'0' * 8}-{number}") is None
    assert await a.changes_after(f"{epoch}-{int(number) + 5}") is None  # from the future


# -- the database going away ------------------------------------------------------------------


async def test_a_database_down_at_start_is_no_crash(
    pg_cluster: Cluster, new_replicas: Replicas
) -> None:
    with server_stopped(pg_cluster):
        backend, _ = await new_replicas.start()  # does not raise
        state, reason = await backend.health()
        assert state == "unavailable"
        assert reason
        with pytest.raises(StorageUnavailable):
            await backend.get(MAC)
        with pytest.raises(StorageUnavailable):
            await backend.save(MAC, {}, NONE, META)
    await eventually_healthy(backend)  # connects, migrates, serves: no restart
    await backend.save(MAC, {"v": 1}, NONE, META)
    assert (await backend.get(MAC)).content == {"v": 1}


async def test_a_restart_under_writes_loses_nothing_acknowledged(
    pg_cluster: Cluster, replicas: Replicas
) -> None:
    a, sink_a = await replicas.start()
    b, sink_b = await replicas.start()
    acknowledged: dict[str, int] = {}
    refused: list[str] = []
    stop = asyncio.Event()

    async def write(backend: PostgresBackend, mac: str) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                await backend.save(mac, {"n": n}, NONE, META)
            except StorageUnavailable as error:
                refused.append(error.reason)
                await asyncio.sleep(0.05)
                continue
            acknowledged[mac] = n

    writers = [asyncio.create_task(write(r, m)) for r, m in ((a, MAC), (b, OTHER_MAC))]
    try:
        await asyncio.sleep(0.3)
        with server_stopped(pg_cluster):
            await asyncio.sleep(1.0)
            assert (await a.health())[0] == "unavailable"
        await eventually_healthy(a)
        await eventually_healthy(b)
        written = dict(acknowledged)
        await asyncio.sleep(0.3)  # writes go on after the restart, on both replicas
    finally:
        stop.set()
        await asyncio.gather(*writers)
    assert refused  # 503s while it was down
    assert acknowledged[MAC] > written.get(MAC, 0)
    assert acknowledged[OTHER_MAC] > written.get(OTHER_MAC, 0)
    for mac, n in acknowledged.items():
        assert (await b.get(mac)).content["n"] >= n  # nothing acknowledged was lost
    await sink_a.until(lambda: sink_a.missed_count > 0)  # the listener came back
    await sink_b.until(lambda: sink_b.missed_count > 0)
    saved = await a.save(MAC, {"after": True}, NONE, META)
    await sink_b.heard(MAC, saved.stored.etag)  # and hears again


async def test_a_database_too_slow_answers_503_within_db_timeout(
    pg_url: str, replicas: Replicas
) -> None:
    backend, _ = await replicas.start(Limits(timeout=0.5))
    await backend.save(MAC, {"v": 1}, NONE, META)
    blocker = await asyncpg.connect(pg_url)
    try:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE configs IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(StorageUnavailable) as slow:
                await backend.get(MAC)
            assert slow.value.reason == "the database did not answer within DB_TIMEOUT"
            with pytest.raises(StorageUnavailable):
                await backend.save(MAC, {"v": 2}, NONE, META)
    finally:
        await blocker.close()
    assert (await backend.get(MAC)).content == {"v": 1}  # the pool recovered


async def test_health_says_read_only_for_a_read_only_database(
    pg_url: str, replicas: Replicas
) -> None:
    await replicas.start()  # migrates
    conn = await asyncpg.connect(pg_url)
    try:
        name = pg_url.rsplit("/", 1)[1]
        await conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    finally:
        await conn.close()
    reader, _ = await replicas.start()  # new connections are read-only
    assert await reader.health() == ("read-only", None)
    with pytest.raises(StorageUnavailable, match="read-only"):
        await reader.save(MAC, {}, NONE, META)


def test_notifications_other_than_changes_are_ignored() -> None:
    from quart_iot.store.postgres.listener import parse_notification

    for odd in ["abc", "0a1b2c3d-1 AA-BB-CC-DD-EE-FF -", "0a1b2c3d-1 aa-bb-cc-dd-ee-ff x y"]:
        assert parse_notification(odd) is None
    assert parse_notification("0a1b2c3d-1 aa-bb-cc-dd-ee-ff -") == Change("0a1b2c3d-1", MAC, None)
    etag = "0123456789abcdef" * 2
    assert parse_notification(f"0a1b2c3d-9 {MAC} {etag}") == Change("0a1b2c3d-9", MAC, etag)


# -- retention and the change feed, in the background -----------------------------------------


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 15) -> None:
    async with asyncio.timeout(seconds):
        while not await check():
            await asyncio.sleep(0.05)


async def test_a_lowered_history_max_versions_applies_at_start(pg_url: str) -> None:
    writer = PostgresBackend(pg_url, FAST)
    await writer.start(Recorder())
    try:
        for n in range(6):
            await writer.save(MAC, {"n": n}, NONE, META)
    finally:
        await writer.stop()
    restarted = PostgresBackend(pg_url, FAST, history_max_versions=2)
    await restarted.start(Recorder())
    try:

        async def pruned() -> bool:
            page = json.loads(await restarted.versions_json(MAC, 50, None))
            return bool(page["count"] == 2)

        await eventually(pruned)
    finally:
        await restarted.stop()


async def test_aged_history_goes_in_the_background(pg_url: str, replicas: Replicas) -> None:
    backend = PostgresBackend(pg_url, FAST, history_max_days=0.2 / 86_400)  # 200 ms
    await backend.start(Recorder())
    replicas.started.append(backend)
    await backend.save(MAC, {"v": 1}, NONE, META)
    await backend.save(OTHER_MAC, {"v": 1}, NONE, META)
    await backend.delete(OTHER_MAC, NONE, META)
    assert [item["mac_address"] for item in await backend.deleted()] == [OTHER_MAC]

    async def gone() -> bool:
        return await backend.deleted() == []  # after its days, a deleted device's history goes

    await eventually(gone)
    page = json.loads(await backend.versions_json(MAC, 50, None))
    assert page["count"] == 1  # the newest version of a live device stays, whatever its age


async def test_changes_older_than_kept_cannot_be_resumed(
    pg_url: str, replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, sink = await replicas.start()
    for n in range(6):
        await a.save(MAC, {"n": n}, NONE, META)
    await sink.until(lambda: len(sink.changes) == 6)
    monkeypatch.setattr(backend_module, "CHANGES_KEPT", 3)
    b, _ = await replicas.start()  # its first retention pass trims the feed
    first, fourth = sink.changes[0].id, sink.changes[3].id

    async def trimmed() -> bool:
        return await b.changes_after(sink.changes[1].id) is None

    await eventually(trimmed)
    assert await b.changes_after(first) is None  # further behind than what is kept
    assert await b.changes_after(fourth) == sink.changes[4:]


async def test_connections_killed_under_the_service_are_made_again(
    pg_url: str, replicas: Replicas
) -> None:
    a, sink_a = await replicas.start()
    b, _ = await replicas.start()
    await a.save(MAC, {"v": 1}, NONE, META)
    assert (await b.get(MAC)).content == {"v": 1}  # b's pool holds a connection now
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    assert (await b.get(MAC)).content == {"v": 1}  # a read tries a fresh connection
    await sink_a.until(lambda: sink_a.missed_count == 1)  # the listener is back
    saved = await b.save(MAC, {"v": 2}, NONE, META)
    await sink_a.heard(MAC, saved.stored.etag)


def test_settings_make_the_backend(pg_url: str) -> None:
    settings = Settings(
        database_url=pg_url, db_timeout=2, db_pool_size=3, db_connect_timeout=1,
        db_statement_timeout=9, history_max_versions=7, max_content_length=4096, _env_file=None,
    )  # fmt: skip
    backend = PostgresBackend.from_settings(settings)
    assert backend.limits == Limits(2, 3, 1, 9)
    assert (backend.keep_versions, backend.max_bytes) == (7, 4096)


async def test_a_listening_connection_gone_silent_is_made_again(
    pg_url: str, replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listener_module, "PING_SECONDS", 0.1)
    a, sink_a = await replicas.start()
    admin = await asyncpg.connect(pg_url)
    try:
        async with asyncio.timeout(15):  # the listener's server process, once it pings
            pid = None
            while pid is None:
                pid = await admin.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND query = 'SELECT 1'"
                )
        os.kill(pid, signal.SIGSTOP)  # the connection stays open, and answers nothing
        try:
            await sink_a.until(lambda: sink_a.missed_count == 1)  # a ping timed out
        finally:
            os.kill(pid, signal.SIGCONT)
    finally:
        await admin.close()
    saved = await a.save(MAC, {"v": 1}, NONE, META)
    await sink_a.heard(MAC, saved.stored.etag)


async def test_a_newer_schema_found_after_an_outage_keeps_the_store_unavailable(
    pg_cluster: Cluster, pg_url: str, replicas: Replicas
) -> None:
    await replicas.start()  # migrates
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("INSERT INTO config_schema (version) VALUES ($1)", len(MIGRATIONS) + 1)
    finally:
        await conn.close()
    with server_stopped(pg_cluster):
        late, _ = await replicas.start()  # down: no error yet

    async def refused() -> bool:
        state, reason = await late.health()
        return state == "unavailable" and "newer than this version" in str(reason)

    await eventually(refused)
    with pytest.raises(StorageUnavailable, match="newer than this version"):
        await late.get(MAC)


async def test_a_database_that_answers_nothing_does_not_hold_up_the_start(
    pg_cluster: Cluster, pg_url: str, replicas: Replicas
) -> None:
    await replicas.start()  # migrated: a start then reads the schema's version
    postmaster = int((pg_cluster.data / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGSTOP)  # connections are accepted (the backlog), not served
    try:
        backend, _ = await replicas.start(Limits(timeout=0.5, connect_timeout=0.5))
        assert (await backend.health())[0] == "unavailable"
    finally:
        os.kill(postmaster, signal.SIGCONT)
    await eventually_healthy(backend)


async def test_a_migration_the_server_never_answers_does_not_hold_up_the_start(
    pg_empty_url: str, new_replicas: Replicas
) -> None:
    holder = await asyncpg.connect(pg_empty_url)  # as another replica migrating
    await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    limits = Limits(timeout=0.5, connect_timeout=0.5, statement_timeout=1.0)
    starting = asyncio.create_task(new_replicas.start(limits))
    pid = None
    try:
        async with asyncio.timeout(15):  # the start's server process, waiting for the lock
            while pid is None:
                pid = await holder.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE '%pg_advisory_xact_lock%'"
                )
        os.kill(pid, signal.SIGSTOP)  # now not even statement_timeout ends its wait
        backend, _ = await starting  # given up after connect + statement timeouts
        assert (await backend.health())[0] == "unavailable"
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
        await holder.close()
    await eventually_healthy(backend)


@pytest.mark.parametrize("call", ["get", "save", "delete"])
async def test_a_server_that_answers_nothing_gets_503_not_a_hang(
    pg_url: str, replicas: Replicas, call: str
) -> None:
    backend, _ = await replicas.start(Limits(timeout=0.5, connect_timeout=0.5))
    await backend.save(MAC, {"v": 1}, NONE, META)  # the pool holds a connection now
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "get": lambda: backend.get(MAC),
        "save": lambda: backend.save(MAC, {"v": 2}, NONE, META),
        "delete": lambda: backend.delete(MAC, NONE, META),
    }
    admin = await asyncpg.connect(pg_url)
    pids = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()"
    )
    for row in pids:  # connected, and silent: as a network that drops everything
        os.kill(row["pid"], signal.SIGSTOP)
    try:
        async with asyncio.timeout(20):  # a hang fails here, not at the suite's timeout
            with pytest.raises(StorageUnavailable) as refused:
                await calls[call]()
        assert refused.value.reason == "the database did not answer within DB_TIMEOUT"
    finally:
        for row in pids:
            os.kill(row["pid"], signal.SIGCONT)
        await admin.close()
    await eventually_healthy(backend)


async def test_the_stop_ends_a_task_that_lost_its_cancellation(pg_url: str) -> None:
    """As the listener did when cancelled in asyncpg's connect on Python 3.11 (wait_for lost
    the cancellation): a start refused for a newer schema then hung for 60 s."""
    lost = asyncio.Event()

    async def loses_one_cancellation() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            lost.set()  # swallowed: goes on as if nothing happened
        await asyncio.sleep(3600)

    backend = PostgresBackend.from_settings(Settings(database_url=pg_url, _env_file=None))
    task = asyncio.create_task(loses_one_cancellation())
    backend._tasks = [task]
    await asyncio.sleep(0)
    stopping = asyncio.create_task(backend.stop())
    # A hang, not a speed, is what fails here: the stop re-cancels after half a second.
    done, _ = await asyncio.wait([stopping], timeout=20)
    task.cancel()  # on failure, the second cancellation the stop never sent
    assert stopping in done
    assert lost.is_set()
    assert task.cancelled()
