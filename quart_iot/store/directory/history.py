"""Version history, the write side: every version of every document is kept on its shelf.

Keeping a version costs no I/O but a link: each save links the new file after its rename; a
save that finds the current file not yet kept (edited outside the service, or from before
history) links it before the rename; a delete links the file before the unlink. All under
the directory's write lock, shared with every replica. Reading the history is the
catalogue's (`catalogue.py`), pruning it retention's (`retention.py`).
"""

import contextlib
import logging
import os
import stat
from collections.abc import Iterator

from quart_iot.store.directory.retention import Retention
from quart_iot.store.directory.versions import Shelf, Shelves, Version

log = logging.getLogger(__name__)


class History:
    """Keeps versions as the writer saves and deletes (blocking; under the write lock)."""

    def __init__(self, shelves: Shelves, retention: Retention) -> None:
        self.shelves = shelves
        self.retention = retention

    @property
    def enabled(self) -> bool:
        return self.retention.enabled

    @contextlib.contextmanager
    def shelf(self, mac: str) -> Iterator[Shelf]:
        """The device's shelf, made (durably) for its first version."""
        with self.shelves.opened(mac, create=True) as shelf:
            yield shelf

    def keep_current(self, shelf: Shelf, mac: str) -> bool:
        """Link the current file unless it is the newest version already; whether it existed."""
        current = shelf.current(mac)
        if current is None:
            return False
        if not stat.S_ISREG(current.st_mode) or self._is_newest(shelf, current):
            return True
        shelf.link(mac, Version(shelf.new_id(), "updated" if shelf.newest() else "created"))
        os.fsync(shelf.fd)  # kept durably before the rename that replaces it can be
        return True

    def record(
        self, shelf: Shelf, mac: str, change: str, fd: int | None = None, by: str | None = None
    ) -> str | None:
        """Link the current file as a new version (a save: only if it is the file of `fd`),
        signed by subject `by` when there is one; the version's id (None: not kept)."""
        version = Version(shelf.new_id(), change)
        if by is not None:
            try:
                shelf.sign(version, by)
            except OSError as error:  # the version matters more than who made it
                log.warning("subject of a version of %s.json not kept: %s", mac, error)
        shelf.link(mac, version)
        if fd is not None and not os.path.samestat(shelf.stat(version), os.fstat(fd)):
            shelf.unlink(version)  # replaced meanwhile
            return None
        if fd is None:  # a delete: durable before the unlink (a save syncs after the lock)
            try:
                os.fsync(shelf.fd)
            except OSError:
                shelf.unlink(version)  # the delete will not happen
                raise
        if self.retention.past_limit(shelf):
            self.retention.note(mac)
        return version.id

    def sync(self, mac: str) -> None:
        """fsync the device's shelf (after a save, outside the lock)."""
        self.shelves.fsync(mac)

    @staticmethod
    def _is_newest(shelf: Shelf, current: os.stat_result) -> bool:
        version = shelf.newest()
        if version is None:
            return False
        try:
            return os.path.samestat(shelf.stat(version), current)
        except FileNotFoundError:
            return False
