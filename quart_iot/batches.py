"""Blocking calls run in a few threads, their results handed back to the loop in batches.

anyio.to_thread hops once per call: wake a worker, hand the GIL over, wake the event loop,
hand it back, with one thread per call in flight all contending for the GIL. For a read
answered from a cache that hop costs more than the answer (about a third of a request), and
32 writers in 32 threads spend more CPU handing the GIL around than writing (bench/ measures
both). Here a worker takes every call waiting (up to BATCH), runs them one after the other,
and wakes each event loop once for all of them. A call runs to the end even if the task
awaiting it is cancelled.
"""

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

R = TypeVar("R")

WORKERS = 4  # a slow call (a network file system) holds up only its own batch
BATCH = 16


class _Call(NamedTuple):
    loop: asyncio.AbstractEventLoop
    future: "asyncio.Future[Any]"
    context: contextvars.Context  # the caller's: log lines keep the request's correlation id
    func: Callable[[], Any]


Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]


class BatchedThreads:
    """A small pool of daemon threads, started on first use."""

    def __init__(self, workers: int = WORKERS) -> None:
        self._workers = workers
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._started = False
        self._start_lock = threading.Lock()

    async def run(self, func: Callable[[], R]) -> R:
        """func() in a worker thread (cancelling the wait drops the result, not the call)."""
        return await self.submit(func)

    def submit(self, func: Callable[[], R]) -> "asyncio.Future[R]":
        """A future of func(), run in a worker thread; call from the event loop."""
        if not self._started:
            self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._calls.put(_Call(loop, future, contextvars.copy_context(), func))
        return future

    def _start(self) -> None:
        with self._start_lock:
            for index in range(0 if self._started else self._workers):
                name = f"quart_iot-batches-{index}"
                threading.Thread(target=self._work, name=name, daemon=True).start()
            self._started = True

    def _work(self) -> None:
        while True:
            batch = [self._calls.get()]
            with contextlib.suppress(queue.Empty):
                while len(batch) < BATCH:
                    batch.append(self._calls.get_nowait())
            self._finish(batch)

    @staticmethod
    def _finish(batch: list[_Call]) -> None:
        outcomes: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
        for call in batch:
            try:
                outcome: Outcome = (call.future, call.context.run(call.func), None)
            except BaseException as error:  # handed to the caller, as a plain call would raise
                outcome = (call.future, None, error)
            outcomes.setdefault(call.loop, []).append(outcome)
        for loop, settled in outcomes.items():
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits
                loop.call_soon_threadsafe(_settle, settled)


def _settle(outcomes: list[Outcome]) -> None:
    for future, value, error in outcomes:
        if future.done():  # cancelled while the call ran
            continue
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)
