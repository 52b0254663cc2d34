"""Version history, retention: at most HISTORY_MAX_VERSIONS per device, none older than
HISTORY_MAX_DAYS, but never the newest version of a live device, nor of a deleted one within
its days. Pruned in the background (the store's sweep) under the write lock; measured for
the metrics on the way."""

import contextlib
import threading

from quart_iot.store.directory.versions import Shelf, Shelves, Version

DAY_NS = 86_400 * 1_000_000_000


class Retention:
    """Which versions go, and when (blocking; in worker threads)."""

    def __init__(self, shelves: Shelves, max_versions: int, max_days: float) -> None:
        self.shelves = shelves
        self.max_versions = max_versions  # 0: history is off (nothing new is kept)
        self.max_age_ns = int(max_days * DAY_NS)
        self.versions_kept: int | None = None  # as of the last survey
        self.bytes_used: int | None = None
        self.pruned = 0
        self._pending: set[str] = set()  # devices written, or surveyed with work: prune soon
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether history is on: whether writes keep versions, and retention has work."""
        return self.max_versions > 0

    def note(self, *macs: str) -> None:
        """Prune these devices at the next sweep."""
        with self._lock:
            self._pending.update(macs)

    def take_pending(self) -> list[str]:
        with self._lock:
            pending, self._pending = sorted(self._pending), set()
        return pending

    def has_work(self, mac: str, now_ns: int) -> bool:
        """Whether the device's shelf holds versions retention removes now, or deletes to
        settle (read without the lock: `prune` decides again under it)."""
        try:
            with self.shelves.opened(mac) as shelf:
                return bool(shelf.held() or self._doomed(shelf, mac, now_ns))
        except (FileNotFoundError, NotADirectoryError):  # pruned by another replica
            return False

    def prune(self, mac: str, now_ns: int) -> int:
        """Settle interrupted deletes, remove what retention removes (under the write lock);
        how many versions went."""
        try:
            with self.shelves.opened(mac) as shelf:
                shelf.settle(mac)
                doomed = self._doomed(shelf, mac, now_ns)
                for version in doomed:
                    shelf.unlink(version)
                for orphan in shelf.orphans():  # under the lock: no writer is between the two
                    shelf.unsign(orphan)
                emptied = not shelf.versions and not shelf.held()
        except (FileNotFoundError, NotADirectoryError):
            return 0
        if emptied:
            self.shelves.remove(mac)
        with self._lock:
            self.pruned += len(doomed)
        return len(doomed)

    def _doomed(self, shelf: Shelf, mac: str, now_ns: int) -> list[Version]:
        versions = shelf.versions
        if not versions:
            return []
        cutoff = now_ns - self.max_age_ns
        keep_from = max(0, len(versions) - self.max_versions)
        doomed = versions[:keep_from] + [v for v in versions[keep_from:] if v.saved_ns < cutoff]
        newest = versions[-1]
        if newest in doomed and (newest.saved_ns >= cutoff or self.shelves.live(mac)):
            doomed.remove(newest)
        return doomed

    def survey(self, now_ns: int) -> list[str]:
        """Every device's history measured (versions and bytes kept, for the gauges); the
        devices retention has work on now."""
        sizes: dict[tuple[int, int], int] = {}  # by inode: a version linked twice counts once
        versions, busy = 0, []
        for mac in self.shelves.macs():
            found, work = self._measure(mac, sizes, now_ns)
            versions += found
            if work:
                busy.append(mac)
        self.versions_kept, self.bytes_used = versions, sum(sizes.values())
        return busy

    def _measure(
        self, mac: str, sizes: dict[tuple[int, int], int], now_ns: int
    ) -> tuple[int, bool]:
        """(the versions the device keeps, whether retention has work on it)."""
        found = 0
        try:
            with self.shelves.opened(mac) as shelf:
                for version in shelf.versions:
                    with contextlib.suppress(FileNotFoundError):
                        st = shelf.stat(version)
                        sizes[(st.st_dev, st.st_ino)] = st.st_size
                        found += 1
                return found, bool(shelf.held() or self._doomed(shelf, mac, now_ns))
        except (FileNotFoundError, NotADirectoryError):
            return found, False
