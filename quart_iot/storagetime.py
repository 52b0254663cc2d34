"""The time a request spends on storage work: measured in the worker threads that do it, or
around the awaits of an async store (PostgreSQL)."""

import contextlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TypeVar

R = TypeVar("R")

_spent: ContextVar[list[float] | None] = ContextVar("quart_iot_storage_seconds", default=None)


def start() -> None:
    """Measure the storage work of the current request (called on the event loop)."""
    _spent.set([])


def spent() -> float | None:
    """Seconds of storage work since start(), or None when the request did none."""
    durations = _spent.get()
    return sum(durations) if durations else None


def timed(func: Callable[[], R]) -> Callable[[], R]:
    """func, timing itself in the worker thread that runs it."""
    # The thread runs func in a *copy* of the caller's context: a variable set there would not
    # come back. So the caller's list is taken here, on the loop, and the thread appends to it
    # (one atomic append); the loop reads it only after awaiting the result, and only the loop
    # touches the histogram (aioprometheus collectors are plain dicts that /metrics iterates).
    durations = _spent.get()
    if durations is None:  # outside a request (the background sweep)
        return func

    def run() -> R:
        started = time.perf_counter()
        try:
            return func()
        finally:
            durations.append(time.perf_counter() - started)

    return run


@contextlib.contextmanager
def measured() -> Iterator[None]:
    """Count the block as storage work of the current request (an await on the event loop)."""
    durations = _spent.get()
    started = time.perf_counter()
    try:
        yield
    finally:
        if durations is not None:
            durations.append(time.perf_counter() - started)
