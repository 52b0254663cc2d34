"""Version history: every version of every document, kept under `.history/<mac>/`.

A version is a hard link to a document file, so keeping it costs no I/O: the service never
writes a file in place, so a linked file never changes. Each save links the new file after
its rename; a save that finds the current file not yet kept (edited outside the service, or
from before history) links it before the rename; a delete links the file before the unlink.
All under the directory's write lock, shared with every replica. A version's name carries
its metadata: `<ns since the epoch, 19 digits>-<8 hex>.<change>.json`.

Plain blocking functions, run in worker threads. Every name is built from a canonical MAC
and a version id that fully matched VERSION_PATTERN, relative to descriptors opened without
following links: nothing outside the history area is ever touched.
"""

import contextlib
import json
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from quart_iot.documents import InvalidJson, etag_of, parse_document
from quart_iot.errors import ConfigNotFound, ConfigUnreadable, InvalidVersion, VersionNotFound
from quart_iot.store.files import HISTORY_NAME, Directory
from quart_iot.store.index import RACY_NS
from quart_iot.store.records import Signature, StoredConfig, summary_json

VERSION_PATTERN = r"[0-9]{19}-[0-9a-f]{8}"  # also published in the OpenAPI document
_VERSION = re.compile(VERSION_PATTERN)
_FILE = re.compile(rf"(?P<id>{VERSION_PATTERN})\.(?P<change>created|updated|deleted)\.json")
DAY_NS = 86_400 * 1_000_000_000
CACHE_SIZE = 100_000
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Version:
    """One kept version: its id and how it came to be."""

    id: str
    change: str

    @property
    def name(self) -> str:
        return f"{self.id}.{self.change}.json"

    @property
    def saved_ns(self) -> int:
        return int(self.id[:19])

    @property
    def saved_at(self) -> str:
        """RFC 3339, UTC, to the microsecond."""
        moment = datetime.fromtimestamp(self.saved_ns / 1e9, UTC)
        return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")

    @classmethod
    def parse(cls, name: str) -> "Version | None":
        match = _FILE.fullmatch(name)
        return cls(match["id"], match["change"]) if match else None


def check_version(raw: str) -> str:
    """The version id, or InvalidVersion for anything that is not exactly one."""
    if len(raw) != 28 or not _VERSION.fullmatch(raw):
        raise InvalidVersion
    return raw


class Shelf:
    """One device's history directory as it was found (under the lock, for a write)."""

    def __init__(self, fd: int, top: int = -1) -> None:
        self.fd = fd
        self.top = top  # the configs directory (open while a write holds the shelf)
        # Names sort in time order (fixed-length ids first); parsed only where needed, since
        # a write needs just the newest and the oldest.
        self.names = sorted(name for name in os.listdir(fd) if name.endswith(".json"))

    @property
    def versions(self) -> list[Version]:
        """Every version, oldest first."""
        parsed = (Version.parse(name) for name in self.names)
        return [version for version in parsed if version is not None]

    def newest(self) -> Version | None:
        return next(filter(None, map(Version.parse, reversed(self.names))), None)

    def oldest(self) -> Version | None:
        return next(filter(None, map(Version.parse, self.names)), None)

    def add(self, version: Version) -> None:
        self.names.append(version.name)

    def new_id(self) -> str:
        """Later than every kept version, whatever the clocks of the replicas say."""
        now = time.time_ns()
        newest = self.newest()
        if newest is not None:
            now = max(now, newest.saved_ns + 1)
        return f"{now:019d}-{secrets.token_hex(4)}"


class History:
    """Keeps, lists, reads and prunes versions (blocking; in worker threads)."""

    def __init__(self, directory: Directory, max_versions: int, max_days: float) -> None:
        self.directory = directory
        self.max_versions = max_versions  # 0: history is off (nothing new is kept)
        self.max_age_ns = int(max_days * DAY_NS)
        self.pending: set[str] = set()  # devices a write took past a limit: prune soon
        self.versions_kept: int | None = None  # as of the last retention pass
        self.bytes_used: int | None = None
        self.pruned = 0
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[Signature, dict[str, Any]]] = {}
        self._listings: dict[str, tuple[tuple[Signature, Signature | None], bytes]] = {}

    @property
    def enabled(self) -> bool:
        return self.max_versions > 0

    # -- the write path, under the write lock ------------------------------------------

    @contextlib.contextmanager
    def shelf(self, mac: str, create: bool = True) -> Iterator[Shelf]:
        """The device's history directory, made (durably) when it is the first version."""
        with self.directory.opened() as top, self._opened(top, mac, create) as fd:
            yield Shelf(fd, top)

    @contextlib.contextmanager
    def _shelf_fd(self, mac: str, create: bool) -> Iterator[int]:
        with self.directory.opened() as top, self._opened(top, mac, create) as fd:
            yield fd

    @contextlib.contextmanager
    def _opened(self, top: int, mac: str, create: bool) -> Iterator[int]:
        root = _open_dir(HISTORY_NAME, top, create)
        try:
            fd = _open_dir(mac, root, create)
        finally:
            os.close(root)
        try:
            yield fd
        finally:
            os.close(fd)

    def keep_current(self, shelf: Shelf, mac: str) -> bool:
        """Link the current file unless it is the newest version already; whether it existed."""
        try:
            current = os.stat(f"{mac}.json", dir_fd=shelf.top, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(current.st_mode) or self._is_newest(shelf, current):
            return True
        version = Version(shelf.new_id(), "updated" if shelf.newest() else "created")
        _link(shelf, mac, version)
        shelf.add(version)
        os.fsync(shelf.fd)  # kept durably before the rename that replaces it can be
        return True

    def record(self, shelf: Shelf, mac: str, change: str, fd: int | None = None) -> None:
        """Link the current file as a new version (a save: only if it is the file of `fd`)."""
        version = Version(shelf.new_id(), change)
        _link(shelf, mac, version)
        kept = os.stat(version.name, dir_fd=shelf.fd, follow_symlinks=False)
        if fd is not None and not os.path.samestat(kept, os.fstat(fd)):  # replaced meanwhile
            os.unlink(version.name, dir_fd=shelf.fd)
            return
        if fd is None:  # a delete: durable before the unlink (a save syncs after the lock)
            try:
                os.fsync(shelf.fd)
            except OSError:
                os.unlink(version.name, dir_fd=shelf.fd)  # the delete will not happen
                raise
        shelf.add(version)
        if self._past_limit(shelf):
            with self._lock:
                self.pending.add(mac)

    def sync(self, mac: str) -> None:
        """fsync the device's history directory (after a save, outside the lock)."""
        with contextlib.suppress(FileNotFoundError), self._shelf_fd(mac, create=False) as fd:
            os.fsync(fd)

    def _is_newest(self, shelf: Shelf, current: os.stat_result) -> bool:
        version = shelf.newest()
        if version is None:
            return False
        try:
            newest = os.stat(version.name, dir_fd=shelf.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return (newest.st_dev, newest.st_ino) == (current.st_dev, current.st_ino)

    def _past_limit(self, shelf: Shelf) -> bool:
        oldest = shelf.oldest()
        too_old = oldest is not None and time.time_ns() - oldest.saved_ns > self.max_age_ns
        return len(shelf.names) > self.max_versions or too_old

    # -- reads -----------------------------------------------------------------------------

    def listing(self, mac: str) -> bytes:
        """The history body of one device, versions newest first (ConfigNotFound if it never
        had a document)."""
        try:
            with self._shelf_fd(mac, create=False) as fd:
                return self._listing(fd, mac)
        except (FileNotFoundError, NotADirectoryError):
            with self.directory.opened() as top:
                try:
                    os.stat(f"{mac}.json", dir_fd=top, follow_symlinks=False)
                except FileNotFoundError:
                    raise ConfigNotFound(mac) from None
            return _body(mac, [])  # a document from before history: kept when a write replaces it

    def _listing(self, fd: int, mac: str) -> bytes:
        """From the cache while neither the directory nor the current file changed."""
        key = self._listing_key(fd, mac)
        hit = self._listings.get(mac)
        if hit is not None and key is not None and hit[0] == key:
            return hit[1]
        body = _body(mac, [self._describe(fd, mac, v) for v in reversed(Shelf(fd).versions)])
        if key is not None:
            if len(self._listings) >= CACHE_SIZE // 10:
                self._listings.clear()
            self._listings[mac] = (key, body)
        return body

    def _listing_key(self, fd: int, mac: str) -> tuple[Signature, Signature | None] | None:
        """What identifies the listing; None while a change could hide in a timestamp tick.

        The directory changes with every version linked or removed; the current file is the
        one version a (careless) in-place edit could change.
        """
        now = time.time_ns()
        shelf = Signature.of(os.fstat(fd))
        try:
            current: Signature | None = self.directory.lstat(f"{mac}.json")
        except FileNotFoundError:
            current = None
        newest = max(shelf.mtime_ns, current.ctime_ns if current else 0)
        return None if now - newest < RACY_NS else (shelf, current)

    def read(self, mac: str, version_id: str) -> tuple[Version, StoredConfig]:
        """One version as a stored document."""
        try:
            with self.shelf(mac, create=False) as shelf:
                version = _find(shelf.versions, mac, version_id)
                _, data = _read(shelf.fd, version.name, self.directory.max_bytes, mac)
        except (FileNotFoundError, NotADirectoryError):
            raise VersionNotFound(mac, version_id) from None
        return version, _stored(mac, data)

    def deleted(self) -> list[dict[str, Any]]:
        """Devices whose document is gone but whose history remains, by MAC."""
        found = []
        for mac in self._macs():
            with contextlib.suppress(FileNotFoundError, NotADirectoryError, ConfigUnreadable):
                found.extend(self._deleted_one(mac))
        return found

    def _deleted_one(self, mac: str) -> list[dict[str, Any]]:
        with self.directory.opened() as top, contextlib.suppress(FileNotFoundError):
            os.stat(f"{mac}.json", dir_fd=top, follow_symlinks=False)
            return []
        with self.shelf(mac, create=False) as shelf:
            last = shelf.newest()
            if last is None:
                return []
            item = self._describe(shelf.fd, mac, last)
        deleted_at = last.saved_at if last.change == "deleted" else None
        return [{**item, "deleted_at": deleted_at}]

    def _macs(self) -> list[str]:
        with self.directory.opened() as top:
            try:
                root = _open_dir(HISTORY_NAME, top, create=False)
            except (FileNotFoundError, NotADirectoryError):
                return []
        try:
            return sorted(name for name in os.listdir(root) if _is_mac(name))
        finally:
            os.close(root)

    def _describe(self, fd: int, mac: str, version: Version) -> dict[str, Any]:
        """The listing item of a version (cached by its file's signature)."""
        signature = Signature.of(os.stat(version.name, dir_fd=fd, follow_symlinks=False))
        key = (mac, version.name)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == signature:
            return hit[1]
        signature, data = _read(fd, version.name, self.directory.max_bytes, mac)
        stored = _stored(mac, data)
        item = {
            **json.loads(stored.summary_json),
            "version": version.id,
            "etag": stored.etag,
            "saved_at": version.saved_at,
            "size": len(data),
            "change": version.change,
            "subject": None,
        }
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = (signature, item)
        return item

    # -- retention -------------------------------------------------------------------------

    def doomed(self, mac: str, now_ns: int) -> list[Version]:
        """The versions retention removes now (never the newest of a live device, nor of a
        deleted one within its days)."""
        try:
            with self.shelf(mac, create=False) as shelf:
                versions = shelf.versions
        except (FileNotFoundError, NotADirectoryError):  # pruned by another replica
            return []
        if not versions:
            return []
        cutoff = now_ns - self.max_age_ns
        keep_from = max(0, len(versions) - self.max_versions)
        doomed = versions[:keep_from] + [v for v in versions[keep_from:] if v.saved_ns < cutoff]
        newest = versions[-1]
        if newest in doomed and (newest.saved_ns >= cutoff or self._live(mac)):
            doomed.remove(newest)
        return doomed

    def prune(self, mac: str, now_ns: int) -> int:
        """Remove what retention removes (under the write lock); how many versions went."""
        doomed = self.doomed(mac, now_ns)
        if not doomed:
            return 0
        with self.shelf(mac, create=False) as shelf:
            for version in doomed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(version.name, dir_fd=shelf.fd)
            emptied = len(doomed) == len(shelf.versions)
        if emptied:
            self._remove_shelf(mac)
        with self._lock:
            self.pruned += len(doomed)
        return len(doomed)

    def take_pending(self) -> list[str]:
        with self._lock:
            pending, self.pending = sorted(self.pending), set()
        return pending

    def survey(self) -> list[str]:
        """Every device with history; counts the versions and bytes kept on the way."""
        macs = self._macs()
        sizes: dict[tuple[int, int], int] = {}  # by inode: a version linked twice counts once
        versions = sum(self._measure(mac, sizes) for mac in macs)
        self.versions_kept, self.bytes_used = versions, sum(sizes.values())
        return macs

    def _measure(self, mac: str, sizes: dict[tuple[int, int], int]) -> int:
        found = 0
        with (
            contextlib.suppress(FileNotFoundError, NotADirectoryError),
            self.shelf(mac, create=False) as shelf,
        ):
            for version in shelf.versions:
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(version.name, dir_fd=shelf.fd, follow_symlinks=False)
                    sizes[(st.st_dev, st.st_ino)] = st.st_size
                    found += 1
        return found

    def _live(self, mac: str) -> bool:
        with self.directory.opened() as top:
            try:
                os.stat(f"{mac}.json", dir_fd=top, follow_symlinks=False)
            except FileNotFoundError:
                return False
        return True

    def _remove_shelf(self, mac: str) -> None:
        with self.directory.opened() as top:
            root = _open_dir(HISTORY_NAME, top, create=False)
            try:
                with contextlib.suppress(FileNotFoundError, OSError):  # not empty: a new version
                    os.rmdir(mac, dir_fd=root)
            finally:
                os.close(root)


def _link(shelf: Shelf, mac: str, version: Version) -> None:
    """The current file, never a link's target, as this version (atomic: whole or absent)."""
    os.link(
        f"{mac}.json",
        version.name,
        src_dir_fd=shelf.top,
        dst_dir_fd=shelf.fd,
        follow_symlinks=False,
    )


def _open_dir(name: str, parent: int, create: bool) -> int:
    """A directory below `parent`, never through a link; made (and the parent synced)."""
    try:
        return os.open(name, _OPEN_DIR, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise
    with contextlib.suppress(FileExistsError):  # another writer made it meanwhile
        os.mkdir(name, 0o755, dir_fd=parent)
        os.fsync(parent)
    return os.open(name, _OPEN_DIR, dir_fd=parent)


def _find(versions: list[Version], mac: str, version_id: str) -> Version:
    for version in versions:
        if version.id == version_id:
            return version
    raise VersionNotFound(mac, version_id)


def _read(fd: int, name: str, max_bytes: int, mac: str) -> tuple[Signature, bytes]:
    """A version's bytes: a regular file, no link followed, no FIFO waited for, bounded."""
    try:
        file = os.open(name, _OPEN_FILE, dir_fd=fd)
    except OSError as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ConfigUnreadable(mac, "has a version that cannot be opened") from None
    try:
        st = os.fstat(file)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            raise ConfigUnreadable(mac, "has a version that is not a readable document")
        with os.fdopen(file, "rb", closefd=False) as reader:
            return Signature.of(st), reader.read(max_bytes + 1)
    finally:
        os.close(file)


def _stored(mac: str, data: bytes) -> StoredConfig:
    try:
        content = parse_document(data)
    except InvalidJson:
        raise ConfigUnreadable(mac, "has a version that is not a JSON object") from None
    return StoredConfig(mac, data, summary_json(mac, content), etag_of(data))


def _body(mac: str, versions: list[dict[str, Any]]) -> bytes:
    body = {"mac_address": mac, "versions": versions, "count": len(versions)}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _is_mac(name: str) -> bool:
    return len(name) == 17 and re.fullmatch(r"[0-9a-f]{2}(?:-[0-9a-f]{2}){5}", name) is not None
