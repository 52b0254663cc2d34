"""ConfigStore: the configs directory. All blocking file code lives here, run in worker threads.

Writes are atomic and durable (temp file, fsync, rename, directory fsync) and serialised
across threads, processes and replicas by an flock, so conditional writes decide atomically.
The list is answered from a cache that is validated against the directory on every request:
one stat of the directory when nothing changed, a scandir and a stat of each name when it did,
and a background sweep that catches in-place rewrites (which leave the directory alone).
"""

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO, NamedTuple, ParamSpec, TypeVar, cast

import anyio.to_thread
from quart import Quart, current_app
from werkzeug.datastructures import ETags

from quart_iot.batches import BatchedThreads
from quart_iot.documents import (
    Document,
    InvalidJson,
    dump_document,
    etag_of,
    parse_document,
    summary_fields,
)
from quart_iot.errors import (
    ConfigExists,
    ConfigNotFound,
    ConfigUnreadable,
    InvalidMac,
    PreconditionFailed,
    StorageUnavailable,
)
from quart_iot.models import StorageState
from quart_iot.storagetime import timed

log = logging.getLogger(__name__)

MAC_PATTERN = r"[0-9A-Fa-f]{2}(-[0-9A-Fa-f]{2}){5}"  # also published in the OpenAPI document
_MAC = re.compile(MAC_PATTERN)
_CONFIG_NAME = re.compile(r"[0-9a-f]{2}(?:-[0-9a-f]{2}){5}\.json")
_TEMP_NAME = re.compile(r"\.[0-9a-f-]{17}\.json\.(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}\.tmp")
LOCK_NAME = ".quart_iot.lock"

# Timestamps move in coarse ticks, and replicas' clocks differ a little: a directory or file
# changed this recently may change again without its mtime moving, so it is not trusted yet.
RACY_NS = 2_000_000_000
SWEEP_INTERVAL = 0.5
STALE_TEMP_SECONDS = 300
MAX_FILE_BYTES = 16 * 1024 * 1024

_UNUSABLE_ERRNOS = {errno.ELOOP, errno.EACCES, errno.EPERM, errno.ENXIO, errno.EISDIR}

P = ParamSpec("P")
R = TypeVar("R")

# Shared by every store in the process, as anyio's threads are; apart, so that a slow fsync
# never holds up a read.
_reads = BatchedThreads()
_writes = BatchedThreads()


def canonical_mac(raw: str) -> str:
    """The lowercase MAC, or InvalidMac for anything that is not exactly six hex pairs."""
    if len(raw) != 17 or not _MAC.fullmatch(raw):
        raise InvalidMac
    return raw.lower()


@dataclass(frozen=True, slots=True)
class StoredConfig:
    """A stored document: its bytes as on disk, its list item (JSON), strong ETag (unquoted)."""

    mac: str
    raw: bytes
    summary_json: bytes
    etag: str

    @property
    def content(self) -> Document:
        """The parsed document (parsed on demand: serving it needs only its bytes)."""
        return parse_document(self.raw)

    def detail_json(self) -> bytes:
        """The Detail body: the summary and the document, as stored when that is UTF-8 JSON."""
        content = self.raw.rstrip()
        if b"\\u" in content:  # escapes (from another tool): the API serves non-ASCII as is
            content = json.dumps(self.content, ensure_ascii=False).encode()
        return self.summary_json[:-1] + b',"content":' + content + b"}"


def summary_json(mac: str, content: Document) -> bytes:
    """The list item of a document, rendered once per version of its file."""
    name, entity, ota = summary_fields(content)
    summary = {
        "mac_address": mac,
        "device_name": name,
        "device_entity_id": entity,
        "enable_ota": ota,
    }
    return json.dumps(summary, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Precondition:
    """What a write requires of the current document (from allow_overwrite and If-* headers)."""

    overwrite: bool = True
    if_match: ETags = field(default_factory=ETags)
    if_none_match: ETags = field(default_factory=ETags)

    @property
    def create_only(self) -> bool:
        return not self.overwrite or self.if_none_match.star_tag


class Signature(NamedTuple):
    """What identifies one version of a file without reading it."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "Signature":
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class _Entry:
    """What the cache knows of one `<mac>.json` name."""

    signature: Signature
    read_at: int  # monotonic ns when the read began: a later read wins
    racy: bool  # read so soon after its mtime that an identical signature proves nothing
    summary_json: bytes | None  # None: not a usable config
    etag: str | None
    problem: str | None = None


class _Unusable(Exception):
    def __init__(self, reason: str, signature: Signature) -> None:
        super().__init__(reason)
        self.reason = reason
        self.signature = signature


def _storage_reason(error: OSError) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "the configs directory is not writable"
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        return "the configs directory is missing"
    return "the configs directory cannot be used"


@contextlib.contextmanager
def _storage_errors(action: str) -> Iterator[None]:
    """Any OSError not handled closer to its cause means the directory itself is in trouble."""
    try:
        yield
    except OSError as error:
        log.warning("%s failed: %s", action, error)
        raise StorageUnavailable(_storage_reason(error)) from None


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ConfigStore:
    """Extension: one JSON document per device in `directory`, named `<mac>.json`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._owner = f"{socket.gethostname()}-{os.getpid()}"
        self._lock = threading.Lock()  # guards the fields below
        self._scan_lock = threading.Lock()  # one directory rescan at a time
        self._entries: dict[str, _Entry] = {}
        self._ignored: dict[str, int] = {}
        self._dir_signature: Signature | None = None
        self._dir_racy = True
        self._checked_at = 0  # monotonic ns when the last successful check of it began
        self._body: bytes | None = None
        self._count = 0
        self._sweeper: asyncio.Task[None] | None = None
        # Called (on the event loop, must not block) after each successful save.
        self.saved_listeners: list[Callable[[StoredConfig], None]] = []

    def init_app(self, app: Quart) -> None:
        app.extensions["config_store"] = self
        app.before_serving(self._start)
        app.after_serving(self._stop)

    # -- the async API, one worker-thread hop per call ------------------------------------

    async def list_json(self) -> bytes:
        """The list response body, `{"configs": [...], "count": n}`."""
        body, _ = await self._read(self._listing, time.monotonic_ns())
        return body

    async def count(self) -> int:
        """How many usable configs the directory holds now."""
        _, count = await self._read(self._listing, time.monotonic_ns())
        return count

    async def get(self, mac: str) -> StoredConfig:
        """The stored document of one device."""
        return await self._read(self._get, canonical_mac(mac))

    async def current_etag(self, mac: str) -> str:
        """The ETag of one device's document, without reading it when it has not changed."""
        return await self._read(self._current_etag, canonical_mac(mac))

    async def save(
        self, mac: str, content: Document, precondition: Precondition | None = None
    ) -> StoredConfig:
        """Create or replace a document, atomically and durably."""
        mac = canonical_mac(mac)
        saving = _writes.submit(
            timed(partial(self._save, mac, content, precondition or Precondition()))
        )
        saving.add_done_callback(self._saved)  # a write that happened is told, whoever waits
        return await asyncio.shield(saving)

    async def delete(self, mac: str, precondition: Precondition | None = None) -> None:
        """Remove a document."""
        mac = canonical_mac(mac)
        await asyncio.shield(
            _writes.submit(timed(partial(self._delete, mac, precondition or Precondition())))
        )

    async def health(self) -> tuple[StorageState, str | None]:
        """("read-write" | "read-only" | "unavailable", the reason when unavailable)."""
        return await self._run(self._health)

    @staticmethod
    async def _run(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        return await anyio.to_thread.run_sync(timed(lambda: func(*args, **kwargs)))

    @staticmethod
    async def _read(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """The hot reads, mostly answered from the cache: a cheaper, batched hop."""
        return await _reads.run(timed(lambda: func(*args, **kwargs)))

    def _saved(self, saving: "asyncio.Future[StoredConfig]") -> None:
        if saving.exception() is None:
            for listener in self.saved_listeners:
                listener(saving.result())

    # -- lifecycle ---------------------------------------------------------------------------

    async def _start(self) -> None:
        try:
            await self._run(self._remove_stale_temps)
        except StorageUnavailable:
            log.warning("configs directory unavailable at start; health reports it")
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def _stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self._run(self._sweep)
            except Exception:
                log.exception("sweep of the configs directory failed")

    # -- blocking code, run in worker threads ----------------------------------------------

    def _path(self, name: str) -> Path:
        return self.directory / name

    def _stat_dir(self) -> os.stat_result:
        with _storage_errors("stat of the configs directory"):
            st = os.stat(self.directory)
        if not stat.S_ISDIR(st.st_mode):
            raise StorageUnavailable("the configs directory is not a directory")
        return st

    def _health(self) -> tuple[StorageState, str | None]:
        try:
            self._stat_dir()
            with os.scandir(self.directory) as entries:
                next(entries, None)
        except StorageUnavailable as error:
            return "unavailable", error.reason
        except OSError:
            return "unavailable", "the configs directory is not readable"
        return ("read-write" if os.access(self.directory, os.W_OK) else "read-only"), None

    def _listing(self, arrived: int) -> tuple[bytes, int]:
        """The list body and count, as the directory was at some moment after `arrived`."""
        with self._scan_lock:
            # A check that began after this request arrived saw every change made before:
            # requests that queued behind one check (a long rescan) share it.
            if self._checked_at <= arrived:
                checking = time.monotonic_ns()
                self._check_directory()
                self._checked_at = checking
            with self._lock:
                if self._body is None:
                    self._body, self._count = self._render()
                return self._body, self._count

    def _check_directory(self) -> None:
        started = time.time_ns()
        st = self._stat_dir()
        signature = Signature.of(st)
        if signature != self._dir_signature or self._dir_racy:
            with _storage_errors("scan of the configs directory"):
                self._rescan()
            self._dir_signature = signature
            self._dir_racy = started - st.st_mtime_ns < RACY_NS

    def _rescan(self) -> None:
        seen, stale, ignored = self._scan()
        self._warn_ignored(ignored)
        for name in stale:
            with contextlib.suppress(FileNotFoundError):
                self._refresh(name)
        with self._lock:
            for name in self._entries.keys() - seen:
                del self._entries[name]
                self._body = None

    def _scan(self) -> tuple[set[str], list[str], dict[str, int]]:
        """Every config name, those whose entry is stale, and the inode of every other name."""
        seen: set[str] = set()
        stale: list[str] = []
        ignored: dict[str, int] = {}
        # On a descriptor, each entry's stat is a cheap fstatat.
        with self._opened_dir() as fd, os.scandir(fd) as entries:
            for item in entries:
                if _CONFIG_NAME.fullmatch(item.name):
                    with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                        if self._stale(item.name, item.stat(follow_symlinks=False)):
                            stale.append(item.name)
                        seen.add(item.name)
                elif item.name != LOCK_NAME and not _TEMP_NAME.fullmatch(item.name):
                    ignored[item.name] = item.inode()
        return seen, stale, ignored

    def _stale(self, name: str, st: os.stat_result) -> bool:
        # The whole signature, not just the inode: a name replaced twice since the last
        # scan can get its first inode back (ext4 reuses a freed inode at once).
        entry = self._entries.get(name)
        return entry is None or entry.signature != Signature.of(st) or entry.racy

    def _warn_ignored(self, ignored: dict[str, int]) -> None:
        for name, inode in ignored.items():
            if self._ignored.get(name) != inode:
                log.warning("ignoring %r in the configs directory: not named <mac>.json", name)
        self._ignored = ignored

    def _render(self) -> tuple[bytes, int]:
        parts = [e.summary_json for _, e in sorted(self._entries.items()) if e.summary_json]
        body = b'{"configs":[' + b",".join(parts) + b'],"count":' + str(len(parts)).encode()
        return body + b"}", len(parts)

    def _sweep(self) -> None:
        try:
            with self._opened_dir() as fd:
                self._sweep_in(fd)
        except OSError:
            return  # the directory is in trouble; health and requests report it

    def _sweep_in(self, fd: int) -> None:
        for name, entry in list(self._entries.items()):
            try:
                # Relative to the directory: building a path per name doubled the sweep's cost.
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if Signature.of(st) != entry.signature or entry.racy:
                    self._refresh(name)
            except FileNotFoundError:
                continue  # gone: the directory changed, and the next list rescans it
            except OSError:
                return  # the directory is in trouble; health and requests report it

    def _refresh(self, name: str) -> StoredConfig | None:
        """Read one file into the cache; the document when it is usable."""
        read_at = time.monotonic_ns()
        started = time.time_ns()
        try:
            signature, data = self._read_file(name)
        except _Unusable as error:
            racy = started - error.signature.mtime_ns < RACY_NS
            self._remember(name, _Entry(error.signature, read_at, racy, None, None, error.reason))
            return None
        known = self._entries.get(name)
        if known and known.signature == signature and not known.racy and known.summary_json:
            # The very bytes the cache was made from: they were strict JSON then.
            return StoredConfig(name[:-5], data, known.summary_json, etag_of(data))
        racy = started - signature.mtime_ns < RACY_NS
        try:
            content = parse_document(data)
        except InvalidJson as error:
            self._remember(name, _Entry(signature, read_at, racy, None, None, str(error)))
            return None
        document = StoredConfig(name[:-5], data, summary_json(name[:-5], content), etag_of(data))
        self._remember(name, self._entry_for(document, signature, read_at, racy))
        return document

    @staticmethod
    def _entry_for(doc: StoredConfig, signature: Signature, read_at: int, racy: bool) -> _Entry:
        return _Entry(signature, read_at, racy, doc.summary_json, doc.etag)

    def _remember(self, name: str, entry: _Entry) -> None:
        with self._lock:
            old = self._entries.get(name)
            if old is not None and old.read_at > entry.read_at:
                return  # a newer read got here first
            self._entries[name] = entry
            if old is None or old.summary_json != entry.summary_json:
                self._body = None
        if entry.problem and (old is None or old.signature != entry.signature):
            log.warning("skipping config file %r: %s", name, entry.problem)

    def _forget(self, name: str) -> None:
        with self._lock:
            if self._entries.pop(name, None) is not None:
                self._body = None

    def _read_file(self, name: str) -> tuple[Signature, bytes]:
        """The bytes of a regular file, never following a link and never blocking on a FIFO."""
        path = self._path(name)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except OSError as error:
            if error.errno not in _UNUSABLE_ERRNOS:
                raise
            raise _Unusable(error.strerror or "cannot be opened", self._lstat(path)) from None
        try:
            st = os.fstat(fd)
            signature = Signature.of(st)
            if not stat.S_ISREG(st.st_mode):
                raise _Unusable("not a regular file", signature)
            if st.st_size > MAX_FILE_BYTES:
                raise _Unusable("larger than 16 MiB", signature)
            with os.fdopen(fd, "rb", closefd=False) as file:
                return self._read_stable(fd, file, signature)
        finally:
            os.close(fd)

    @staticmethod
    def _read_stable(fd: int, file: BinaryIO, signature: Signature) -> tuple[Signature, bytes]:
        """The bytes, and a signature taken before and after reading them (so they match)."""
        data = file.read(MAX_FILE_BYTES + 1)
        for _ in range(2):  # rewritten in place meanwhile: read again
            after = Signature.of(os.fstat(fd))
            if after == signature:
                break
            file.seek(0)
            signature, data = after, file.read(MAX_FILE_BYTES + 1)
        return signature, data

    @staticmethod
    def _lstat(path: Path) -> Signature:
        return Signature.of(os.lstat(path))

    def _get(self, mac: str) -> StoredConfig:
        name = f"{mac}.json"
        with _storage_errors(f"read of {name}"):
            try:
                document = self._refresh(name)
            except FileNotFoundError:
                self._stat_dir()
                self._forget(name)
                raise ConfigNotFound(mac) from None
        if document is None:
            raise ConfigUnreadable(mac)
        return document

    def _current_etag(self, mac: str) -> str:
        name = f"{mac}.json"
        with _storage_errors(f"stat of {name}"):
            try:
                signature = self._lstat(self._path(name))
            except FileNotFoundError:
                signature = None
        entry = self._entries.get(name)
        if signature and entry and entry.signature == signature and entry.etag and not entry.racy:
            return entry.etag
        return self._get(mac).etag

    def _save(self, mac: str, content: Document, precondition: Precondition) -> StoredConfig:
        data = dump_document(content)
        name = f"{mac}.json"
        with _storage_errors(f"write of {name}"):
            temp, fd = self._write_temp(name, data)
            try:
                with self._locked():
                    self._check(mac, precondition)
                    self._install(temp, name, precondition)
                signature = Signature.of(os.fstat(fd))
            finally:
                os.close(fd)
                _unlink_quietly(temp)
            self._fsync_dir()
        document = StoredConfig(mac, data, summary_json(mac, content), etag_of(data))
        self._remember(name, self._entry_for(document, signature, time.monotonic_ns(), True))
        return document

    def _write_temp(self, name: str, data: bytes) -> tuple[Path, int]:
        temp = self._path(f".{name}.{self._owner}-{secrets.token_hex(4)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o644)
        try:
            os.fchmod(fd, 0o644)  # whatever the umask: other replicas and backups must read it
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(temp)
            raise
        return temp, fd

    def _install(self, temp: Path, name: str, precondition: Precondition) -> None:
        target = self._path(name)
        if not precondition.create_only:
            os.rename(temp, target)
            return
        try:
            os.link(temp, target)  # atomic: fails if the name exists, whoever created it
        except FileExistsError:
            if precondition.if_none_match.star_tag:
                raise PreconditionFailed(name[:-5], "If-None-Match") from None
            raise ConfigExists(name[:-5]) from None
        os.unlink(temp)

    def _check(self, mac: str, precondition: Precondition) -> None:
        if_match, if_none_match = precondition.if_match, precondition.if_none_match
        if not if_match and not if_none_match:
            return
        current = self._etag_under_lock(f"{mac}.json")
        if if_match and not (current and (if_match.star_tag or if_match.contains(current))):
            raise PreconditionFailed(mac, "If-Match")
        if if_none_match and current and if_none_match.contains_weak(current):
            raise PreconditionFailed(mac, "If-None-Match")

    def _etag_under_lock(self, name: str) -> str | None:
        try:
            return etag_of(self._read_file(name)[1])
        except FileNotFoundError:
            return None
        except _Unusable:
            return ""  # present, but has no ETag a client could hold

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise check-and-write across threads, processes and replicas sharing the dir."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self._path(LOCK_NAME), flags, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _fsync_dir(self) -> None:
        with self._opened_dir() as fd:
            os.fsync(fd)

    @contextlib.contextmanager
    def _opened_dir(self) -> Iterator[int]:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)

    def _delete(self, mac: str, precondition: Precondition) -> None:
        name = f"{mac}.json"
        with _storage_errors(f"delete of {name}"):
            with self._locked():
                self._check(mac, precondition)
                try:
                    os.unlink(self._path(name))
                except FileNotFoundError:
                    raise ConfigNotFound(mac) from None
                except IsADirectoryError:
                    raise ConfigUnreadable(mac) from None
            self._fsync_dir()
        self._forget(name)

    def _remove_stale_temps(self) -> None:
        """Remove temp files that a crashed writer left behind (never a live writer's)."""
        host, now = socket.gethostname(), time.time()
        with _storage_errors("clean-up of temp files"), os.scandir(self.directory) as entries:
            for item in entries:
                match = _TEMP_NAME.fullmatch(item.name)
                if match and self._is_stale(match, item, host, now):
                    log.info("removing %r left by an interrupted write", item.name)
                    _unlink_quietly(Path(item.path))

    @staticmethod
    def _is_stale(match: re.Match[str], item: os.DirEntry[str], host: str, now: float) -> bool:
        pid = int(match["pid"])
        if match["host"] == host and (pid == os.getpid() or not _pid_alive(pid)):
            return True
        try:
            return now - item.stat(follow_symlinks=False).st_mtime > STALE_TEMP_SECONDS
        except FileNotFoundError:
            return False


def current_store() -> ConfigStore:
    """The ConfigStore of the running app."""
    return cast(ConfigStore, current_app.extensions["config_store"])
