"""Long polls and the event stream, against the real server."""

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from quart_iot.waiting import preferred_wait
from tests.conftest import MAC, OTHER_MAC
from tests.server import TLS, Server, running_server

WAIT_ENV = {"MAX_WAIT_SECONDS": "30", "EVENTS_HEARTBEAT_SECONDS": "0.5"}
Event = dict[str, str]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("configs"), **WAIT_ENV) as server:
        yield server


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=40, verify=TLS) as http:
        yield http


def mac_for(test: str) -> str:
    """A device of its own for each test: the module's server is shared."""
    digest = abs(hash(test)) % (1 << 48)
    return "-".join(f"{(digest >> shift) & 0xFF:02x}" for shift in range(40, -8, -8))


async def put(http: httpx.AsyncClient, mac: str, content: dict[str, Any]) -> str:
    response = await http.put(f"/api/configs/{mac}", json={"content": content})
    assert response.status_code == 200, response.text
    return response.headers["ETag"]


def long_poll(
    http: httpx.AsyncClient, mac: str, etag: str, wait: str = "30"
) -> "asyncio.Task[httpx.Response]":
    headers = {"If-None-Match": etag, "Prefer": f"wait={wait}"}
    return asyncio.create_task(http.get(f"/api/configs/{mac}.json", headers=headers))


async def held(http: httpx.AsyncClient, count: int, kind: str = "long_poll") -> None:
    """Until this many requests of this kind are held by the server (its gauge says so)."""
    async with asyncio.timeout(20):
        while True:
            text = (await http.get("/metrics")).text
            for line in text.splitlines():
                name, _, value = line.rpartition(" ")
                if name == f'iot_waiting_requests{{kind="{kind}"}}' and float(value) >= count:
                    return
            await asyncio.sleep(0.02)


async def test_a_long_poll_answers_at_once_when_the_document_differs(
    http: httpx.AsyncClient,
) -> None:
    mac = mac_for("at once")
    etag = await put(http, mac, {"v": 1})
    stale = await long_poll(http, mac, '"an-older-etag"')
    assert stale.status_code == 200
    assert stale.json() == {"v": 1}
    assert stale.headers["ETag"] == etag
    assert "Preference-Applied" not in stale.headers
    gone = await long_poll(http, mac_for("never saved"), etag)
    assert gone.status_code == 404
    assert gone.json()["code"] == "RECORD_NOT_FOUND"
    plain = await http.get(f"/api/configs/{mac}.json", headers={"If-None-Match": etag})
    assert plain.status_code == 304
    assert "Preference-Applied" not in plain.headers


async def test_a_long_poll_is_answered_by_a_put_with_the_new_document(
    http: httpx.AsyncClient,
) -> None:
    mac = mac_for("put")
    etag = await put(http, mac, {"v": 1})
    poll = long_poll(http, mac, etag, wait="999")
    await held(http, 1)
    new_etag = await put(http, mac, {"v": 2})
    answer = await poll
    assert answer.status_code == 200
    assert answer.json() == {"v": 2}
    assert answer.headers["ETag"] == new_etag
    assert answer.headers["Preference-Applied"] == "wait=30"  # MAX_WAIT_SECONDS caps it


async def test_a_long_poll_is_answered_404_by_a_delete(http: httpx.AsyncClient) -> None:
    mac = mac_for("delete")
    etag = await put(http, mac, {"v": 1})
    poll = long_poll(http, mac, etag)
    await held(http, 1)
    assert (await http.delete(f"/api/configs/{mac}")).status_code == 204
    answer = await poll
    assert answer.status_code == 404
    assert answer.json()["code"] == "RECORD_NOT_FOUND"
    assert answer.headers["Preference-Applied"] == "wait=30"


async def test_a_long_poll_times_out_with_304(http: httpx.AsyncClient) -> None:
    mac = mac_for("time out")
    etag = await put(http, mac, {"v": 1})
    poll = long_poll(http, mac, etag, wait="1")
    await held(http, 1)
    await put(http, mac_for("another device"), {"v": 1})  # wakes no one here
    answer = await poll
    assert answer.status_code == 304
    assert answer.headers["ETag"] == etag
    assert answer.headers["Preference-Applied"] == "wait=1"


async def test_a_long_poll_is_answered_by_a_file_rewritten_by_hand(
    http: httpx.AsyncClient, server: Server
) -> None:
    mac = mac_for("by hand")
    etag = await put(http, mac, {"v": 1})
    poll = long_poll(http, mac, etag)
    await held(http, 1)
    temp = server.directory / "by-hand.partial"
    temp.write_text(json.dumps({"v": "edited"}))
    os.replace(temp, server.directory / f"{mac}.json")
    answer = await poll
    assert answer.status_code == 200
    assert answer.json() == {"v": "edited"}


async def test_a_long_poll_is_answered_by_a_write_of_another_process(
    http: httpx.AsyncClient, server: Server
) -> None:
    mac = mac_for("other process")
    etag = await put(http, mac, {"v": 1})
    poll = long_poll(http, mac, etag)
    await held(http, 1)
    with running_server(server.directory) as other:
        async with httpx.AsyncClient(base_url=other.url, timeout=10, verify=TLS) as other_http:
            new_etag = await put(other_http, mac, {"v": "from the other one"})
        answer = await poll
    assert answer.status_code == 200
    assert answer.headers["ETag"] == new_etag


@asynccontextmanager
async def events(
    http: httpx.AsyncClient, last_event_id: str | None = None
) -> AsyncIterator[AsyncIterator[Event]]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    async with http.stream("GET", "/api/configs/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        yield parse_events(response.aiter_lines())


async def parse_events(lines: AsyncIterator[str]) -> AsyncIterator[Event]:
    """Each event's fields; a comment alone is `{"comment": text}`."""
    event: Event = {}
    async for line in lines:
        if not line:
            if event:
                yield event
            event = {}
        elif line.startswith(":"):
            event["comment"] = line[1:].strip()
        else:
            name, _, value = line.partition(":")
            event[name] = value.removeprefix(" ")


async def next_event(stream: AsyncIterator[Event], skip_comments: bool = True) -> Event:
    async with asyncio.timeout(10):
        while True:
            event = await anext(stream)
            if not (skip_comments and set(event) == {"comment"}):
                return event


async def test_the_stream_tells_each_save_and_delete(http: httpx.AsyncClient) -> None:
    mac = mac_for("stream")
    async with events(http) as stream:
        assert await next_event(stream, skip_comments=False) == {"comment": "connected"}
        etag = await put(http, mac, {"v": 1})
        assert (await http.delete(f"/api/configs/{mac}")).status_code == 204
        saved, deleted = await next_event(stream), await next_event(stream)
    assert saved["event"] == "saved"
    assert json.loads(saved["data"]) == {"mac_address": mac, "etag": etag.strip('"')}
    assert deleted["event"] == "deleted"
    assert json.loads(deleted["data"]) == {"mac_address": mac, "etag": None}
    assert int(deleted["id"].split("-")[1]) == int(saved["id"].split("-")[1]) + 1


async def test_the_stream_resumes_after_last_event_id_or_says_reset(
    http: httpx.AsyncClient,
) -> None:
    mac = mac_for("resume")
    async with events(http) as stream:
        await next_event(stream, skip_comments=False)
        await put(http, mac, {"v": 1})
        first = await next_event(stream)
    await put(http, mac, {"v": 2})  # while no stream is open
    etag = await put(http, mac, {"v": 3})
    async with events(http, first["id"]) as stream:
        missed = [await next_event(stream) for _ in range(2)]
    assert [json.loads(event["data"])["mac_address"] for event in missed] == [mac, mac]
    assert json.loads(missed[1]["data"])["etag"] == etag.strip('"')
    for unknown in ("0000-1", "not an id", first["id"].split("-")[0] + "-99999999"):
        async with events(http, unknown) as stream:
            reset = await next_event(stream)
        assert reset["event"] == "reset"
        assert reset["id"].startswith(first["id"].split("-")[0])  # a point to resume from


async def test_the_stream_sends_heartbeats(http: httpx.AsyncClient) -> None:
    async with events(http) as stream:
        assert await next_event(stream, skip_comments=False) == {"comment": "connected"}
        assert await next_event(stream, skip_comments=False) == {"comment": "keep-alive"}


async def test_sigterm_answers_the_waiting_requests_at_once(tmp_path: Path) -> None:
    env = {**WAIT_ENV, "SHUTDOWN_TIMEOUT": "60", "MAX_WAIT_SECONDS": "60"}
    with running_server(tmp_path, **env) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=40, verify=TLS) as http:
            etag = await put(http, MAC, {"v": 1})
            polls = [long_poll(http, MAC, etag, wait="60") for _ in range(3)]
            async with events(http) as stream:
                await held(http, 3)
                await held(http, 1, kind="events")
                assert server.process is not None
                server.process.terminate()
                async with asyncio.timeout(20):  # the stream ends rather than waiting 60 s
                    rest = [event async for event in stream]
            answers = await asyncio.gather(*polls)
            assert await asyncio.to_thread(server.process.wait, 20) == 0
    assert all(set(event) == {"comment"} for event in rest)
    assert [answer.status_code for answer in answers] == [304, 304, 304]


async def test_two_workers_wake_each_others_waiters_and_leave_nothing_in_tmp(
    tmp_path: Path,
) -> None:
    temp, directory = tmp_path / "tmp", tmp_path / "configs"  # the peers' sockets: abstract
    temp.mkdir()
    directory.mkdir()
    with running_server(directory, **WAIT_ENV, WORKERS="2", TMPDIR=str(temp)) as server:
        assert server.process is not None
        pgrep = ["pgrep", "-P", str(server.process.pid)]
        found = await asyncio.to_thread(subprocess.run, pgrep, capture_output=True, text=True)
        workers = found.stdout.split()
        assert len(workers) == 2
        async with httpx.AsyncClient(base_url=server.url, timeout=40, verify=TLS) as http:
            etags = {mac: await put(http, mac, {"v": 1}) for mac in (MAC, OTHER_MAC)}
            polls = [long_poll(http, mac, etag) for mac, etag in etags.items() for _ in range(4)]
            await asyncio.sleep(1)  # both workers have theirs (no assertion on how soon)
            new = {mac: await put(http, mac, {"v": 2}) for mac in (MAC, OTHER_MAC)}
            answers = await asyncio.gather(*polls)
            assert list(temp.iterdir()) == []
    assert [answer.status_code for answer in answers] == [200] * 8
    assert [answer.headers["ETag"] for answer in answers] == [new[MAC]] * 4 + [new[OTHER_MAC]] * 4
    assert all(answer.headers["Preference-Applied"] == "wait=30" for answer in answers)


@pytest.mark.parametrize(
    ("values", "seconds"),
    [
        (["wait=10"], 10),
        (["respond-async, wait=5"], 5),
        (["handling=lenient", 'Wait="7"'], 7),
        (["wait=10;foo=bar"], 10),
        (["wait=soon"], 0),
        (["wait=1.5"], 0),
        (["wait=-1"], 0),
        (["wait=\u0661"], 0),  # a non-ASCII digit
        ([], 0),
    ],
)
def test_prefer_wait_is_read_as_rfc_7240_says(values: list[str], seconds: int) -> None:
    assert preferred_wait(values) == seconds


async def test_past_max_waiters_a_wait_is_refused_503_and_a_plain_read_still_served(
    tmp_path: Path,
) -> None:
    # Each held request costs about 35 KB (PERFORMANCE.md): MAX_WAITERS bounds how many a
    # client can make the process hold, long polls and event streams together.
    with running_server(tmp_path, **WAIT_ENV, MAX_WAITERS="2") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=40, verify=TLS) as http:
            mac = mac_for("max waiters")
            etag = await put(http, mac, {"v": 1})
            first = long_poll(http, mac, etag)
            async with events(http) as stream:
                await next_event(stream, skip_comments=False)
                await held(http, 1)
                await held(http, 1, "events")
                refused = await asyncio.wait_for(long_poll(http, mac, etag), 10)
                assert refused.status_code == 503
                assert refused.json()["code"] == "TOO_MANY_WAITERS"
                assert int(refused.headers["Retry-After"]) >= 1
                stale = await asyncio.wait_for(long_poll(http, mac, '"older"'), 10)
                assert stale.status_code == 200  # it would not have waited: answered at once
                another = await asyncio.wait_for(http.get("/api/configs/events"), 10)
                assert another.status_code == 503
                assert another.json()["code"] == "TOO_MANY_WAITERS"
                plain = await http.get(f"/api/configs/{mac}.json", headers={"If-None-Match": etag})
                assert plain.status_code == 304  # a read that does not wait is never refused
            second = long_poll(http, mac, etag)  # the stream ended: room for one again
            await held(http, 2)
            await put(http, mac, {"v": 2})
            assert [(await poll).status_code for poll in (first, second)] == [200, 200]
