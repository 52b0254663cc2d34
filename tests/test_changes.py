"""The store tells its change sinks of every change it sees, whoever made it."""

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quart_iot.app import create_app
from quart_iot.documents import etag_of
from quart_iot.settings import Settings
from quart_iot.store import Change, ConfigStore
from quart_iot.store.directory.retention import Retention
from tests.conftest import MAC, OTHER_MAC, Outside, write_config

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


async def test_change_ids_are_an_epoch_and_a_sequence(store: ConfigStore, backend: str) -> None:
    sink = listen(store)
    for value in range(3):
        await store.save(MAC, {"v": value})
    ids = [(await asyncio.wait_for(sink.changes.get(), 5)).id for _ in range(3)]
    epochs = {change_id.partition("-")[0] for change_id in ids}
    assert len(epochs) == 1
    sequences = [int(change_id.partition("-")[2]) for change_id in ids]
    assert sequences == list(range(sequences[0], sequences[0] + 3))
    after = await store.changes_after(ids[0])
    if backend == "postgres":  # the database keeps them, for every replica
        assert after is not None
        assert [change.id for change in after] == ids[1:]
    else:  # the waiting extension keeps them, in this process
        assert after is None


async def test_outside_changes_are_told(store: ConfigStore, outside: Outside) -> None:
    await outside.put(MAC, {"v": 0})
    await store.list_json()  # the cache knows the directory: nothing is new in it
    changes = listen(store)
    rewritten = {"v": "rewritten by hand"}
    await outside.put(MAC, rewritten)
    assert await next_change(changes) == (MAC, etag_of(json.dumps(rewritten).encode()))
    other = {"v": "made by another replica"}
    await outside.put(OTHER_MAC, other)
    assert await next_change(changes) == (OTHER_MAC, etag_of(json.dumps(other).encode()))
    await outside.remove(MAC)
    assert await next_change(changes) == (MAC, None)


async def test_a_file_there_again_but_unusable_is_no_change(
    store: ConfigStore, configs_dir: Path
) -> None:
    path = write_config(configs_dir, MAC, {"v": 0})
    await store.list_json()
    changes = listen(store)
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


async def test_a_survey_that_takes_long_never_holds_up_the_sweep(
    make_settings: Callable[..., Settings], configs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 17 item 18: the history survey ran in the sweep's loop; at 20,000 devices it
    # held other replicas' writes back from waiters for up to 2.7 s.
    surveys, release = [], threading.Event()
    survey = Retention.survey

    def held_survey(self: Retention, *args: Any) -> Any:
        surveys.append(time.monotonic())
        if len(surveys) > 1:  # the one at the start goes through
            release.wait(30)
        return survey(self, *args)

    monkeypatch.setattr(Retention, "survey", held_survey)
    app = create_app(make_settings(history_max_days=2 / 86400))  # a survey every second
    try:
        async with app.test_app():
            sink = listen(ConfigStore.of(app))
            while len(surveys) < 2:  # a survey is held now
                await asyncio.sleep(0.05)
            path = write_config(configs_dir, MAC, {"v": "by another replica"})
            assert await next_change(sink, timeout=10) == (MAC, etag_of(path.read_bytes()))
    finally:
        release.set()
