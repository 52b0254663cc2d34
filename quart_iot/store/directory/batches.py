"""Blocking calls run in a few threads, their results handed back to the loop in batches.

anyio.to_thread hops once per call: wake a worker, hand the GIL over, wake the event loop,
hand it back, with one thread per call in flight all contending for the GIL. For a read
answered from a cache that hop costs more than the answer (about a third of a request), and
32 writers in 32 threads spend more CPU handing the GIL around than writing (bench/ measures
both). Here a worker takes every call waiting (up to BATCH), runs them one after the other,
and wakes each event loop once for all of them. A call runs to the end even if the task
awaiting it is cancelled.

The workers are not daemons: the interpreter waits for a call in progress (a write) before
it exits, whatever way it stops. A worker idle for IDLE_SECONDS ends (the next call starts
one again), so a pool nobody closed delays an exit by at most that; `close()` ends them now.
"""

import asyncio
import contextlib
import contextvars
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

R = TypeVar("R")

WORKERS = 4  # a slow call (a network file system) holds up only its own batch
BATCH = 16
IDLE_SECONDS = 1.0


class _Call(NamedTuple):
    loop: asyncio.AbstractEventLoop
    future: "asyncio.Future[Any]"
    context: contextvars.Context  # the caller's: log lines keep the request's correlation id
    func: Callable[[], Any]


Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]


class BatchedThreads:
    """A small pool of threads, started on demand."""

    def __init__(self, workers: int = WORKERS, batch: int = BATCH) -> None:
        self._workers = workers
        self._batch = batch  # 1: each call answered as soon as it is done (long calls)
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()  # None: wake to end
        self._lock = threading.Lock()  # guards the fields below
        self._pending = 0  # calls queued and not yet taken by a worker
        self._threads: set[threading.Thread] = set()

    async def run(self, func: Callable[[], R]) -> R:
        """func() in a worker thread (cancelling the wait drops the result, not the call)."""
        return await self.submit(func)

    def submit(self, func: Callable[[], R]) -> "asyncio.Future[R]":
        """A future of func(), run in a worker thread; call from the event loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        call = _Call(loop, future, contextvars.copy_context(), func)
        with self._lock:
            self._calls.put(call)
            self._pending += 1
            if len(self._threads) < self._workers:
                self._spawn()
        return future

    def close(self, timeout: float | None = None) -> bool:
        """End every worker once the calls queued are done; whether they all ended in time."""
        with self._lock:
            threads = list(self._threads)
            for _ in threads:
                self._calls.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    def _spawn(self) -> None:
        name = f"quart_iot-batches-{len(self._threads)}"
        thread = threading.Thread(target=self._work, name=name)
        self._threads.add(thread)
        thread.start()

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            if batch:
                self._finish(batch)

    def _take(self) -> list[_Call] | None:
        """The next batch ([] when woken with nothing to do), or None: this worker ends."""
        try:
            first = self._calls.get(timeout=IDLE_SECONDS)
        except queue.Empty:
            first = None
        batch = [] if first is None else [first]
        with contextlib.suppress(queue.Empty):
            while batch and len(batch) < self._batch:
                call = self._calls.get_nowait()
                if call is None:  # a wake-up for another worker: theirs to end, once we are done
                    self._calls.put(None)
                    break
                batch.append(call)
        with self._lock:
            self._pending -= len(batch)
            if batch or self._pending:
                return batch
            self._threads.discard(threading.current_thread())  # a submit starts a new one
            return None

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
