"""The history area's files: `.history/<mac>/`, one shelf per device, one file per version.

A version is a hard link to a document file (the service never writes a file in place, so a
linked file never changes). Its name carries its metadata:
`<ns since the epoch, 19 digits>-<8 hex>.<created|updated|deleted>.json`. Who wrote it, when
access control is on, and the bulk change that wrote it (issue 21), is a symbolic link beside
it, `<id>.subject`, whose target is the subject as a JSON string (or `{"subject",
"changeId"}`): made before the version and never followed, it costs no data write and no fsync
of its own (the shelf's fsync makes both durable). A document a delete is removing is held as
`<id>.deleting`, which no reader lists, until the delete happened; only then does it become the
`deleted` version (`Shelf.settle` finishes or undoes the deletes a crash interrupted).

Plain blocking functions, run in worker threads. Every name is built from a canonical MAC
and a version id that fully matched VERSION_PATTERN, relative to descriptors opened without
following links: nothing outside the history area is ever touched.
"""

import bisect
import contextlib
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from quart_iot.documents import InvalidJson, parse_document
from quart_iot.errors import ConfigUnreadable, VersionNotFound
from quart_iot.identifiers import VERSION_PATTERN
from quart_iot.store.directory.files import HISTORY_NAME, Directory, Signature
from quart_iot.store.records import StoredConfig

_FILE = re.compile(rf"(?P<id>{VERSION_PATTERN})\.(?P<change>created|updated|deleted)\.json")
SUBJECT_CHARS = 255  # OpenID Connect's limit for `sub`; its JSON fits a link's target
_SUBJECT = ".subject"
_SUBJECT_NAME = re.compile(rf"{VERSION_PATTERN}\.subject")
_HELD = ".deleting"
_MARK, _MARK_NEW = ".newest", ".newest.new"
_HELD_NAME = re.compile(rf"(?P<id>{VERSION_PATTERN})\.deleting")
_MAC_NAME = re.compile(r"[0-9a-f]{2}(?:-[0-9a-f]{2}){5}")
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


class Shelf:
    """One device's history directory as it was found (under the lock, for a write).

    A write never lists it: the newest id issued is its mark (`.newest`, a symbolic link
    whose target is that version's name, replaced atomically with each id issued), so a
    save costs the same at 10 versions or 10,000. Reads and retention list it, once."""

    def __init__(self, fd: int, top: int) -> None:
        self.fd = fd
        self.top = top  # the configs directory
        self._listed: tuple[list[str], set[str], list[str]] | None = None

    def _listing(self) -> tuple[list[str], set[str], list[str]]:
        """(the versions' names in time order, the ids with a subject, the held ids), from
        one listing made when first needed (a cached listing never is)."""
        if self._listed is None:
            entries = os.listdir(self.fd)
            names = sorted(name for name in entries if name.endswith(".json"))
            signed = {name[:28] for name in entries if _SUBJECT_NAME.fullmatch(name)}
            held = [match["id"] for name in entries if (match := _HELD_NAME.fullmatch(name))]
            self._listed = names, signed, held
        return self._listed

    @property
    def names(self) -> list[str]:
        """The versions' file names. They sort in time order (fixed-length ids first)."""
        return self._listing()[0]

    @property
    def signed(self) -> set[str]:
        """The ids that have a subject."""
        return self._listing()[1]

    @property
    def versions(self) -> list[Version]:
        """Every version, oldest first."""
        parsed = (Version.parse(name) for name in self.names)
        return [version for version in parsed if version is not None]

    def newest(self) -> Version | None:
        return next(filter(None, map(Version.parse, reversed(self.names))), None)

    def find(self, mac: str, version_id: str) -> Version:
        for version in self.versions:
            if version.id == version_id:
                return version
        raise VersionNotFound(mac, version_id)

    # -- the mark: the newest id issued, without a listing --------------------------------

    def newest_name(self) -> str | None:
        """The name of the newest version issued (it may be held, or not linked after a
        crash): the mark, or for a shelf from before marks, a listing."""
        with contextlib.suppress(OSError):
            marked = os.readlink(_MARK, dir_fd=self.fd)
            if Version.parse(marked):
                return marked
        listed = [version.name for version in [self.newest()] if version]
        listed += [f"{version_id}.deleted.json" for version_id in self._listing()[2]]
        return max(listed, default=None)

    def issue(self, change: str) -> Version:
        """A new version, later than every one issued, whatever the clocks of the replicas
        say; the mark names it before it exists, so no later id can be missed."""
        now = time.time_ns()
        newest = self.newest_name()
        if newest is not None:
            now = max(now, int(newest[:19]) + 1)
        version = Version(f"{now:019d}-{secrets.token_hex(4)}", change)
        self._mark(version.name)
        return version

    def _mark(self, name: str) -> None:
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(_MARK_NEW, dir_fd=self.fd)  # left by a crash
            os.symlink(name, _MARK_NEW, dir_fd=self.fd)
            os.rename(_MARK_NEW, _MARK, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except OSError:  # without a mark, the next write lists the shelf: slower, as right
            with contextlib.suppress(OSError):
                os.unlink(_MARK, dir_fd=self.fd)

    def is_newest(self, current: os.stat_result) -> bool:
        """Whether the current document is the newest version already: two stats, or where
        the newest id issued names no file (a delete undone, a crash), a listing."""
        newest = self.newest_name()
        if newest is None:
            return False
        try:
            return os.path.samestat(self._stat(newest), current)
        except FileNotFoundError:
            pass
        version = self.newest()
        try:
            return version is not None and os.path.samestat(self.stat(version), current)
        except FileNotFoundError:
            return False

    # -- versions ----------------------------------------------------------------------------

    def link(self, mac: str, version: Version) -> None:
        """The current file, never a link's target, as this version (atomic: whole or
        absent)."""
        os.link(
            f"{mac}.json",
            version.name,
            src_dir_fd=self.top,
            dst_dir_fd=self.fd,
            follow_symlinks=False,
        )
        if self._listed is not None:
            self._listed[0].append(version.name)

    def held(self) -> list[str]:
        """Ids of the documents deletes hold (a crash, or a failed unlink, left them). Only
        the newest id can be one: a write settles the shelf before it issues another."""
        newest = self.newest_name()
        if self._listed is None and newest is not None:
            held = newest[:28]
            with contextlib.suppress(FileNotFoundError):
                self._stat(held + _HELD)
                return [held]
            return []
        return list(self._listing()[2])

    def hold(self, mac: str, version_id: str) -> None:
        """The current file, under a name no reader lists, before a delete removes it."""
        os.link(
            f"{mac}.json",
            version_id + _HELD,
            src_dir_fd=self.top,
            dst_dir_fd=self.fd,
            follow_symlinks=False,
        )

    def release(self, version_id: str, change: str) -> Version:
        """The held document becomes a version (atomic: a rename within the shelf)."""
        version = Version(version_id, change)
        os.rename(version_id + _HELD, version.name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        if self._listed is not None:
            bisect.insort(self._listed[0], version.name)
        self._forget_held(version_id)
        return version

    def drop(self, version_id: str) -> None:
        """The held document goes, with its subject (its delete did not happen)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(version_id + _HELD, dir_fd=self.fd)
        self._forget_held(version_id)
        self.unsign(version_id)

    def _forget_held(self, version_id: str) -> None:
        if self._listed is not None and version_id in self._listed[2]:
            self._listed[2].remove(version_id)

    def settle(self, mac: str) -> None:
        """Finish or undo the deletes that were interrupted: a `deleted` version only where
        the document is gone (under the write lock)."""
        for version_id in self.held():
            held = self._stat(version_id + _HELD)
            current = self.current(mac)
            if current is None:
                self.release(version_id, "deleted")
            elif os.path.samestat(current, held):
                self.drop(version_id)  # the document is still there: nothing was deleted
            else:  # replaced since, by hand: it was current once; deleted, nobody can tell
                self.release(version_id, "updated")

    def unlink(self, version: Version) -> None:
        """Remove a version and its subject."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(version.name, dir_fd=self.fd)
        if self._listed is not None and version.name in self._listed[0]:
            self._listed[0].remove(version.name)
        self.unsign(version.id)

    def sign(self, version_id: str, subject: str | None, change_id: str | None = None) -> None:
        """Record who makes the version, and the bulk change it is part of (before it is
        linked: it never shows without). The link's target: the subject as a JSON string, or
        `{"subject", "changeId"}` for a version a bulk change writes."""
        readable = None
        if subject is not None:  # no lone surrogate
            readable = subject[:SUBJECT_CHARS].encode("utf-8", "replace").decode()
        # ASCII, no NUL: any string fits a link's target
        signature = readable if change_id is None else {"subject": readable, "changeId": change_id}
        os.symlink(json.dumps(signature), version_id + _SUBJECT, dir_fd=self.fd)
        if self._listed is not None:
            self._listed[1].add(version_id)

    def unsign(self, version_id: str) -> None:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):  # a directory: not ours
            os.unlink(version_id + _SUBJECT, dir_fd=self.fd)
        if self._listed is not None:
            self._listed[1].discard(version_id)

    def subject(self, version: Version) -> str | None:
        """Who made the version; None when nobody signed it (access control off, an edit
        outside the service) or the link is not one the service made."""
        value = self._signature(version.id)
        if isinstance(value, dict):
            value = value.get("subject")
        return value if isinstance(value, str) else None

    def change_id(self, version: Version) -> str | None:
        """The bulk change that wrote the version (None: none did)."""
        value = self._signature(version.id)
        found = value.get("changeId") if isinstance(value, dict) else None
        return found if isinstance(found, str) else None

    def _signature(self, version_id: str) -> object:
        try:
            return json.loads(os.readlink(version_id + _SUBJECT, dir_fd=self.fd))
        except (OSError, ValueError):
            return None

    def orphans(self) -> set[str]:
        """Ids of subjects whose version was never linked (a crash between the two)."""
        return self.signed - {version.id for version in self.versions}

    def stat(self, version: Version) -> os.stat_result:
        return self._stat(version.name)

    def _stat(self, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def current(self, mac: str) -> os.stat_result | None:
        """The device's document as it is now (None when there is none)."""
        try:
            return os.stat(f"{mac}.json", dir_fd=self.top, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def read(self, version: Version, max_bytes: int, mac: str) -> tuple[Signature, bytes]:
        """A version's bytes: a regular file, no link followed, no FIFO waited for, bounded."""
        try:
            file = os.open(version.name, _OPEN_FILE, dir_fd=self.fd)
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


class Shelves:
    """The history area of a configs directory: opens each device's shelf, safely."""

    def __init__(self, directory: Directory) -> None:
        self.directory = directory

    @contextlib.contextmanager
    def opened(self, mac: str, create: bool = False) -> Iterator[Shelf]:
        """The device's shelf (FileNotFoundError or NotADirectoryError when it has none);
        made, durably, when `create` (its first version)."""
        with self.directory.opened() as top:
            root = _open_dir(HISTORY_NAME, top, create)
            try:
                fd = _open_dir(mac, root, create)
            finally:
                os.close(root)
            try:
                yield Shelf(fd, top)
            finally:
                os.close(fd)

    def fsync(self, mac: str) -> None:
        """fsync the device's shelf, if it has one."""
        with contextlib.suppress(FileNotFoundError), self._fd(mac) as fd:
            os.fsync(fd)

    def macs(self) -> list[str]:
        """Every device with a shelf, in order."""
        with self.directory.opened() as top:
            try:
                root = _open_dir(HISTORY_NAME, top, create=False)
            except (FileNotFoundError, NotADirectoryError):
                return []
        try:
            return sorted(name for name in os.listdir(root) if _MAC_NAME.fullmatch(name))
        finally:
            os.close(root)

    def live(self, mac: str) -> bool:
        """Whether the device has a document now."""
        try:
            self.directory.lstat(f"{mac}.json")
        except FileNotFoundError:
            return False
        return True

    def remove(self, mac: str) -> None:
        """Remove an empty shelf, its mark with it (under the write lock: a shelf with a new
        version, or a file not ours, stays)."""
        with self.directory.opened() as top:
            root = _open_dir(HISTORY_NAME, top, create=False)
            try:
                with self.opened(mac) as shelf, contextlib.suppress(OSError):
                    for mark in (_MARK, _MARK_NEW):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(mark, dir_fd=shelf.fd)
                with contextlib.suppress(OSError):
                    os.rmdir(mac, dir_fd=root)
            finally:
                os.close(root)

    @contextlib.contextmanager
    def _fd(self, mac: str) -> Iterator[int]:
        with self.opened(mac) as shelf:
            yield shelf.fd


def stored_version(mac: str, data: bytes) -> StoredConfig:
    """A version's bytes as a stored document (ConfigUnreadable if they are not one)."""
    try:
        content = parse_document(data)
    except InvalidJson:
        raise ConfigUnreadable(mac, "has a version that is not a JSON object") from None
    return StoredConfig.of_bytes(mac, data, content)


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
