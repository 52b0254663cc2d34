"""Bounds on the requests held open: per process, per subject (a token's owner), per device.

A held request costs the process about 35 KB and a socket: `MAX_WAITERS` bounds them all, and
the bounds per subject and per device keep one client (a device token, a script) from taking
them all and starving every other device and stream.
"""

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from quart_iot.errors import ApiError, TooManyWaiters


class TooManyWaits(ApiError):
    """One subject, or one device, holds as many waiting requests as it may."""

    status, code = 429, "TOO_MANY_WAITERS"
    headers = {"Retry-After": "5"}  # noqa: RUF012 - a held request ends within MAX_WAIT_SECONDS

    def __init__(self, setting: str, limit: int, whose: str) -> None:
        super().__init__(
            f"{whose} holds {limit} waiting requests already ({setting}); retry later, "
            "or read without waiting",
            {"setting": setting, "limit": limit},
        )


class Holds:
    """Counts the held requests; `refusal` says why one more may not be held."""

    def __init__(self, limit: int, per_subject: int, count: Callable[[str, int], None]) -> None:
        self.limit = limit
        self.per_subject = per_subject
        self.total = 0
        self._count = count  # the gauge, by kind
        self._by_subject: Counter[str] = Counter()

    def refusal(self, subject: str | None) -> ApiError | None:
        """The error to answer instead of holding one more request for `subject`, or None."""
        if self.total >= self.limit:
            return TooManyWaiters(self.limit)
        if subject is not None and self._by_subject[subject] >= self.per_subject:
            return TooManyWaits("MAX_WAITERS_PER_SUBJECT", self.per_subject, "This token")
        return None

    @contextmanager
    def held(self, kind: str, subject: str | None) -> Iterator[None]:
        """Count one request of `kind` held for `subject` while the block runs."""
        self.total += 1
        self._count(kind, 1)
        if subject is not None:
            self._by_subject[subject] += 1
        try:
            yield
        finally:
            self.total -= 1
            self._count(kind, -1)
            if subject is not None:
                self._by_subject[subject] -= 1
                if not self._by_subject[subject]:
                    del self._by_subject[subject]
