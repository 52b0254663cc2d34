"""The store tells its change sinks of every change it sees, whoever made it."""

import asyncio
import json
from pathlib import Path

from quart_iot.documents import etag_of
from quart_iot.store import Change, ConfigStore
from tests.conftest import MAC, OTHER_MAC, write_config

Seen = tuple[str, str | None]


class Sink:
    """A ChangeSink that keeps what it hears."""

    def __init__(self) -> None:
        self.changes: asyncio.Queue[Change] = asyncio.Queue()

    def change_seen(self, change: Change) -> None:
        self.changes.put_nowait(change)

    def changes_missed(self) -> None:
        raise AssertionError("the directory store never misses a change")

    def empty(self) -> bool:
        return self.changes.empty()


async def next_change(sink: Sink, timeout: float = 5.0) -> Seen:
    change = await asyncio.wait_for(sink.changes.get(), timeout)
    return change.mac, change.etag


def listen(store: ConfigStore) -> Sink:
    sink = Sink()
    store.change_sinks.append(sink)
    return sink


async def test_writes_of_this_process_are_told_at_once(store: ConfigStore) -> None:
    changes = listen(store)
    saved = await store.save(MAC, {"v": 1})
    assert await next_change(changes) == (MAC, saved.stored.etag)
    await store.delete(MAC)
    assert await next_change(changes) == (MAC, None)
    assert changes.empty()


async def test_change_ids_are_the_process_epoch_and_a_sequence(store: ConfigStore) -> None:
    sink = listen(store)
    for value in range(3):
        await store.save(MAC, {"v": value})
    ids = [(await asyncio.wait_for(sink.changes.get(), 5)).id for _ in range(3)]
    epochs = {change_id.partition("-")[0] for change_id in ids}
    assert len(epochs) == 1
    sequences = [int(change_id.partition("-")[2]) for change_id in ids]
    assert sequences == list(range(sequences[0], sequences[0] + 3))
    assert await store.changes_after(ids[0]) is None  # the waiting extension keeps them


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
