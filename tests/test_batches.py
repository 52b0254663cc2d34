import asyncio
import contextvars
import json
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from quart_iot.store import ConfigStore, Written
from quart_iot.store.directory.batches import BatchedThreads
from quart_iot.store.directory.files import Directory
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


async def test_a_call_cancelled_while_it_runs_finishes_and_its_result_is_dropped() -> None:
    threads = BatchedThreads(workers=1)
    started, release, ran = threading.Event(), threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(10)
        ran.set()
        return "late"

    task = asyncio.create_task(threads.run(slow))
    assert await asyncio.to_thread(started.wait, 10)  # running now, not merely queued
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not ran.is_set()
    release.set()
    assert await threads.run(lambda: "next") == "next"  # the worker survived the drop
    assert ran.is_set()
    assert threads.close(10)


async def test_a_call_cancelled_before_it_ran_still_runs() -> None:
    threads = BatchedThreads(workers=1)
    busy, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def block() -> None:
        busy.set()
        release.wait(10)

    blocker = threads.submit(block)  # holds the only worker
    assert await asyncio.to_thread(busy.wait, 10)
    queued = asyncio.create_task(threads.run(lambda: ran.append("queued")))
    await asyncio.sleep(0)  # submitted, behind the blocker
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert ran == []  # cancelled before it ran
    release.set()
    await blocker
    assert await threads.run(lambda: "next") == "next"
    assert ran == ["queued"]  # it ran all the same (a write must not half-happen)
    assert threads.close(10)


async def test_close_waits_for_the_call_in_progress_and_ends_every_worker() -> None:
    threads = BatchedThreads(workers=3)
    started, release = threading.Event(), threading.Event()
    done: list[str] = []

    def write() -> None:
        started.set()
        release.wait(10)
        done.append("written")

    writing = threads.submit(write)
    await asyncio.gather(*(threads.run(partial(square, n)) for n in range(10)))
    assert await asyncio.to_thread(started.wait, 10)
    workers = [t for t in threading.enumerate() if t.name.startswith("quart_iot-batches-")]
    assert workers
    assert not any(t.daemon for t in workers)  # the interpreter waits for them at exit
    assert not await asyncio.to_thread(threads.close, 0.05)  # the write is still running
    release.set()
    assert await asyncio.to_thread(threads.close, 10)
    assert done == ["written"]
    await writing
    assert await threads.run(lambda: "again") == "again"  # a closed pool starts anew
    assert threads.close(10)


async def test_a_save_whose_request_is_cancelled_still_lands_and_is_told(
    store: ConfigStore, configs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = threading.Event(), threading.Event()
    write_temp = Directory.write_temp

    def held(self: Directory, name: str, data: bytes) -> tuple[Path, int]:
        started.set()
        release.wait(10)
        return write_temp(self, name, data)

    monkeypatch.setattr(Directory, "write_temp", held)
    told: list[Written] = []
    store.write_listeners.append(told.append)
    task = asyncio.create_task(store.save(MAC, {"deviceName": "x"}))
    assert await asyncio.to_thread(started.wait, 10)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 10
    while not told and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert [(written.mac, written.applied) for written in told] == [(MAC, True)]
    assert json.loads((configs_dir / f"{MAC}.json").read_bytes()) == {"deviceName": "x"}
