"""Storage faults: an OSError becomes StorageUnavailable; an outage is logged twice, not often."""

import contextlib
import errno
import logging
import threading
import time
from collections.abc import Iterator

from quart_iot.errors import StorageUnavailable

log = logging.getLogger(__name__)

REMIND_SECONDS = 60.0


class Outage:
    """Logs when reads (or writes) of the directory start failing and when they work again.

    Not one line per failed request: a 150 s outage under load logged 33,380 identical lines.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._since: float | None = None
        self._reminded = 0.0
        self._lock = threading.Lock()

    def failed(self, reason: str, cause: object = None) -> None:
        now = time.monotonic()
        with self._lock:
            if self._since is None:
                self._since = self._reminded = now
                log.warning("config %s fail: %s (%s)", self.what, reason, cause or reason)
            elif now - self._reminded >= REMIND_SECONDS:
                self._reminded = now
                log.warning(
                    "config %s still fail after %.0f s: %s", self.what, now - self._since, reason
                )

    def recovered(self) -> None:
        if self._since is None:  # the common case, without taking the lock
            return
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            log.warning("config %s work again after %.0f s", self.what, time.monotonic() - since)


def storage_reason(error: OSError) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "the configs directory is not writable"
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        return "the configs directory is missing"
    return "the configs directory cannot be used"


@contextlib.contextmanager
def storage_errors(action: str, outage: Outage) -> Iterator[None]:
    """Any OSError not handled closer to its cause means the directory itself is in trouble."""
    try:
        yield
    except OSError as error:
        reason = storage_reason(error)
        outage.failed(reason, f"{action} failed: {error}")
        raise StorageUnavailable(reason) from None
