"""The store tells its change listeners of every change it sees, whoever made it."""

import asyncio
import json
from pathlib import Path

from quart_iot.documents import etag_of
from quart_iot.store import ConfigStore
from tests.conftest import MAC, OTHER_MAC, write_config

Change = tuple[str, str | None]


async def next_change(changes: "asyncio.Queue[Change]", timeout: float = 5.0) -> Change:
    return await asyncio.wait_for(changes.get(), timeout)


def listen(store: ConfigStore) -> "asyncio.Queue[Change]":
    changes: asyncio.Queue[Change] = asyncio.Queue()
    store.change_listeners.append(lambda mac, etag: changes.put_nowait((mac, etag)))
    return changes


async def test_writes_of_this_process_are_told_at_once(store: ConfigStore) -> None:
    changes = listen(store)
    saved = await store.save(MAC, {"v": 1})
    assert await next_change(changes) == (MAC, saved.etag)
    await store.delete(MAC)
    assert await next_change(changes) == (MAC, None)
    assert changes.empty()


async def test_outside_changes_are_told_by_the_sweep(store: ConfigStore, configs_dir: Path) -> None:
    write_config(configs_dir, MAC, {"v": 0})
    await store.list_json()  # the cache knows the directory: nothing is new in it
    changes = listen(store)
    path = write_config(configs_dir, MAC, {"v": "rewritten by hand"})
    assert await next_change(changes) == (MAC, etag_of(path.read_bytes()))
    other = write_config(configs_dir, OTHER_MAC, {"v": "made by another replica"})
    assert await next_change(changes) == (OTHER_MAC, etag_of(other.read_bytes()))
    path.unlink()
    assert await next_change(changes) == (MAC, None)
    path.write_text(json.dumps([1]))  # there again, but unusable: gone for a reader
    await asyncio.sleep(1.5)
    assert changes.empty()


async def test_the_first_scan_of_a_directory_tells_nothing(
    store: ConfigStore, configs_dir: Path
) -> None:
    for index in range(5):
        write_config(configs_dir, f"aa-bb-cc-dd-ee-0{index}", {"v": index})
    changes = listen(store)
    await store.list_json()
    await asyncio.sleep(1.2)  # two sweeps
    assert changes.empty()
