"""Two real servers (`python -m quart_iot`) on one PostgreSQL database, as two replicas: what
one acknowledges the other reads; conditional writers and creators on both lose nothing and
win once; a change on one wakes the other's long polls, and a stream resumes on the other;
a replica killed amid writes, and the database restarted under load, lose nothing acknowledged.

The kill shows what a replica keeps to itself: nothing. Every write is acknowledged after its
transaction committed, so a killed replica cannot take an acknowledged write with it
(atomicity and the commit's durability are the database's: a whole transaction or none, and a
commit survives the server's restart, shown by the restart below with synchronous_commit on).
A power cut's durability is the database's fsync, which the test cluster turns off.
"""

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.pg import Cluster
from tests.server import TLS, Server

MACS = [f"0d-00-00-00-00-{n:02x}" for n in range(8)]


def start(url: str, tmp_path: Path, **env: str) -> Server:
    server = Server(tmp_path, {"DATABASE_URL": url, "DB_TIMEOUT": "2", **env})
    server.start()
    return server


@pytest.fixture
def pair(pg_url: str, tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    """Two replicas on one database."""
    a = start(pg_url, tmp_path)
    try:
        b = start(pg_url, tmp_path)
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


async def put(http: httpx.AsyncClient, mac: str, content: Any, **headers: str) -> httpx.Response:
    return await http.put(f"/api/configs/{mac}", json={"content": content}, headers=headers)


async def test_replicas_read_each_others_writes_and_lose_no_update(
    pair: tuple[Server, Server],
) -> None:
    a, b = pair
    async with (
        httpx.AsyncClient(base_url=a.url, verify=TLS) as on_a,
        httpx.AsyncClient(base_url=b.url, verify=TLS) as on_b,
    ):
        # Read your writes: whatever one acknowledged, a request to the other that starts
        # after it shows it (GET, the device's document, the list).
        for n in range(5):
            saved = await put(on_a if n % 2 else on_b, MACS[0], {"n": n})
            other = on_b if n % 2 else on_a
            assert (await other.get(f"/api/configs/{MACS[0]}")).json()["content"] == {"n": n}
            device = await other.get(f"/api/configs/{MACS[0]}.json")
            assert device.headers["ETag"] == saved.headers["ETag"]
            assert (await other.get("/api/configs")).json()["count"] == 1

        # Increments with If-Match on both replicas at once: none is lost.
        async def increment(http: httpx.AsyncClient) -> int:
            refused = 0
            while True:
                current = await http.get(f"/api/configs/{MACS[1]}")
                if current.status_code == 200:
                    value, etag = current.json()["content"]["n"], current.headers["ETag"]
                    answer = await put(http, MACS[1], {"n": value + 1}, **{"If-Match": etag})
                else:
                    answer = await put(http, MACS[1], {"n": 1}, **{"If-None-Match": "*"})
                if answer.status_code == 200:
                    return refused
                assert answer.status_code == 412, answer.text
                refused += 1

        refusals = await asyncio.gather(*(increment(http) for http in (on_a, on_b) * 10))
        assert (await on_b.get(f"/api/configs/{MACS[1]}")).json()["content"] == {"n": 20}
        assert sum(refusals) > 0  # they did race

        # Creators on both at once: exactly one wins each device.
        creates = [
            http.put(f"/api/configs/{mac}", json={"content": {"by": i}, "allow_overwrite": False})
            for mac in MACS[2:6]
            for i, http in enumerate((on_a, on_b) * 3)
        ]
        statuses = [answer.status_code for answer in await asyncio.gather(*creates)]
        for index in range(4):
            assert sorted(statuses[index * 6 : index * 6 + 6]) == [200] + [409] * 5


async def test_a_change_on_one_replica_wakes_and_resumes_on_the_other(
    pair: tuple[Server, Server],
) -> None:
    a, b = pair
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=30, verify=TLS) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=30, verify=TLS) as on_b,
    ):
        etag = (await put(on_a, MACS[6], {"v": 1})).headers["ETag"]
        wait = {"If-None-Match": etag, "Prefer": "wait=20"}
        held = asyncio.create_task(on_b.get(f"/api/configs/{MACS[6]}.json", headers=wait))
        await asyncio.sleep(0.5)  # held on b (a late wake-up would still pass: it is no race)
        saved = await put(on_a, MACS[6], {"v": 2})
        woken = await asyncio.wait_for(held, 20)
        assert (woken.status_code, woken.headers["ETag"]) == (200, saved.headers["ETag"])

        async with on_a.stream("GET", "/api/configs/events") as stream:
            lines = stream.aiter_lines()
            assert await anext(lines) == ": connected"
            await put(on_b, MACS[7], {"v": 1})
            seen = await event(lines)
        missed = [(await put(on_a, mac, {"v": 3})).headers["ETag"] for mac in MACS[6:8]]
        headers = {"Last-Event-ID": seen["id"]}
        async with on_b.stream("GET", "/api/configs/events", headers=headers) as stream:
            lines = stream.aiter_lines()
            assert await anext(lines) == ": connected"
            resumed = [await event(lines), await event(lines)]
        assert [f'"{json.loads(e["data"])["etag"]}"' for e in resumed] == missed
        assert [int(e["id"].split("-")[1]) for e in resumed] == [
            int(seen["id"].split("-")[1]) + 1,
            int(seen["id"].split("-")[1]) + 2,
        ]


async def event(lines: Any) -> dict[str, str]:
    """The next event of a stream (comments skipped)."""
    frame: dict[str, str] = {}
    async with asyncio.timeout(20):
        async for line in lines:
            if not line:
                if "event" in frame:
                    return frame
                frame = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                frame[name] = value.strip()
    raise AssertionError("the stream ended")


class Writers:
    """Clients writing their own devices in turn, each over one replica, until stopped; what
    each replica acknowledged, and how the others answered."""

    def __init__(self, servers: list[Server], per_server: int = 3) -> None:
        self.targets = [(server, f"0e-00-00-00-{i:02x}-{j:02x}") for i, server in
                        enumerate(servers) for j in range(per_server)]  # fmt: skip
        self.acked: dict[str, int] = {}
        self.statuses: dict[int | str, int] = {}
        self.stopping = asyncio.Event()

    async def write(self, server: Server, mac: str) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=10, verify=TLS) as http:
            for seq in range(1, 1_000_000):
                if self.stopping.is_set():
                    return
                try:
                    answer = await put(http, mac, {"seq": seq, "pad": "x" * 2000})
                except httpx.TransportError:  # the replica is gone
                    self.statuses["gone"] = self.statuses.get("gone", 0) + 1
                    await asyncio.sleep(0.05)
                    continue
                self.statuses[answer.status_code] = self.statuses.get(answer.status_code, 0) + 1
                if answer.status_code == 200:
                    self.acked[mac] = seq
                else:
                    assert answer.json()["code"] == "STORAGE_UNAVAILABLE", answer.text
                    await asyncio.sleep(0.05)

    async def run_until(self, work: Any) -> None:
        tasks = [asyncio.create_task(self.write(s, mac)) for s, mac in self.targets]
        try:
            await work
        finally:
            self.stopping.set()
            await asyncio.gather(*tasks)

    async def check(self, server: Server) -> None:
        """Every acknowledged write is there (or a later one of the same writer)."""
        async with httpx.AsyncClient(base_url=server.url, timeout=10, verify=TLS) as http:
            for mac, seq in self.acked.items():
                stored = await http.get(f"/api/configs/{mac}")
                assert stored.status_code == 200, mac
                assert stored.json()["content"]["seq"] >= seq, mac


async def acked(condition: Callable[[], bool], seconds: float = 30) -> None:
    """Wait until `condition` on the writers' acknowledgements holds."""
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.05)


async def healthy(server: Server, seconds: float = 15) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=5, verify=TLS) as http:
        async with asyncio.timeout(seconds):
            while (await http.get("/api/health")).status_code != 200:
                await asyncio.sleep(0.1)


async def test_a_replica_killed_amid_writes_takes_no_acknowledged_write_with_it(
    pair: tuple[Server, Server],
) -> None:
    a, b = pair
    writers = Writers([a, b])

    async def kill_a() -> None:
        # Once every writer is under way (polled: a fixed second was too short on a busy
        # machine, and longer than needed on an idle one).
        await acked(lambda: all(mac in writers.acked for _, mac in writers.targets))
        a.kill()  # SIGKILL: mid-transaction, mid-answer
        on_b = {mac: writers.acked[mac] for server, mac in writers.targets if server is b}
        await acked(  # a's writers find it gone; b goes on alone
            lambda: (
                writers.statuses.get("gone", 0) > 0
                and all(writers.acked[mac] > seq for mac, seq in on_b.items())
            )
        )

    await writers.run_until(kill_a())
    assert writers.statuses.get("gone", 0) > 0  # a's writers lost their replica
    assert all(mac in writers.acked for _, mac in writers.targets)
    await writers.check(b)


async def test_a_database_restart_under_load_loses_nothing_and_needs_no_restart(
    pair: tuple[Server, Server], pg_cluster: Cluster
) -> None:
    a, b = pair
    pids = [a.process.pid, b.process.pid]  # type: ignore[union-attr]
    writers = Writers([a, b])

    async def restart() -> None:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(pg_cluster.stop)
        try:
            async with httpx.AsyncClient(base_url=a.url, timeout=10, verify=TLS) as http:
                down = await http.get("/api/health")
                assert (down.status_code, down.json()["storage"]) == (503, "unavailable")
                assert (await http.get("/api/health/live")).status_code == 200
                refused = await http.get(f"/api/configs/{MACS[0]}")
                assert (refused.status_code, refused.json()["code"]) == (
                    503,
                    "STORAGE_UNAVAILABLE",
                )
            await asyncio.sleep(1.0)
        finally:
            await asyncio.to_thread(pg_cluster.start)
        await asyncio.gather(healthy(a), healthy(b))  # by themselves, within 15 s
        written = dict(writers.acked)
        async with asyncio.timeout(15):  # and writes go on, on both
            while not all(writers.acked.get(mac, 0) > n for mac, n in written.items()):
                await asyncio.sleep(0.1)

    await writers.run_until(restart())
    assert writers.statuses.get(503, 0) > 0  # refused while it was down
    await writers.check(a)
    await writers.check(b)
    assert [a.process.pid, b.process.pid] == pids  # type: ignore[union-attr]
    assert a.process.poll() is None  # type: ignore[union-attr]
    assert b.process.poll() is None  # type: ignore[union-attr]


def test_a_database_schema_newer_than_the_code_stops_the_start_with_one_line(
    pg_url: str, tmp_path: Path
) -> None:
    async def newer() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute("INSERT INTO config_schema (version) VALUES (999)")
        finally:
            await conn.close()

    asyncio.run(newer())
    env = {**os.environ, "DATABASE_URL": pg_url, "PORT": "0"}
    env.pop("ESP32_CONFIGS_DIR", None)
    done = subprocess.run(
        [sys.executable, "-m", "quart_iot"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "the database schema is version 999, newer than this version" in lines[0]
