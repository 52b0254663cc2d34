"""The directory's write lock: an flock on `.quart_iot.lock`, shared with every replica."""

import contextlib
import fcntl
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from typing import NoReturn, TypeVar

from quart_iot.errors import WritesBlocked
from quart_iot.store.directory.files import LOCK_NAME, Directory

log = logging.getLogger(__name__)

C = TypeVar("C")
R = TypeVar("R")


class WriteLock:
    """Serialises check-and-write across threads, processes and replicas sharing the directory."""

    def __init__(self, directory: Directory, timeout: float) -> None:
        self.directory = directory
        self.timeout = timeout
        self.blocked = False  # the last wait for it timed out
        # This process's writers queue here, woken the moment the holder is done, rather than
        # polling the flock (which cannot block with a timeout) with sleeps among themselves.
        self._ours = threading.Lock()

    def exclusively(self, deadline: float, check: Callable[[], C], commit: Callable[[C], R]) -> R:
        """commit(check()) holding the lock, waiting for it until the deadline at most."""
        if not self._ours.acquire(timeout=max(deadline - time.monotonic(), 0)):
            self._timed_out()
        try:
            return self._exclusively(deadline, check, commit)
        finally:
            self._ours.release()

    def _exclusively(self, deadline: float, check: Callable[[], C], commit: Callable[[C], R]) -> R:
        while True:
            with self._file(create=True) as fd:
                self._acquire(fd, deadline)
                # The lock file may have been removed or replaced while we waited (or checked):
                # then whoever locks the file now at that name is not excluded by ours. Retry.
                if self._still_named(fd):
                    checked = check()
                    if self._still_named(fd):
                        return commit(checked)

    def still_blocked(self) -> bool:
        """After a write timed out: is the lock still held? (Probed, not waited for.)"""
        if not self.blocked:
            return False
        try:
            with self._file() as fd:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False  # no lock file, or none we may open: health says what else is wrong
        self.blocked = False
        return False

    @contextlib.contextmanager
    def _file(self, create: bool = False) -> Iterator[int]:
        # Read-write and 0600: flock needs only an open descriptor, so a lock file others may
        # open is a lock anyone with read access can hold (and every write would wait on it).
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        fd = os.open(self.directory / LOCK_NAME, flags, 0o600)
        try:
            if create and stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
                with contextlib.suppress(PermissionError):  # another user's file: theirs to fix
                    os.fchmod(fd, 0o600)  # left 0644 by an older version
            yield fd
        finally:
            os.close(fd)  # releases the lock

    def _acquire(self, fd: int, deadline: float) -> None:
        """flock, waiting no longer than the deadline (then WritesBlocked: nothing changes)."""
        pause = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._timed_out()
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.05)
            else:
                if self.blocked:
                    log.warning("config writes unblocked: the write lock was released")
                self.blocked = False
                return

    def _timed_out(self) -> NoReturn:
        if not self.blocked:
            log.warning("config writes blocked: the write lock is held elsewhere")
        self.blocked = True
        raise WritesBlocked(self.timeout)

    def _still_named(self, fd: int) -> bool:
        held = os.fstat(fd)
        try:
            now = os.stat(self.directory / LOCK_NAME, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)
