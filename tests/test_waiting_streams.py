"""The event stream in process: driven chunk by chunk, so that each case is deterministic.

A test pulls the stream's chunks itself (as hypercorn does when the client's socket takes
them), and makes changes between two pulls: that is a slow client during a burst, without a
sleep racing the loop.
"""

import asyncio
import itertools
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.testing import connections

from quart_iot.app import create_app
from quart_iot.settings import Settings
from quart_iot.waiting import Waiting, events, streams
from quart_iot.waiting.headers import DELTA_SECONDS_MAX, last_event_id, preferred_wait
from tests.conftest import MAC, OTHER_MAC, Client

Frame = dict[str, str]


async def put(client: Client, mac: str, content: dict[str, Any]) -> str:
    response = await client.put(f"/api/configs/{mac}", json={"content": content})
    assert response.status_code == 200
    return response.headers["ETag"].strip('"')


def frames(data: bytes) -> list[Frame]:
    """The frames of some stream bytes (each a complete frame), comments as {"comment": ...}."""
    parsed = []
    for block in data.decode().split("\n\n")[:-1]:
        frame: Frame = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            frame[name or "comment"] = value.strip()
        parsed.append(frame)
    return parsed


async def pull(stream: AsyncIterator[bytes]) -> list[Frame]:
    """The frames of the stream's next chunk."""
    async with asyncio.timeout(10):
        return frames(await anext(stream))


async def pull_events(stream: AsyncIterator[bytes], count: int) -> list[Frame]:
    """Chunks until `count` events (not comments) have come."""
    got: list[Frame] = []
    while len(got) < count:
        got += [frame for frame in await pull(stream) if "event" in frame]
    return got


def open_stream(app: Quart, resume_after: str | None = None) -> AsyncGenerator[bytes, None]:
    stream = Waiting.of(app).stream(resume_after, None)
    assert isinstance(stream, AsyncGenerator)
    return stream


async def test_a_stream_is_not_broken_by_changes_while_it_sends(app: Quart, client: Client) -> None:
    stream = open_stream(app)
    assert await pull(stream) == [{"comment": "connected"}]
    etags = [await put(client, MAC, {"v": v}) for v in range(3)]
    sent = await pull_events(stream, 1)
    etags.append(await put(client, MAC, {"v": 3}))  # the buffer changes between two sends
    sent += await pull_events(stream, 4 - len(sent))
    assert [json.loads(frame["data"])["etag"] for frame in sent] == etags
    assert [frame["event"] for frame in sent] == ["saved"] * 4
    await stream.aclose()


@pytest.fixture
async def small_buffer_app(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Quart]:
    monkeypatch.setattr(events, "BUFFER_SIZE", 4)
    app = create_app(settings)
    async with app.test_app():
        yield app


async def test_a_stream_further_behind_than_the_buffer_gets_reset_never_a_gap(
    small_buffer_app: Quart,
) -> None:
    client = small_buffer_app.test_client()
    asleep, sending = open_stream(small_buffer_app), open_stream(small_buffer_app)
    assert await pull(asleep) == await pull(sending) == [{"comment": "connected"}]
    first = [await put(client, MAC, {"v": v}) for v in range(2)]
    assert [json.loads(f["data"])["etag"] for f in await pull_events(sending, 2)] == first
    for v in range(2, 8):  # six more: the buffer keeps four
        await put(client, MAC, {"v": v})
    for stream in (asleep, sending):
        reset = (await pull_events(stream, 1))[0]
        assert reset["event"] == "reset"
        latest = await put(client, OTHER_MAC, {"after": id(stream)})
        after = await pull_events(stream, 1)
        assert [json.loads(frame["data"])["etag"] for frame in after] == [latest]
        resumed = open_stream(small_buffer_app, reset["id"])  # the reset's id resumes
        await pull(resumed)
        assert [f["event"] for f in await pull_events(resumed, 1)] == ["saved"]
        await resumed.aclose()
        await stream.aclose()


async def test_an_event_is_encoded_once_for_every_stream(
    app: Quart, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded: list[str] = []

    def counted(event_id: str, mac: str, etag: str | None) -> bytes:
        encoded.append(event_id)
        return original(event_id, mac, etag)

    original = events.event_frame
    monkeypatch.setattr(events, "event_frame", counted)
    followers = [open_stream(app) for _ in range(50)]
    for stream in followers:
        await pull(stream)
    etag = await put(client, MAC, {"v": 1})
    for stream in followers:
        assert [json.loads(f["data"])["etag"] for f in await pull_events(stream, 1)] == [etag]
        await stream.aclose()
    assert len(encoded) == 1


async def test_the_fan_out_lets_the_loop_run_between_batches_of_streams(
    app: Quart, client: Client
) -> None:
    count = 4 * streams.FAN_OUT_BATCH
    followers = [open_stream(app) for _ in range(count)]
    for stream in followers:
        await pull(stream)
    served = 0

    async def follow(stream: AsyncGenerator[bytes, None]) -> None:
        nonlocal served
        await pull_events(stream, 1)
        served += 1

    tasks = [asyncio.create_task(follow(stream)) for stream in followers]
    await asyncio.sleep(0)  # each follower now sleeps in the stream
    seen: list[int] = []  # `served` at each turn of the event loop
    loop = asyncio.get_running_loop()

    def turn() -> None:
        seen.append(served)
        if served < count:
            loop.call_soon(turn)

    turn()
    await put(client, MAC, {"v": 1})
    await asyncio.gather(*tasks)
    steps = [after - before for before, after in itertools.pairwise(seen)]
    assert seen[-1] == count
    assert max(steps) <= streams.FAN_OUT_BATCH  # never all the streams in one turn
    for stream in followers:
        await stream.aclose()


async def test_a_stream_ends_at_events_max_seconds_where_the_client_resumes(
    configs_dir: Path,
) -> None:
    app = create_app(Settings(esp32_configs_dir=configs_dir, events_max_seconds=0.2))
    async with app.test_app():
        client = app.test_client()
        stream = open_stream(app)
        async with asyncio.timeout(10):
            received = b"".join([chunk async for chunk in stream])  # it ends by itself
        *_, last = frames(received)
        assert set(last) == {"id"}  # sets Last-Event-ID, dispatches no event
        etag = await put(client, MAC, {"v": 1})  # after the end, before the reconnect
        resumed = open_stream(app, last["id"])
        await pull(resumed)
        sent = await pull_events(resumed, 1)
        assert [json.loads(frame["data"])["etag"] for frame in sent] == [etag]
        await resumed.aclose()


async def test_a_stream_ends_when_its_credentials_expire(app: Quart, client: Client) -> None:
    stream = Waiting.of(app).stream(None, None, expires_at=time.time() + 0.2)
    await anext(stream)
    etag = await put(client, MAC, {"v": 1})
    async with asyncio.timeout(10):
        received = b"".join([chunk async for chunk in stream])
    sent = frames(received)
    assert [json.loads(frame["data"])["etag"] for frame in sent if "data" in frame] == [etag]
    assert set(sent[-1]) == {"id"}
    expired = Waiting.of(app).stream(None, None, expires_at=time.time() - 1)
    assert [frame for chunk in [c async for c in expired] for frame in frames(chunk)] == [
        {"comment": "connected"},
        {"id": sent[-1]["id"]},
    ]


async def test_a_huge_wait_preference_is_capped_not_a_500(client: Client) -> None:
    etag = await put(client, MAC, {"v": 1})
    headers = {"If-None-Match": '"older"', "Prefer": "wait=" + "9" * 5000}
    response = await client.get(f"/api/configs/{MAC}.json", headers=headers)
    assert response.status_code == 200
    assert response.headers["ETag"] == f'"{etag}"'


@pytest.mark.parametrize(
    ("values", "seconds"),
    [
        (["wait=" + "9" * 5000], DELTA_SECONDS_MAX),  # RFC 9111 5.2: 2^31 when too large
        (["wait=99999999999"], DELTA_SECONDS_MAX),
        (["wait=2147483647"], 2147483647),
        (["wait=" + "\u0661" * 5000], 0),
    ],
)
def test_prefer_wait_reads_any_length_of_digits(values: list[str], seconds: int) -> None:
    assert preferred_wait(values) == seconds


@pytest.mark.parametrize("suffix", ["9" * 5000, "1" + "0" * 4400, "\u0661" * 10])
async def test_a_huge_last_event_id_is_unknown_and_answered_reset(
    app: Quart, client: Client, suffix: str
) -> None:
    epoch = Waiting.of(app).buffer.epoch
    headers = {"Last-Event-ID": f"{epoch}-{suffix}"}
    async with client.request("/api/configs/events", headers=headers) as connection:
        await connection.send_complete()
        received = b""
        while b"event: reset" not in received:
            received += await asyncio.wait_for(connection.receive(), 10)
        assert isinstance(connection, connections.TestHTTPConnection)  # has status_code
        assert connection.status_code == 200
        await connection.disconnect()
    assert frames(received)[1]["id"] == f"{epoch}-0"


def test_last_event_id_is_bounded() -> None:
    assert last_event_id(None) is None
    assert last_event_id(" abc-1 ") == "abc-1"
    assert last_event_id("a" * 65) == ""
    assert last_event_id("a\x00b") == ""


async def test_a_change_during_a_fan_out_reaches_every_stream() -> None:
    buffer = events.EventBuffer()
    fan_out = streams.Streams(buffer, heartbeat=60)
    deadline = asyncio.get_running_loop().time() + 60
    followers = [fan_out.follow(buffer.head, deadline) for _ in range(3 * streams.FAN_OUT_BATCH)]
    for stream in followers:
        await pull(stream)
    tasks = [asyncio.create_task(pull_events(stream, 2)) for stream in followers]
    await asyncio.sleep(0)  # each follower now sleeps in the stream
    buffer.append(MAC, "first")
    fan_out.wake()
    await asyncio.sleep(0)  # the fan-out has woken its first batch, not the others
    buffer.append(MAC, "second")
    fan_out.wake()
    for sent in await asyncio.gather(*tasks):
        assert [json.loads(frame["data"])["etag"] for frame in sent] == ["first", "second"]
    for stream in followers:
        await stream.aclose()
