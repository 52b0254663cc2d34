import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from quart_iot.documents import Document, parse_document
from quart_iot.store import ConfigStore, DirectoryBackend
from quart_iot.store.directory import Signature
from quart_iot.store.directory.files import Directory
from quart_iot.store.directory.index import Index
from tests.conftest import MAC, OTHER_MAC, Client, write_config
from tests.server import TLS, running_server

OLD_NS = 1_600_000_000 * 10**9  # long ago: a file this old is not "racy"
THIRD_MAC = "0a-0b-0c-0d-0e-0f"
POLL_BOUND = 5.0  # the guarantee for in-place rewrites is 1 s; this only bounds the wait

# The outside tool: another process that changes the directory on command, one line each.
WRITER = """
import json, os, sys
directory = sys.argv[1]
for line in sys.stdin:
    op, mac, name = (line.split() + [""])[:3]
    path = os.path.join(directory, mac + ".json")
    document = json.dumps({"deviceName": name})
    if op == "create" or op == "rename":
        temp = os.path.join(directory, "incoming.tmp")
        with open(temp, "w") as file:
            file.write(document)
        os.rename(temp, path)
    elif op == "inplace":
        with open(path, "r+") as file:
            file.truncate()
            file.write(document)
    elif op == "delete":
        os.unlink(path)
    print("done", flush=True)
"""


class Writer:
    """A second process writing into the configs directory, one acknowledged change at a time."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process

    def __call__(self, op: str, mac: str, name: str = "") -> None:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(f"{op} {mac} {name}\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline() == "done\n"


@contextmanager
def writer_process(directory: Path) -> Iterator[Writer]:
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield Writer(process)
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(10)


@contextmanager
def lister(url: str) -> Iterator[None]:
    """Keeps listing in the background, so the cache sees the states between our checks."""
    stop = threading.Event()

    def run() -> None:
        with httpx.Client(base_url=url, timeout=10, verify=TLS) as http:
            while not stop.is_set():
                http.get("/api/configs")

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(15)


def listed(http: httpx.Client) -> dict[str, str | None]:
    body = http.get("/api/configs").json()
    assert body["count"] == len(body["configs"])
    return {item["mac_address"]: item["device_name"] for item in body["configs"]}


def eventually_listed(http: httpx.Client, expected: dict[str, str | None]) -> None:
    deadline = time.monotonic() + POLL_BOUND
    while (current := listed(http)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert current == expected


def test_outside_changes_are_seen_by_the_next_list(configs_dir: Path) -> None:
    steps: list[tuple[str, str, str, dict[str, str | None]]] = [
        ("create", MAC, "a1", {MAC: "a1"}),
        ("create", OTHER_MAC, "b1", {MAC: "a1", OTHER_MAC: "b1"}),
        ("rename", MAC, "a2", {MAC: "a2", OTHER_MAC: "b1"}),
        ("rename", MAC, "a3", {MAC: "a3", OTHER_MAC: "b1"}),  # ext4 gives a1's inode back
        ("delete", OTHER_MAC, "", {MAC: "a3"}),
        ("create", OTHER_MAC, "b2", {MAC: "a3", OTHER_MAC: "b2"}),
        ("rename", OTHER_MAC, "b3", {MAC: "a3", OTHER_MAC: "b3"}),
    ]
    with (
        running_server(configs_dir) as server,
        writer_process(configs_dir) as write,
        lister(server.url),
        httpx.Client(base_url=server.url, timeout=10, verify=TLS) as http,
    ):
        for op, mac, name, expected in steps:
            write(op, mac, name)
            assert listed(http) == expected, f"after {op} {mac} {name}"


def test_an_outside_in_place_rewrite_is_seen_within_the_sweep(configs_dir: Path) -> None:
    with (
        running_server(configs_dir) as server,
        writer_process(configs_dir) as write,
        lister(server.url),
        httpx.Client(base_url=server.url, timeout=10, verify=TLS) as http,
    ):
        write("create", MAC, "first")
        assert listed(http) == {MAC: "first"}
        for name in ("second", "third!", "fourth"):  # same size and not: both are caught
            write("inplace", MAC, name)
            eventually_listed(http, {MAC: name})
            assert http.get(f"/api/configs/{MAC}").json()["device_name"] == name


def test_two_servers_on_one_directory_see_each_others_writes_at_once(configs_dir: Path) -> None:
    with (
        running_server(configs_dir) as one,
        running_server(configs_dir) as two,
        httpx.Client(base_url=one.url, timeout=10, verify=TLS) as first,
        httpx.Client(base_url=two.url, timeout=10, verify=TLS) as second,
    ):
        assert listed(second) == {}
        for name in ("v1", "v2", "v3"):  # rewrites of one name: inodes come back
            put = first.put(f"/api/configs/{MAC}", json={"content": {"deviceName": name}})
            assert put.status_code == 200
            assert listed(second) == {MAC: name}
            assert second.get(f"/api/configs/{MAC}").json()["device_name"] == name
            device = second.get(f"/api/configs/{MAC}.json", headers={"If-None-Match": "x"})
            assert device.headers["ETag"] == put.headers["ETag"]
        assert second.put(f"/api/configs/{OTHER_MAC}", json={"content": {}}).status_code == 200
        assert listed(first) == {MAC: "v3", OTHER_MAC: None}
        assert "iot_config_files 2" in first.get("/metrics").text
        assert first.delete(f"/api/configs/{MAC}").status_code == 204
        assert listed(second) == {OTHER_MAC: None}
        assert second.get(f"/api/configs/{MAC}").status_code == 404


async def names(client: Client) -> dict[str, Any]:
    response = await client.get("/api/configs")
    body = await response.get_json()
    return {item["mac_address"]: item["device_name"] for item in body["configs"]}


def replace_by_rename(directory: Path, mac: str, content: Any) -> None:
    temp = directory / "incoming.tmp"
    temp.write_text(json.dumps(content), encoding="utf-8")
    os.rename(temp, directory / f"{mac}.json")


def coarse_timestamps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Signatures as a file system with coarse ticks gives them when two changes share one."""

    def of(cls: type[Signature], st: os.stat_result) -> Signature:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, 0)

    monkeypatch.setattr(Signature, "of", classmethod(of))


async def test_a_name_replaced_twice_is_seen_even_when_its_inode_comes_back(
    client: Client, configs_dir: Path
) -> None:
    path = write_config(configs_dir, MAC, {"deviceName": "v0"})
    os.utime(path, ns=(OLD_NS, OLD_NS))  # not racy: only its signature can tell a change
    assert await names(client) == {MAC: "v0"}
    replace_by_rename(configs_dir, MAC, {"deviceName": "v1"})
    replace_by_rename(configs_dir, MAC, {"deviceName": "v2"})
    assert await names(client) == {MAC: "v2"}


async def test_a_file_created_in_the_tick_of_the_last_scan_is_seen(
    client: Client, configs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    coarse_timestamps(monkeypatch)
    write_config(configs_dir, MAC, {"deviceName": "a"})
    tick = configs_dir.stat().st_mtime_ns
    assert await names(client) == {MAC: "a"}
    write_config(configs_dir, OTHER_MAC, {"deviceName": "b"})
    os.utime(configs_dir, ns=(tick, tick))  # the directory looks exactly as when last scanned
    assert await names(client) == {MAC: "a", OTHER_MAC: "b"}


async def test_an_in_place_rewrite_in_the_same_tick_is_seen(
    client: Client, configs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    coarse_timestamps(monkeypatch)
    path = write_config(configs_dir, MAC, {"deviceName": "one"})
    tick = path.stat().st_mtime_ns
    assert await names(client) == {MAC: "one"}
    path.write_text(json.dumps({"deviceName": "two"}), encoding="utf-8")  # same size
    os.utime(path, ns=(tick, tick))  # the file looks exactly as when it was read
    deadline = time.monotonic() + POLL_BOUND
    while await names(client) != {MAC: "two"} and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # time.sleep would block the app this test polls
    assert await names(client) == {MAC: "two"}


async def test_a_save_reads_no_other_file_and_the_list_and_gauge_stay_cheap(
    client: Client,
    store: ConfigStore,
    configs_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for index in range(50):
        path = write_config(configs_dir, f"00-00-00-00-00-{index:02x}", {"deviceName": "x"})
        os.utime(path, ns=(OLD_NS, OLD_NS))
    assert len(await names(client)) == 50
    read: list[str] = []
    original = Directory.read

    def counting(self: Directory, name: str) -> tuple[Signature, bytes]:
        read.append(name)
        return original(self, name)

    monkeypatch.setattr(Directory, "read", counting)
    for round_ in range(3):
        put = await client.put(f"/api/configs/{THIRD_MAC}", json={"content": {"n": round_}})
        assert put.status_code == 200
        assert len(await names(client)) == 51
        assert "iot_config_files 51" in (await (await client.get("/metrics")).get_data(True))
    assert set(read) <= {f"{THIRD_MAC}.json"}


async def test_get_parses_a_file_again_only_when_it_changed(
    client: Client, configs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(configs_dir, MAC, {"deviceName": "one"})
    os.utime(path, ns=(OLD_NS, OLD_NS))
    assert (await client.get(f"/api/configs/{MAC}")).status_code == 200
    parsed: list[bytes] = []

    def counting(data: bytes) -> Document:
        parsed.append(data)
        return parse_document(data)

    monkeypatch.setattr("quart_iot.store.directory.index.parse_document", counting)
    for _ in range(3):
        body = await (await client.get(f"/api/configs/{MAC}")).get_json()
        assert body["device_name"] == "one"
        assert body["content"] == {"deviceName": "one"}
    assert parsed == []
    replace_by_rename(configs_dir, MAC, {"deviceName": "two"})  # same size
    body = await (await client.get(f"/api/configs/{MAC}")).get_json()
    assert (body["device_name"], body["content"]) == ("two", {"deviceName": "two"})
    assert parsed


def test_a_sweep_of_a_vanished_directory_does_nothing(tmp_path: Path) -> None:
    backend = DirectoryBackend(tmp_path / "missing")
    backend.index.sweep()
    assert backend.index._entries == {}


def test_lists_queued_behind_one_check_share_it(
    configs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(configs_dir, MAC, {"deviceName": "a"})
    index = DirectoryBackend(configs_dir).index
    checks: list[int] = []
    check_directory = Index._check_directory

    def counting(self: Index) -> None:
        checks.append(time.monotonic_ns())
        check_directory(self)

    monkeypatch.setattr(Index, "_check_directory", counting)
    arrived = time.monotonic_ns()
    assert index.listing(arrived)[1] == 1
    assert index.listing(arrived)[1] == 1  # arrived before that check began: shares it
    assert len(checks) == 1
    write_config(configs_dir, OTHER_MAC, {"deviceName": "b"})
    assert index.listing(time.monotonic_ns())[1] == 2  # arrived after: checks again
    assert len(checks) == 2


async def test_gets_are_served_while_lists_wait_for_a_rescan(
    client: Client, configs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(configs_dir, MAC, {"deviceName": "a"})
    scanning, release = threading.Event(), threading.Event()
    check_directory = Index._check_directory

    def held(self: Index) -> None:  # a cold rescan of a huge directory, held open
        scanning.set()
        release.wait(30)
        check_directory(self)

    monkeypatch.setattr(Index, "_check_directory", held)
    lists = [asyncio.create_task(client.get("/api/configs"))]
    assert await asyncio.to_thread(scanning.wait, 10)
    for _ in range(8):  # one at a time, so that each would take a read thread of its own
        lists.append(asyncio.create_task(client.get("/api/configs")))
        await asyncio.sleep(0.02)
    try:
        get = asyncio.create_task(client.get(f"/api/configs/{MAC}.json"))
        done, _ = await asyncio.wait({get}, timeout=10)
        assert get in done, "the get waited for the rescan"
        assert (await get).status_code == 200
        assert not any(task.done() for task in lists)  # they did wait for it
    finally:
        release.set()
    assert [(await task).status_code for task in lists] == [200] * 9
