"""Waiting with the PostgreSQL store: event ids from the database, streams that resume on any
replica, what a lost LISTEN connection does to waiters, and the connections thousands of
waiters hold. Replicas are apps in this process on one database (tests/test_replicas.py runs
them as servers)."""

import asyncio
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from quart import Quart

from quart_iot.documents import etag_of
from quart_iot.settings import Settings
from quart_iot.store import ConfigStore
from quart_iot.waiting import PEERS_ENV, Peers, Waiting
from tests.conftest import MAC, OTHER_MAC
from tests.test_waiting_streams import Frame, open_stream, pull, pull_events, put

Serving = Callable[..., Awaitable[Quart]]


@pytest.fixture
def backend() -> str:
    """These tests are about the PostgreSQL store alone."""
    return "postgres"


def saved(frames: list[Frame]) -> list[tuple[str, str]]:
    """(id, MAC) of each event."""
    return [(frame["id"], json.loads(frame["data"])["mac_address"]) for frame in frames]


async def test_event_ids_are_the_databases_and_the_same_on_every_replica(
    serving: Serving,
) -> None:
    a, b = await serving(), await serving()
    on_a, on_b = open_stream(a), open_stream(b)
    for stream in (on_a, on_b):
        assert await pull(stream) == [{"comment": "connected"}]
    await put(a.test_client(), MAC, {"v": 1})
    await put(b.test_client(), OTHER_MAC, {"v": 1})
    seen_a, seen_b = await pull_events(on_a, 2), await pull_events(on_b, 2)
    assert seen_a == seen_b
    after_first = await ConfigStore.of(b).changes_after(seen_a[0]["id"])  # the database's
    assert after_first is not None
    assert [(change.id, change.mac) for change in after_first] == saved(seen_a[1:])
    for stream in (on_a, on_b):
        await stream.aclose()


async def test_a_stream_resumes_on_another_replica_with_exactly_what_it_missed(
    serving: Serving,
) -> None:
    a, b = await serving(), await serving()
    stream = open_stream(a)
    await pull(stream)
    await put(a.test_client(), MAC, {"v": 1})
    (last_seen,) = await pull_events(stream, 1)
    await stream.aclose()  # the client is away...
    missed = [await put(b.test_client(), mac, {"v": 2, "on": mac}) for mac in (OTHER_MAC, MAC)]
    late = await serving()  # ...and comes back to a replica started after those changes
    for replica in (b, late):  # b's buffer holds them; `late` asks the database
        resumed = open_stream(replica, last_seen["id"])
        assert await pull(resumed) == [{"comment": "connected"}]
        frames = await pull_events(resumed, len(missed))
        assert [json.loads(frame["data"])["etag"] for frame in frames] == missed
        assert {frame["event"] for frame in frames} == {"saved"}
        missed.append(await put(a.test_client(), OTHER_MAC, {"v": len(missed)}))
        (live,) = await pull_events(resumed, 1)  # then it goes on, live
        assert json.loads(live["data"])["etag"] == missed[-1]
        assert int(live["id"].split("-")[1]) == int(frames[-1]["id"].split("-")[1]) + 1
        await resumed.aclose()


async def test_a_stream_resumed_from_an_id_the_database_no_longer_knows_is_reset(
    serving: Serving,
) -> None:
    replica = await serving()
    for unknown in ("0a1b2c3d-1", "not-an-id", "ffffffff-99999999999"):
        stream = open_stream(replica, unknown)
        assert await pull(stream) == [{"comment": "connected"}]
        (reset,) = await pull(stream)
        assert reset["event"] == "reset"
        await stream.aclose()


async def test_a_lost_feed_resets_streams_and_long_polls_look_again(
    serving: Serving, settings: Settings
) -> None:
    app = await serving()
    client = app.test_client()
    stream = open_stream(app)
    await pull(stream)
    etag = await put(client, MAC, {"v": 1})
    await pull_events(stream, 1)  # heard: its wake-up is over
    poll = asyncio.create_task(
        client.get(
            f"/api/configs/{MAC}.json",
            headers={"If-None-Match": f'"{etag}"', "Prefer": "wait=20"},
        )
    )
    waiting = Waiting.of(app)
    async with asyncio.timeout(10):
        while len(waiting.long_polls) < 1:
            await asyncio.sleep(0.01)
    # A change whose NOTIFY this process never got (as while its LISTEN connection was lost).
    data = b'{"v": "changed unheard"}'
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(
            "UPDATE configs SET data = $2, etag = $3 WHERE mac = $1", MAC, data, etag_of(data)
        )
    finally:
        await conn.close()
    ConfigStore.of(app).changes_missed()  # what the store's listener says once back
    answer = await asyncio.wait_for(poll, 10)
    assert answer.status_code == 200
    assert await answer.get_data() == data
    (reset,) = await pull_events(stream, 1)
    assert reset["event"] == "reset"
    resumed = open_stream(app, reset["id"])  # the reset's id resumes on this replica
    await pull(resumed)
    await put(client, OTHER_MAC, {"after": "reset"})
    assert [frame["event"] for frame in await pull_events(resumed, 1)] == ["saved"]
    for each in (stream, resumed):
        await each.aclose()


async def connections(url: str) -> int:
    """The connections to the test's database, but this one."""
    conn = await asyncpg.connect(url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return count


async def test_a_thousand_waiters_hold_a_few_connections(
    serving: Serving, settings: Settings
) -> None:
    assert settings.database_url is not None
    app = await serving(db_pool_size=4)
    client = app.test_client()
    macs = [f"00-00-00-00-{n // 256:02x}-{n % 256:02x}" for n in range(100)]
    etags = {mac: await put(client, mac, {"n": 0}) for mac in macs}

    async def poll(mac: str) -> Any:
        headers = {"If-None-Match": f'"{etags[mac]}"', "Prefer": "wait=30"}
        return await client.get(f"/api/configs/{mac}.json", headers=headers)

    polls = [asyncio.create_task(poll(mac)) for mac in macs for _ in range(5)]
    streams: list[AsyncGenerator[bytes, None]] = [open_stream(app) for _ in range(500)]
    await asyncio.gather(*(pull(stream) for stream in streams))  # connected
    waiting = Waiting.of(app)
    async with asyncio.timeout(60):
        while len(waiting.long_polls) < len(polls):
            await asyncio.sleep(0.05)
    held = await connections(settings.database_url)
    # The pool, the listener, and a background pass (retention, or the history's survey).
    assert held <= 4 + 2
    changed = {(mac, await put(client, mac, {"n": 1})) for mac in macs}
    answers = await asyncio.wait_for(asyncio.gather(*polls), 60)
    assert [answer.status_code for answer in answers] == [200] * len(polls)
    for stream in streams:
        seen: set[tuple[str, str]] = set()
        while not changed <= seen:
            for frame in await pull_events(stream, 1):
                data = json.loads(frame["data"])
                seen.add((data["mac_address"], data["etag"]))
        await stream.aclose()
    assert await connections(settings.database_url) <= 4 + 2


async def test_workers_on_a_database_send_no_datagrams(
    serving: Serving, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PEERS_ENV, "quart_iot-peers-test:0:2")  # as WORKERS=2 sets it
    assert Peers.from_environment() is not None  # the directory store would use it
    app = await serving()
    assert Waiting.of(app).peers is None  # NOTIFY reaches every worker
