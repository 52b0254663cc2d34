import asyncio
import contextvars
import threading
from functools import partial

import pytest

from quart_iot.batches import BatchedThreads

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
