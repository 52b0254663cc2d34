"""Version history, the write side: every version of every document is kept on its shelf.

Keeping a version costs no I/O but a link: each save links the new file after its rename; a
save that finds the current file not yet kept (edited outside the service, or from before
history) links it before the rename; a delete holds the file (durably, under a name no
reader lists) before the unlink, and makes it the `deleted` version once the unlink
happened. All under the directory's write lock, shared with every replica. Reading the
history is the catalogue's (`catalogue.py`), pruning it retention's (`retention.py`).
"""

import contextlib
import logging
import os
import stat
from collections.abc import Iterator

from quart_iot.store.backend import WriteMeta
from quart_iot.store.directory.retention import Retention
from quart_iot.store.directory.versions import Shelf, Shelves

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
        """The device's shelf, made (durably) for its first version, with the deletes a
        crash interrupted settled first."""
        with self.shelves.opened(mac, create=True) as shelf:
            shelf.settle(mac)
            yield shelf

    def keep_current(self, shelf: Shelf, mac: str) -> bool:
        """Link the current file unless it is the newest version already; whether it existed."""
        current = shelf.current(mac)
        if current is None:
            return False
        if not stat.S_ISREG(current.st_mode) or shelf.is_newest(current):
            return True
        kept_before = shelf.newest_name() is not None
        shelf.link(mac, shelf.issue("updated" if kept_before else "created"))
        os.fsync(shelf.fd)  # kept durably before the rename that replaces it can be
        return True

    def record(
        self, shelf: Shelf, mac: str, change: str, fd: int, by: WriteMeta | None
    ) -> str | None:
        """Link the current file as a new version if it is the file of `fd`, signed by
        `by`'s subject and bulk change when there are; the version's id (None: replaced
        meanwhile)."""
        version = shelf.issue(change)
        self._sign(shelf, version.id, mac, by)
        shelf.link(mac, version)
        if not os.path.samestat(shelf.stat(version), os.fstat(fd)):
            shelf.unlink(version)  # replaced meanwhile
            return None
        self.retention.note(mac)  # the sweep's prune decides, listing the shelf, off this path
        return version.id

    def hold_deleted(self, shelf: Shelf, mac: str, by: WriteMeta | None) -> str:
        """Keep the document a delete is about to remove, durably, where no reader lists it;
        the id its `deleted` version gets once the document is gone (`release_deleted`)."""
        version_id = shelf.issue("deleted").id
        self._sign(shelf, version_id, mac, by)
        shelf.hold(mac, version_id)
        try:
            os.fsync(shelf.fd)  # durable before the unlink
        except OSError:
            shelf.drop(version_id)  # the delete will not happen
            raise
        return version_id

    @staticmethod
    def release_deleted(shelf: Shelf, mac: str, version_id: str) -> None:
        """The delete happened: the held document becomes its `deleted` version."""
        try:
            shelf.release(version_id, "deleted")
        except OSError as error:  # still held: the next write or sweep of it settles it
            log.warning("deleted version of %s.json not named yet: %s", mac, error)

    @staticmethod
    def _sign(shelf: Shelf, version_id: str, mac: str, by: WriteMeta | None) -> None:
        if by is None or (by.subject is None and by.change_id is None):
            return
        try:
            shelf.sign(version_id, by.subject, by.change_id)
        except OSError as error:  # the version matters more than who made it
            log.warning("subject of a version of %s.json not kept: %s", mac, error)

    def sync(self, mac: str) -> None:
        """fsync the device's shelf (after a save, outside the lock)."""
        self.shelves.fsync(mac)
