"""Issue 9: limits that hold end to end (sizes, the write lock, the cache, faults, the logs)."""

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import quart_iot.store.directory.index
import quart_iot.store.directory.sweeper
from bench.storms import maximal_body
from quart_iot.documents import MAX_CONTAINERS, MAX_VALUES, dump_document
from quart_iot.settings import Settings
from quart_iot.store import ConfigStore, DirectoryBackend, StoredConfig, Written
from quart_iot.store.directory import LOCK_NAME, STALE_TEMP_SECONDS, Signature
from quart_iot.store.directory.index import Entry
from tests.conftest import MAC, OTHER_MAC, Client, write_config
from tests.harness import temp_files

LIMIT = 1024 * 1024


def nested_body(limit: int = LIMIT) -> bytes:
    """A body just under the limit, all nested arrays: indenting it would make it 65x larger."""
    chunk = "[" * 60 + "]" * 60
    head, tail = '{"content":{"a":[', "]}}"
    count = (limit - len(head) - len(tail)) // (len(chunk) + 1)
    return (head + ",".join([chunk] * count) + tail).encode()


async def test_a_body_that_could_not_be_read_back_is_refused_not_stored(client: Client) -> None:
    put = await put_raw(client, MAC, nested_body())  # 520,000 arrays
    assert put.status_code == 400
    error = await put.get_json()
    assert error["code"] == "VALIDATION_FAILED"
    assert f"more than {MAX_CONTAINERS} objects and arrays" in error["error"]
    assert (await client.get(f"/api/configs/{MAC}")).status_code == 404


@pytest.mark.parametrize(("count", "status"), [(MAX_VALUES - 3, 200), (MAX_VALUES - 2, 400)])
async def test_a_body_holds_at_most_max_values_values(
    client: Client, count: int, status: int
) -> None:
    numbers = b",".join([b"7"] * count)  # with the body, content and the list: count + 3 values
    body = b'{"content":{"n":[' + numbers + b"]}}"
    put = await put_raw(client, MAC, body)
    assert put.status_code == status
    if status == 400:
        assert f"more than {MAX_VALUES} values" in (await put.get_json())["error"]


async def test_brackets_inside_strings_are_not_containers(client: Client) -> None:
    content = {"pattern": "[{" * 20_000}
    assert (await client.put(f"/api/configs/{MAC}", json={"content": content})).status_code == 200
    assert (await (await client.get(f"/api/configs/{MAC}")).get_json())["content"] == content


async def put_raw(client: Client, mac: str, body: bytes) -> Any:
    headers = {"Content-Type": "application/json"}
    return await client.put(f"/api/configs/{mac}", data=body, headers=headers)


async def test_a_maximal_put_reads_back_byte_for_byte(client: Client) -> None:
    body = maximal_body()
    put = await put_raw(client, MAC, body)
    assert put.status_code == 200
    sent = json.loads(body)["content"]
    get = await client.get(f"/api/configs/{MAC}")
    assert get.status_code == 200
    assert (await get.get_json())["content"] == sent
    device = await client.get(f"/api/configs/{MAC}.json")
    assert device.status_code == 200
    assert await device.get_data() == dump_document(sent)  # the bytes every store keeps
    assert json.loads(await device.get_data()) == sent
    listed = await (await client.get("/api/configs")).get_json()
    assert [item["mac_address"] for item in listed["configs"]] == [MAC]


async def test_a_stored_form_over_the_limit_is_413_before_any_disk_io(client: Client) -> None:
    # "1E15" is 4 bytes in the body and "1000000000000000.0" (18) once stored.
    body = b'{"content":{"a":[' + b",".join([b"1E15"] * 90_000) + b"]}}"
    assert len(body) < LIMIT
    put = await put_raw(client, MAC, body)
    assert put.status_code == 413
    error = await put.get_json()
    assert error["code"] == "PAYLOAD_TOO_LARGE"
    assert error["details"]["limit"] == LIMIT
    assert error["details"]["stored_size"] > LIMIT
    assert (await client.get(f"/api/configs/{MAC}")).status_code == 404


async def test_a_file_over_the_limit_is_refused_on_read(client: Client, configs_dir: Path) -> None:
    (configs_dir / f"{MAC}.json").write_text(json.dumps({"a": "x" * LIMIT}))
    get = await client.get(f"/api/configs/{MAC}")
    assert get.status_code == 422
    assert (await get.get_json())["code"] == "RECORD_UNREADABLE"


@contextlib.contextmanager
def held_lock(path: Path) -> Iterator[int]:
    """The write lock, held by someone else (another process, or a hostile user)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(lock_timeout=0.5)


async def test_a_held_lock_bounds_the_wait_and_health_says_writes_are_blocked(
    client: Client, configs_dir: Path
) -> None:
    write_config(configs_dir, MAC, {"v": "old"})
    with held_lock(configs_dir / LOCK_NAME):
        put = await asyncio.wait_for(client.put(f"/api/configs/{MAC}", json={"content": {}}), 10)
        assert put.status_code == 503
        assert (await put.get_json())["code"] == "WRITES_BLOCKED"
        delete = await asyncio.wait_for(client.delete(f"/api/configs/{MAC}"), 10)
        assert (await delete.get_json())["code"] == "WRITES_BLOCKED"
        health = await client.get("/api/health")
        assert health.status_code == 200  # devices can still read their configs
        assert (await health.get_json())["storage"] == "writes-blocked"
        assert b"iot_config_writes_blocked 1" in await (await client.get("/metrics")).get_data()
        assert (await client.get(f"/api/configs/{MAC}")).status_code == 200
    assert json.loads((configs_dir / f"{MAC}.json").read_text()) == {"v": "old"}
    assert temp_files(configs_dir) == []
    assert (await (await client.get("/api/health")).get_json())["storage"] == "read-write"
    assert b"iot_config_writes_blocked 0" in await (await client.get("/metrics")).get_data()
    assert (await client.put(f"/api/configs/{MAC}", json={"content": {}})).status_code == 200


async def test_the_lock_file_only_its_owner_may_open(client: Client, configs_dir: Path) -> None:
    lock = configs_dir / LOCK_NAME
    lock.touch(mode=0o644)  # as an older version left it
    lock.chmod(0o644)
    assert (await client.put(f"/api/configs/{MAC}", json={"content": {}})).status_code == 200
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    lock.unlink()
    assert (await client.put(f"/api/configs/{MAC}", json={"content": {}})).status_code == 200
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600


async def test_a_write_released_from_a_replaced_lock_waits_for_the_new_one(
    client: Client, configs_dir: Path
) -> None:
    lock = configs_dir / LOCK_NAME
    first = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(first, fcntl.LOCK_EX)
    waiting = asyncio.create_task(client.put(f"/api/configs/{MAC}", json={"content": {}}))
    await asyncio.sleep(0.1)  # the PUT waits on the file it opened
    lock.unlink()
    with held_lock(lock):  # another writer locks the file now at that name...
        os.close(first)  # ...and the old one is released
        done, _ = await asyncio.wait({waiting}, timeout=0.25)
        assert not done, "the write went ahead on an orphaned lock file"
        assert not (configs_dir / f"{MAC}.json").exists()
    assert (await waiting).status_code == 200


def _is_dir(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)


async def test_a_slow_delete_never_hides_a_document_saved_and_seen_after_it(
    store: ConfigStore,
    directory_backend: DirectoryBackend,
    configs_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What seconds later would show:
    monkeypatch.setattr(quart_iot.store.directory.index, "RACY_NS", 0)
    write_config(configs_dir, MAC, {"v": "old"})
    assert MAC.encode() in await store.list_json()
    gate, real_fsync = threading.Event(), os.fsync
    slow_once = [True]

    def slow_fsync(fd: int) -> None:
        if _is_dir(fd) and slow_once.pop() if slow_once else False:
            gate.wait(10)  # the delete's directory fsync, on a slow mount
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    deleting = asyncio.create_task(store.delete(MAC))
    while (configs_dir / f"{MAC}.json").exists():
        await asyncio.sleep(0.01)
    await store.save(MAC, {"v": "new"})  # another writer re-creates it
    assert MAC.encode() in await store.list_json()  # and a list sees it
    gate.set()
    await deleting
    assert MAC.encode() in await store.list_json()
    directory_backend.index.sweep()
    assert MAC.encode() in await store.list_json()
    assert (await store.get(MAC)).content == {"v": "new"}


@pytest.mark.parametrize("listed_between", [False, True])
async def test_a_read_older_than_a_delete_cannot_bring_the_name_back(
    store: ConfigStore,
    directory_backend: DirectoryBackend,
    configs_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    listed_between: bool,
) -> None:
    monkeypatch.setattr(quart_iot.store.directory.index, "RACY_NS", 0)
    path = write_config(configs_dir, MAC, {"v": 1})
    assert MAC.encode() in await store.list_json()
    began = time.monotonic_ns()  # a read that began before the delete...
    seen = StoredConfig(MAC, path.read_bytes(), b'{"mac_address":"%s"}' % MAC.encode(), "x")
    signature = Signature.of(path.stat())
    await store.delete(MAC)
    if listed_between:
        assert MAC.encode() not in await store.list_json()
    entry = Entry.of(seen, signature, began, False)
    directory_backend.index.remember(path.name, entry)  # ...ends after
    assert MAC.encode() not in await store.list_json()


async def test_a_failed_directory_fsync_tells_the_truth(
    client: Client,
    store: ConfigStore,
    directory_backend: DirectoryBackend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    notified: list[Written] = []
    store.write_listeners.append(notified.append)
    directory_backend.retention.max_versions = 0  # history off; on: see tests/test_history.py
    real_fsync = os.fsync

    def failing_dir_fsync(fd: int) -> None:
        if _is_dir(fd):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_dir_fsync)
    put = await client.put(f"/api/configs/{MAC}", json={"content": {"v": "new"}})
    assert put.status_code == 503
    error = await put.get_json()
    assert error["code"] == "WRITE_NOT_CONFIRMED"
    assert "is visible" in error["error"]
    assert error["details"]["change"] == "saved"
    assert [(w.applied, w.code) for w in notified] == [(True, "WRITE_NOT_CONFIRMED")]  # visible
    get = await client.get(f"/api/configs/{MAC}")
    assert (await get.get_json())["content"] == {"v": "new"}
    assert error["details"]["etag"] == get.headers["ETag"].strip('"')
    health = await client.get("/api/health")
    assert health.status_code == 503
    assert "synced" in (await health.get_json())["reason"]
    delete = await client.delete(f"/api/configs/{MAC}")
    assert (await delete.get_json())["details"] == {"change": "deleted", "etag": None}
    assert (await client.get(f"/api/configs/{MAC}")).status_code == 404
    monkeypatch.undo()
    assert (await client.get("/api/health")).status_code == 200


async def test_put_over_a_directory_of_that_name_is_422_and_health_stays_up(
    client: Client, configs_dir: Path
) -> None:
    (configs_dir / f"{MAC}.json").mkdir()
    put = await client.put(f"/api/configs/{MAC}", json={"content": {}})
    assert put.status_code == 422
    error = await put.get_json()
    assert error["code"] == "RECORD_UNREADABLE"
    assert "directory" in error["error"]
    assert (await client.get("/api/health")).status_code == 200
    assert temp_files(configs_dir) == []


def _temp(configs_dir: Path, host: str, pid: int, age: float) -> Path:
    path = configs_dir / f".{MAC}.json.{host}-{pid}-0123abcd.tmp"
    path.write_text("{")
    os.utime(path, (time.time() - age, time.time() - age))
    return path


async def test_the_sweep_removes_old_temp_files_of_other_hosts_while_running(
    app: Any, configs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quart_iot.store.directory.sweeper, "TEMP_SWEEP_INTERVAL", 0)
    old = _temp(configs_dir, "pod-gone-7f9c", 1, STALE_TEMP_SECONDS + 10)
    recent = _temp(configs_dir, "pod-alive-1a2b", 1, 1)
    for _ in range(100):
        if not old.exists():
            break
        await asyncio.sleep(0.05)
    assert not old.exists()
    assert recent.exists()


async def test_the_sweep_never_takes_a_live_writers_temp_file(configs_dir: Path) -> None:
    directory = DirectoryBackend(configs_dir).directory
    live = _temp(configs_dir, socket.gethostname(), os.getpid(), STALE_TEMP_SECONDS + 10)
    directory.writing.add(live.name)
    directory.remove_stale_temps()
    assert live.exists()
    directory.writing.discard(live.name)
    directory.remove_stale_temps()
    assert not live.exists()


async def test_an_outage_is_logged_when_it_starts_and_ends_not_per_request(
    client: Client, configs_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_config(configs_dir, OTHER_MAC, {})
    moved = configs_dir.with_name("moved")
    configs_dir.rename(moved)
    with caplog.at_level(logging.INFO, logger="quart_iot.store"):
        for _ in range(20):
            assert (await client.get("/api/configs")).status_code == 503
            assert (await client.get(f"/api/configs/{MAC}")).status_code == 503
            assert (
                await client.put(f"/api/configs/{MAC}", json={"content": {}})
            ).status_code == 503
            assert (await client.get("/api/health")).status_code == 503
        during = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        moved.rename(configs_dir)
        assert (await client.get("/api/configs")).status_code == 200
        assert (await client.put(f"/api/configs/{MAC}", json={"content": {}})).status_code == 200
    after = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(during) == 2, during  # reads fail; writes fail
    assert "reads fail" in during[0]
    assert any("reads work again" in line for line in after)
    assert any("writes work again" in line for line in after)
