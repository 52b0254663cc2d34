"""Durability: data fsynced before the rename makes it visible, the directory fsynced after."""

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MAC, Client, write_config

Event = tuple[str, str, str]  # (call, what the descriptor or first path is, second path)


def _target(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    """Every write, fsync, rename, link and unlink, with the files they act on, in order."""
    recorded: list[Event] = []

    def spy(name: str, describe: Callable[..., Event]) -> None:
        real = getattr(os, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            recorded.append(describe(*args))
            return real(*args, **kwargs)

        monkeypatch.setattr(os, name, wrapper)

    def fsync(fd: int) -> Event:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        return ("fsync", kind, _target(fd))

    spy("write", lambda fd, *_: ("write", _target(fd), ""))
    spy("fsync", fsync)
    spy("fdatasync", fsync)
    for name in ("rename", "replace", "link"):
        spy(name, lambda src, dst, *_, call=name: (call, str(src), str(dst)))
    spy("unlink", lambda path, *_: ("unlink", str(path), ""))
    return recorded


def _index(events: list[Event], wanted: Callable[[Event], bool]) -> int:
    matches = [i for i, event in enumerate(events) if wanted(event)]
    assert len(matches) == 1, events
    return matches[0]


def _assert_durable_install(events: list[Event], call: str, target: Path) -> None:
    """temp written, temp fsynced, `call` puts it at target, then the directory is fsynced."""
    directory = os.path.realpath(target.parent)
    install = _index(events, lambda e: e[0] == call and e[2] == str(target))
    temp = events[install][1]
    assert Path(temp).parent == target.parent
    assert Path(temp).name.startswith(f".{target.name}.")
    assert Path(temp).name.endswith(".tmp")
    real_temp = os.path.join(directory, Path(temp).name)
    writes = [i for i, e in enumerate(events) if e == ("write", real_temp, "")]
    fsyncs = [i for i, e in enumerate(events) if e == ("fsync", "file", real_temp)]
    assert writes, events
    assert fsyncs, events
    assert max(writes) < min(fsyncs) < install
    assert any(e == ("fsync", "dir", directory) for e in events[install + 1 :]), events


async def test_save_fsyncs_the_temp_file_before_rename_and_the_directory_after(
    client: Client, configs_dir: Path, events: list[Event]
) -> None:
    write_config(configs_dir, MAC, {"deviceName": "old"})
    response = await client.put(f"/api/configs/{MAC}", json={"content": {"deviceName": "new"}})
    assert response.status_code == 200
    target = configs_dir / f"{MAC}.json"
    _assert_durable_install(events, "rename", target)
    assert b'"new"' in target.read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


async def test_create_only_save_fsyncs_before_link_and_the_directory_after(
    client: Client, configs_dir: Path, events: list[Event]
) -> None:
    body = {"content": {"deviceName": "first"}, "allow_overwrite": False}
    response = await client.put(f"/api/configs/{MAC}", json=body)
    assert response.status_code == 200
    _assert_durable_install(events, "link", configs_dir / f"{MAC}.json")
    assert [p.name for p in configs_dir.iterdir() if p.name.endswith(".tmp")] == []


async def test_delete_fsyncs_the_directory_after_unlink(
    client: Client, configs_dir: Path, events: list[Event]
) -> None:
    target = write_config(configs_dir, MAC, {"deviceName": "gone"})
    response = await client.delete(f"/api/configs/{MAC}")
    assert response.status_code == 204
    removed = _index(events, lambda e: e == ("unlink", str(target), ""))
    directory = os.path.realpath(configs_dir)
    assert ("fsync", "dir", directory) in events[removed + 1 :]


def _history_dir(configs_dir: Path) -> str:
    return os.path.realpath(configs_dir / ".history" / MAC)


async def test_a_replaced_document_is_kept_durably_before_the_rename(
    client: Client, configs_dir: Path, events: list[Event]
) -> None:
    write_config(configs_dir, MAC, {"deviceName": "from before history"})
    response = await client.put(f"/api/configs/{MAC}", json={"content": {"deviceName": "new"}})
    assert response.status_code == 200
    links = [i for i, e in enumerate(events) if e[0] == "link" and e[1] == f"{MAC}.json"]
    assert len(links) == 2, events  # the old document before the rename, the new one after
    kept, recorded = links
    install = _index(events, lambda e: e[0] == "rename" and e[2].endswith(f"/{MAC}.json"))
    shelf_syncs = [
        i for i, e in enumerate(events) if e == ("fsync", "dir", _history_dir(configs_dir))
    ]
    assert kept < min(shelf_syncs) < install < recorded < max(shelf_syncs)


async def test_a_deleted_document_is_kept_durably_before_the_unlink(
    client: Client, configs_dir: Path, events: list[Event]
) -> None:
    write_config(configs_dir, MAC, {"deviceName": "old"})
    assert (await client.delete(f"/api/configs/{MAC}")).status_code == 204
    held = _index(events, lambda e: e[0] == "link" and e[1] == f"{MAC}.json")
    shelf = [i for i, e in enumerate(events) if e == ("fsync", "dir", _history_dir(configs_dir))]
    removed = _index(events, lambda e: e[0] == "unlink" and e[1].endswith(f"/{MAC}.json"))
    named = _index(events, lambda e: e[0] == "rename" and e[2].endswith(".deleted.json"))
    configs = os.path.realpath(configs_dir)
    synced = max(i for i, e in enumerate(events) if e == ("fsync", "dir", configs))
    # Held (where no reader lists it) and synced, unlinked, then named `deleted`, then both
    # directories synced before the answer.
    assert len(shelf) == 2, events
    assert events[held][2].endswith(".deleting")
    assert held < shelf[0] < removed < named < shelf[1] < synced


async def test_a_new_version_is_synced_before_the_put_answers(
    client: Client, configs_dir: Path, events: list[Event]
) -> None:
    for name in ("first", "second"):
        events.clear()
        response = await client.put(f"/api/configs/{MAC}", json={"content": {"deviceName": name}})
        assert response.status_code == 200
    install = _index(events, lambda e: e[0] == "rename" and e[2].endswith(f"/{MAC}.json"))
    linked = _index(events, lambda e: e[0] == "link" and e[1] == f"{MAC}.json")
    shelf = _index(events, lambda e: e == ("fsync", "dir", _history_dir(configs_dir)))
    configs = os.path.realpath(configs_dir)
    synced = _index(events, lambda e: e == ("fsync", "dir", configs))
    assert install < linked < shelf < synced  # the one it replaced was kept by the first PUT
