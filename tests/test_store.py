import json
import os
import socket
import time
from pathlib import Path

import pytest

from quart_iot.errors import InvalidMac, StorageUnavailable
from quart_iot.store import ConfigStore, DirectoryBackend, canonical_mac
from quart_iot.store.directory import STALE_TEMP_SECONDS
from tests.conftest import MAC, write_config


def temp_name(host: str, pid: int) -> str:
    return f".{MAC}.json.{host}-{pid}-0123abcd.tmp"


@pytest.mark.parametrize("raw", ["AA-BB-CC-DD-EE-FF", "aa-bb-cc-dd-ee-ff", "Aa-bB-cc-DD-ee-Ff"])
def test_canonical_mac_lowercases(raw: str) -> None:
    assert canonical_mac(raw) == MAC


@pytest.mark.parametrize(
    "raw",
    [
        "aa-bb-cc-dd-ee-ff\n",
        "aa-bb-cc-dd-ee-f",
        "aa-bb-cc-dd-ee-ff-",
        "\u0661\u0661-bb-cc-dd-ee-ff",
        "",
    ],
)
def test_canonical_mac_rejects(raw: str) -> None:
    with pytest.raises(InvalidMac):
        canonical_mac(raw)


def test_stale_temp_files_are_removed_at_start(configs_dir: Path) -> None:
    host = socket.gethostname()
    dead = configs_dir / temp_name(host, 2**22 + 12345)  # above pid_max: never alive
    own = configs_dir / temp_name(host, os.getpid())
    live = configs_dir / temp_name(host, 1)  # pid 1 is alive
    other_host_recent = configs_dir / temp_name("elsewhere", 1)
    other_host_old = configs_dir / temp_name("elsewhere.example", 2)
    for path in (dead, own, live, other_host_recent, other_host_old):
        path.write_text("{")
    old = time.time() - STALE_TEMP_SECONDS - 10
    os.utime(other_host_old, (old, old))
    write_config(configs_dir, MAC, {"keep": True})

    DirectoryBackend(configs_dir).directory.remove_stale_temps()

    remaining = {p.name for p in configs_dir.iterdir()}
    assert remaining == {live.name, other_host_recent.name, f"{MAC}.json"}


async def test_failed_rename_keeps_the_old_document_and_no_temp(
    configs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(configs_dir, MAC, {"v": "old"})
    store = ConfigStore(DirectoryBackend(configs_dir))

    def broken_rename(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", broken_rename)
    with pytest.raises(StorageUnavailable) as raised:
        await store.save(MAC, {"v": "new"})
    assert raised.value.reason == "the disk is full"
    assert json.loads((configs_dir / f"{MAC}.json").read_text()) == {"v": "old"}
    # The old document was kept in its history (.history) before the rename failed.
    names = {f"{MAC}.json", ".quart_iot.lock", ".history"}
    assert {p.name for p in configs_dir.iterdir()} <= names


async def test_failed_write_of_the_temp_file_leaves_nothing(
    configs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ConfigStore(DirectoryBackend(configs_dir))

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StorageUnavailable):
        await store.save(MAC, {"v": 1})
    assert list(configs_dir.iterdir()) == []


async def test_in_place_rewrite_is_seen_by_the_sweep(configs_dir: Path) -> None:
    path = write_config(configs_dir, MAC, {"deviceName": "before"})
    backend = DirectoryBackend(configs_dir)
    assert b'"before"' in await backend.list_json()
    with path.open("r+") as file:  # same inode, same directory mtime
        file.write(json.dumps({"deviceName": "afterX"}))
    backend.index.sweep()
    assert b'"afterX"' in await backend.list_json()


async def test_list_reports_storage_errors(tmp_path: Path) -> None:
    store = ConfigStore(DirectoryBackend(tmp_path / "missing"))
    with pytest.raises(StorageUnavailable):
        await store.list_json()
    assert await store.health() == ("unavailable", "the configs directory is missing")
