"""Concurrent writers and readers against the real server: last write wins, no torn reads."""

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from quart_iot.documents import dump_document
from tests.harness import temp_files
from tests.server import TLS, Server, running_server

WRITERS = 8
PUTS = 50
READERS = 4

Document = dict[str, Any]


def _document(writer: int, seq: int) -> Document:
    # Sizes differ from one write to the next, so a torn or mixed read cannot look complete.
    padding = "x" * (500 + 131 * ((writer * PUTS + seq) % 97))
    return {"deviceName": f"writer {writer} #{seq}", "writer": writer, "seq": seq, "pad": padding}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("concurrency") / "configs"
    directory.mkdir()
    with running_server(directory) as server:
        yield server


def _client(server: Server) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=WRITERS + READERS)
    return httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits, verify=TLS)


async def _write_all(client: httpx.AsyncClient, mac: str, writer: int) -> list[int]:
    statuses = []
    for seq in range(PUTS):
        response = await client.put(f"/api/configs/{mac}", json={"content": _document(writer, seq)})
        statuses.append(response.status_code)
    return statuses


async def _read_until(client: httpx.AsyncClient, mac: str, done: asyncio.Event, reader: int) -> int:
    """Read (detail, device document, list) until the writers finish; every read must be whole."""
    reads = 0
    while not done.is_set() or reads == 0:
        kind = (reads + reader) % 3
        if kind == 0:
            response = await client.get(f"/api/configs/{mac}")
            assert response.status_code == 200
            content = response.json()["content"]
            assert content == _document(content["writer"], content["seq"])
        elif kind == 1:
            response = await client.get(f"/api/configs/{mac}.json")
            assert response.status_code == 200
            content = response.json()
            assert response.content == dump_document(_document(content["writer"], content["seq"]))
        else:
            response = await client.get("/api/configs")
            assert response.status_code == 200
            names = {c["mac_address"]: c["device_name"] for c in response.json()["configs"]}
            assert names[mac].startswith("writer ")  # never missing, never a torn summary
        reads += 1
    return reads


async def test_eight_writers_one_mac_while_four_readers_read(server: Server) -> None:
    mac = "0a-00-00-00-00-01"
    async with _client(server) as client:
        seeded = await client.put(f"/api/configs/{mac}", json={"content": _document(0, 0)})
        assert seeded.status_code == 200
        done = asyncio.Event()
        readers = [asyncio.create_task(_read_until(client, mac, done, r)) for r in range(READERS)]
        statuses = await asyncio.gather(*(_write_all(client, mac, w) for w in range(WRITERS)))
        done.set()
        reads = await asyncio.gather(*readers)
        final = (await client.get(f"/api/configs/{mac}")).json()["content"]
    assert statuses == [[200] * PUTS] * WRITERS
    assert all(count > 0 for count in reads)
    # Each writer is sequential, so the last rename of all is some writer's last write.
    assert final == _document(final["writer"], PUTS - 1)
    assert (server.directory / f"{mac}.json").read_bytes() == dump_document(final)
    assert temp_files(server.directory) == []


async def test_eight_writers_eight_macs_each_keeps_its_last_write(server: Server) -> None:
    macs = [f"0b-00-00-00-00-{w:02x}" for w in range(WRITERS)]
    async with _client(server) as client:
        statuses = await asyncio.gather(*(_write_all(client, macs[w], w) for w in range(WRITERS)))
        listed = (await client.get("/api/configs")).json()["configs"]
    assert statuses == [[200] * PUTS] * WRITERS
    for writer, mac in enumerate(macs):
        path: Path = server.directory / f"{mac}.json"
        assert path.read_bytes() == dump_document(_document(writer, PUTS - 1))
    names = {c["mac_address"]: c["device_name"] for c in listed}
    assert [names[mac] for mac in macs] == [f"writer {w} #{PUTS - 1}" for w in range(WRITERS)]
    assert temp_files(server.directory) == []


@pytest.mark.parametrize("attempt", range(20))
async def test_two_racing_creators_exactly_one_wins(server: Server, attempt: int) -> None:
    mac = f"0c-00-00-00-00-{attempt:02x}"
    # Two clients, so the two requests travel on two connections at the same time.
    async with _client(server) as first, _client(server) as second:
        responses = await asyncio.gather(
            *(
                client.put(
                    f"/api/configs/{mac}",
                    json={"content": _document(n, attempt), "allow_overwrite": False},
                )
                for n, client in enumerate((first, second))
            )
        )
    assert sorted(r.status_code for r in responses) == [200, 409]
    winner = next(n for n, r in enumerate(responses) if r.status_code == 200)
    loser = responses[1 - winner].json()
    assert loser["code"] == "RECORD_EXISTS"
    stored = (server.directory / f"{mac}.json").read_bytes()
    assert stored == dump_document(_document(winner, attempt))
    assert temp_files(server.directory) == []
