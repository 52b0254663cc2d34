import asyncio
import contextvars
import json
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from quart_iot.batches import BatchedThreads
from quart_iot.store import ConfigStore, StoredConfig
from tests.conftest import MAC

_request = contextvars.ContextVar("request", default="-")


def square(n: int) -> int:
    return n * n


def fail() -> None:
    raise ValueError("boom")


async def test_results_and_errors_come_back_to_their_caller() -> None:
    threads = BatchedThreads(workers=2)
    results = await asyncio.gather(*(threads.run(partial(square, n)) for n in range(200)))
    assert results == [n * n for n in range(200)]
    with pytest.raises(ValueError, match="boom"):
        await threads.run(fail)


async def test_calls_run_in_worker_threads_with_the_callers_context() -> None:
    threads = BatchedThreads(workers=1)
    _request.set("abc")
    name, seen = await threads.run(lambda: (threading.current_thread().name, _request.get()))
    assert name.startswith("quart_iot-batches-")
    assert seen == "abc"


async def test_a_cancelled_call_still_runs_and_its_result_is_dropped() -> None:
    threads = BatchedThreads(workers=1)
    release, ran = threading.Event(), threading.Event()

    def slow() -> str:
        release.wait(10)
        ran.set()
        return "late"

    task = asyncio.create_task(threads.run(slow))
    await asyncio.sleep(0.01)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await threads.run(lambda: "next") == "next"  # the worker survived the drop
    assert ran.is_set()


async def test_a_save_whose_request_is_cancelled_still_lands_and_is_told(
    store: ConfigStore, configs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = threading.Event(), threading.Event()
    write_temp = ConfigStore._write_temp

    def held(self: ConfigStore, name: str, data: bytes) -> tuple[Path, int]:
        started.set()
        release.wait(10)
        return write_temp(self, name, data)

    monkeypatch.setattr(ConfigStore, "_write_temp", held)
    told: list[StoredConfig] = []
    store.saved_listeners.append(told.append)
    task = asyncio.create_task(store.save(MAC, {"deviceName": "x"}))
    assert await asyncio.to_thread(started.wait, 10)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 10
    while not told and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert [stored.mac for stored in told] == [MAC]
    assert json.loads((configs_dir / f"{MAC}.json").read_bytes()) == {"deviceName": "x"}
