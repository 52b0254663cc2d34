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
    DocumentTooLarge,
    InvalidMac,
    PreconditionFailed,
    StorageUnavailable,
    WriteNotConfirmed,
    WriteOutlived,
    WritesBlocked,
)
from quart_iot.models import StorageState
from quart_iot.settings import Settings
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
TEMP_SWEEP_INTERVAL = 60.0
STALE_TEMP_SECONDS = 300
DEFAULT_MAX_BYTES = 1024 * 1024  # MAX_CONTENT_LENGTH's default: the body and the file limit
DEFAULT_LOCK_TIMEOUT = 5.0
REMIND_SECONDS = 60.0

_UNUSABLE_ERRNOS = {errno.ELOOP, errno.EACCES, errno.EPERM, errno.ENXIO, errno.EISDIR}

P = ParamSpec("P")
R = TypeVar("R")

# Shared by every store in the process, as anyio's threads are; apart, so that a slow fsync
# never holds up a read, and lists (which may wait for a long rescan) never hold the threads
# of gets. One list worker: every list queued behind a rescan shares it.
_reads = BatchedThreads()
_lists = BatchedThreads(workers=1)
_writes = BatchedThreads()


def stop_worker_threads(timeout: float | None = None) -> bool:
    """End the worker threads once their calls are done (a write in progress ends first)."""
    ended = [pool.close(timeout) for pool in (_writes, _lists, _reads)]  # each, not the first
    return all(ended)


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

    signature: Signature | None  # None: seen absent (a tombstone)
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


class _Outage:
    """Logs when reads (or writes) of the directory start failing and when they work again.

    Not one line per failed request: a 150 s outage under load logged 33,380 identical lines.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._since: float | None = None
        self._reminded = 0.0
        self._lock = threading.Lock()

    @property
    def failing(self) -> bool:
        return self._since is not None

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


@contextlib.contextmanager
def _storage_errors(action: str, outage: _Outage) -> Iterator[None]:
    """Any OSError not handled closer to its cause means the directory itself is in trouble."""
    try:
        yield
    except OSError as error:
        reason = _storage_reason(error)
        outage.failed(reason, f"{action} failed: {error}")
        raise StorageUnavailable(reason) from None


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

    def __init__(
        self,
        directory: Path,
        *,
        max_document_bytes: int = DEFAULT_MAX_BYTES,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        self.directory = directory
        # One limit for what a PUT may store and what a read accepts: what we accept we can
        # read back (both come from MAX_CONTENT_LENGTH).
        self.max_document_bytes = max_document_bytes
        self.lock_timeout = lock_timeout
        self._owner = f"{socket.gethostname()}-{os.getpid()}"
        self._reads_outage = _Outage("reads")
        self._writes_outage = _Outage("writes")
        self.writes_blocked = False  # the last wait for the write lock timed out
        self.sync_fault: str | None = None  # a directory fsync failed after a change
        self._writing: set[str] = set()  # this process's temp files being written
        self._lock = threading.Lock()  # guards the fields below
        self._scan_lock = threading.Lock()  # one directory rescan at a time
        self._entries: dict[str, _Entry] = {}
        self._ignored: dict[str, int] = {}
        self._dir_signature: Signature | None = None
        self._dir_racy = True
        self._checked_at = 0  # monotonic ns when the last successful check of it began
        self._scanned_at = 0  # monotonic ns when the last rescan began
        self._body: bytes | None = None
        self._count = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._gave_up: asyncio.Future[None] | None = None  # done: the stop stops waiting
        # Called (on the event loop, must not block) after each successful save.
        self.saved_listeners: list[Callable[[StoredConfig], None]] = []
        # Called on the event loop with (mac, ETag or None when gone or unusable) whenever the
        # store sees a document change: a write of this process at once, another process's
        # or an outside edit at the next sweep (SWEEP_INTERVAL). Must not block.
        self.change_listeners: list[Callable[[str, str | None], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._primed = False  # a full scan happened: a name not in the cache now is new

    @classmethod
    def from_settings(cls, settings: Settings) -> "ConfigStore":
        return cls(
            settings.esp32_configs_dir,
            max_document_bytes=settings.max_content_length,  # a body's limit is a file's too
            lock_timeout=settings.lock_timeout,
        )

    def init_app(self, app: Quart) -> None:
        app.extensions["config_store"] = self
        app.before_serving(self._start)
        app.after_serving(self._stop)

    # -- the async API, one worker-thread hop per call ------------------------------------

    async def list_json(self) -> bytes:
        """The list response body, `{"configs": [...], "count": n}`."""
        body, _ = await _lists.run(timed(partial(self._listing, time.monotonic_ns())))
        return body

    async def count(self) -> int:
        """How many usable configs the directory holds now."""
        _, count = await _lists.run(timed(partial(self._listing, time.monotonic_ns())))
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
        deadline = time.monotonic() + self.lock_timeout  # a wait in the queue counts too
        condition = precondition or Precondition()
        saving = _writes.submit(timed(partial(self._save, mac, content, condition, deadline)))
        saving.add_done_callback(self._saved)  # a write that happened is told, whoever waits
        return await self._written(saving)

    async def delete(self, mac: str, precondition: Precondition | None = None) -> None:
        """Remove a document."""
        mac = canonical_mac(mac)
        deadline = time.monotonic() + self.lock_timeout
        condition = precondition or Precondition()
        deleting = _writes.submit(timed(partial(self._delete, mac, condition, deadline)))
        await self._written(deleting)

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

    async def _written(self, writing: "asyncio.Future[R]") -> R:
        """The write's outcome. Cancelling the wait leaves the write running, as a stop does."""
        loop = asyncio.get_running_loop()
        if self._gave_up is None or self._gave_up.get_loop() is not loop:
            self._gave_up = loop.create_future()
        await asyncio.wait((writing, self._gave_up), return_when=asyncio.FIRST_COMPLETED)
        if not writing.done():
            raise WriteOutlived
        return writing.result()

    def give_up_writes(self) -> None:
        """Answer the writes still running now (the stop's deadline passed); they go on."""
        if self._gave_up is not None and not self._gave_up.done():
            self._gave_up.set_result(None)

    def _saved(self, saving: "asyncio.Future[StoredConfig]") -> None:
        error = saving.exception()
        if error is None or isinstance(error, SaveNotConfirmed):  # visible either way
            stored = saving.result() if error is None else error.stored
            for listener in self.saved_listeners:
                listener(stored)

    # -- lifecycle ---------------------------------------------------------------------------

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        with contextlib.suppress(StorageUnavailable):  # logged; health reports it
            await self._run(self._remove_stale_temps)
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def _stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep_forever(self) -> None:
        temps_swept = time.monotonic()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self._run(self._sweep)
                # Crashed replicas' temp files too: in Kubernetes no pod restarts with their
                # host name, so waiting for "our" next start would keep them forever.
                if time.monotonic() - temps_swept >= TEMP_SWEEP_INTERVAL:
                    temps_swept = time.monotonic()
                    await self._run(self._remove_stale_temps)
            except StorageUnavailable:
                pass  # the outage is logged once, and health and requests report it
            except Exception:
                log.exception("sweep of the configs directory failed")

    # -- blocking code, run in worker threads ----------------------------------------------

    def _path(self, name: str) -> Path:
        return self.directory / name

    def _stat_dir(self) -> os.stat_result:
        with _storage_errors("stat of the configs directory", self._reads_outage):
            st = os.stat(self.directory)
        if not stat.S_ISDIR(st.st_mode):
            self._reads_outage.failed("the configs directory is not a directory")
            raise StorageUnavailable("the configs directory is not a directory")
        return st

    def _health(self) -> tuple[StorageState, str | None]:
        try:
            self._stat_dir()
            with os.scandir(self.directory) as entries:
                next(entries, None)
        except StorageUnavailable as error:
            return "unavailable", error.reason
        except OSError as error:
            self._reads_outage.failed("the configs directory is not readable", error)
            return "unavailable", "the configs directory is not readable"
        self._reads_outage.recovered()
        if self.sync_fault and not self._sync_recovers():
            return "unavailable", self.sync_fault
        if not os.access(self.directory, os.W_OK):
            return "read-only", None
        return ("writes-blocked" if self._lock_still_blocked() else "read-write"), None

    def _sync_recovers(self) -> bool:
        """Whether a directory fsync works again (it failed after a change)."""
        try:
            self._fsync_dir()
        except OSError:
            return False
        self.sync_fault = None
        return True

    def _lock_still_blocked(self) -> bool:
        """After a write timed out on the lock: is the lock still held? (Probed, not waited.)"""
        if not self.writes_blocked:
            return False
        try:
            with self._lock_file() as fd:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False  # no lock file, or none we may open: health says what else is wrong
        self.writes_blocked = False
        return False

    def _listing(self, arrived: int) -> tuple[bytes, int]:
        """The list body and count, as the directory was at some moment after `arrived`."""
        with self._scan_lock:
            # A check that began after this request arrived saw every change made before:
            # requests that queued behind one check (a long rescan) share it.
            if self._checked_at <= arrived:
                checking = time.monotonic_ns()
                self._check_directory()
                self._checked_at = checking
                self._reads_outage.recovered()
            with self._lock:
                if self._body is None:
                    self._body, self._count = self._render()
                return self._body, self._count

    def _check_directory(self) -> None:
        started = time.time_ns()
        st = self._stat_dir()
        signature = Signature.of(st)
        if signature != self._dir_signature or self._dir_racy:
            with _storage_errors("scan of the configs directory", self._reads_outage):
                self._rescan()
            self._dir_signature = signature
            self._dir_racy = started - st.st_mtime_ns < RACY_NS

    def _rescan(self) -> None:
        started = time.monotonic_ns()
        seen, stale, ignored = self._scan()
        self._warn_ignored(ignored)
        for name in stale:
            with contextlib.suppress(FileNotFoundError):
                self._refresh(name)
        with self._lock:
            for name in self._entries.keys() - seen:
                # A name saved after the scan began may be missing from it: not gone.
                if self._entries[name].read_at < started:
                    if self._entries.pop(name).etag is not None:
                        self._changed(name, None)
                    self._body = None
            self._scanned_at = started
        self._primed = True

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
            # Names created or removed by other processes, as a list would see them (one stat
            # of the directory when nothing changed), then files rewritten in place.
            self._listing(time.monotonic_ns())
            with self._opened_dir() as fd:
                self._sweep_in(fd)
        except (OSError, StorageUnavailable):
            return  # the directory is in trouble; health and requests report it

    def _sweep_in(self, fd: int) -> None:
        for name, entry in list(self._entries.items()):
            looked = time.monotonic_ns()
            try:
                # Relative to the directory: building a path per name doubled the sweep's cost.
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if Signature.of(st) != entry.signature or entry.racy:
                    self._refresh(name)
            except FileNotFoundError:
                if entry.signature is not None:
                    self._forget(name, looked)
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

    def _remember(self, name: str, entry: _Entry, written: bool = False) -> None:
        with self._lock:
            old = self._entries.get(name)
            if old is not None and old.read_at > entry.read_at:
                return  # a newer read got here first
            if old is None and entry.read_at < self._scanned_at:
                return  # a scan that began after this read found no such name
            self._entries[name] = entry
            if old is None or old.summary_json != entry.summary_json:
                self._body = None
        # Before the first scan, a name new to the cache is news only when we wrote it.
        news = old is not None or self._primed or written
        if news and (old.etag if old else None) != entry.etag:
            self._changed(name, entry.etag)
        if entry.problem and (old is None or old.signature != entry.signature):
            log.warning("skipping config file %r: %s", name, entry.problem)

    def _forget(self, name: str, observed_at: int) -> None:
        """The name was seen absent at `observed_at` (monotonic ns): unless a later look saw it."""
        with self._lock:
            old = self._entries.get(name)
            if old is not None and old.read_at > observed_at:
                return  # re-created, and seen, after this look: a slow delete must not hide it
            # A tombstone, not a removal: a read that began before it cannot put the name back,
            # and the sweep still stats the name, so a file created there again is found.
            self._entries[name] = _Entry(None, observed_at, False, None, None)
            if old is not None and old.summary_json:
                self._body = None
        if old is not None and old.etag is not None:
            self._changed(name, None)

    def _changed(self, name: str, etag: str | None) -> None:
        """Tell the change listeners, on the event loop (called from any thread)."""
        if self._loop is not None and self.change_listeners:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody listens
                self._loop.call_soon_threadsafe(self._tell_changed, name[:-5], etag)

    def _tell_changed(self, mac: str, etag: str | None) -> None:
        for listener in self.change_listeners:
            listener(mac, etag)

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
            if st.st_size > self.max_document_bytes:
                limit = f"larger than MAX_CONTENT_LENGTH ({self.max_document_bytes} bytes)"
                raise _Unusable(limit, signature)
            with os.fdopen(fd, "rb", closefd=False) as file:
                return self._read_stable(fd, file, signature)
        finally:
            os.close(fd)

    def _read_stable(
        self, fd: int, file: BinaryIO, signature: Signature
    ) -> tuple[Signature, bytes]:
        """The bytes, and a signature taken before and after reading them (so they match)."""
        data = file.read(self.max_document_bytes + 1)
        for _ in range(2):  # rewritten in place meanwhile: read again
            after = Signature.of(os.fstat(fd))
            if after == signature:
                break
            file.seek(0)
            signature, data = after, file.read(self.max_document_bytes + 1)
        return signature, data

    @staticmethod
    def _lstat(path: Path) -> Signature:
        return Signature.of(os.lstat(path))

    def _get(self, mac: str) -> StoredConfig:
        name = f"{mac}.json"
        started = time.monotonic_ns()
        with _storage_errors(f"read of {name}", self._reads_outage):
            try:
                document = self._refresh(name)
            except FileNotFoundError:
                self._stat_dir()
                self._forget(name, started)
                raise ConfigNotFound(mac) from None
        self._reads_outage.recovered()
        if document is None:
            raise ConfigUnreadable(mac)
        return document

    def _current_etag(self, mac: str) -> str:
        name = f"{mac}.json"
        with _storage_errors(f"stat of {name}", self._reads_outage):
            try:
                signature = self._lstat(self._path(name))
            except FileNotFoundError:
                signature = None
        entry = self._entries.get(name)
        if signature and entry and entry.signature == signature and entry.etag and not entry.racy:
            return entry.etag
        return self._get(mac).etag

    def _save(
        self, mac: str, content: Document, precondition: Precondition, deadline: float
    ) -> StoredConfig:
        data = dump_document(content)
        if len(data) > self.max_document_bytes:  # known before any disk I/O
            raise DocumentTooLarge(len(data), self.max_document_bytes)
        name = f"{mac}.json"
        document = StoredConfig(mac, data, summary_json(mac, content), etag_of(data))
        with _storage_errors(f"write of {name}", self._writes_outage):
            temp, fd = self._write_temp(name, data)
            try:
                check = partial(self._check, mac, precondition)
                install = partial(self._install, temp, name, precondition)
                installed_at = self._exclusively(deadline, check, install)
                signature = Signature.of(os.fstat(fd))
            finally:
                os.close(fd)
                _unlink_quietly(temp)
                self._writing.discard(temp.name)
        entry = self._entry_for(document, signature, installed_at, True)
        self._remember(name, entry, written=True)
        self._sync(SaveNotConfirmed(document))
        return document

    def _write_temp(self, name: str, data: bytes) -> tuple[Path, int]:
        temp = self._path(f".{name}.{self._owner}-{secrets.token_hex(4)}.tmp")
        self._writing.add(temp.name)  # before it exists: the temp sweep never takes it
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(temp, flags, 0o644)
        except BaseException:
            self._writing.discard(temp.name)
            raise
        try:
            os.fchmod(fd, 0o644)  # whatever the umask: other replicas and backups must read it
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(temp)
            self._writing.discard(temp.name)
            raise
        return temp, fd

    def _install(self, temp: Path, name: str, precondition: Precondition) -> int:
        """Put the temp file in place; when it became visible (monotonic ns)."""
        target = self._path(name)
        try:
            if not precondition.create_only:
                os.rename(temp, target)
                return time.monotonic_ns()
            os.link(temp, target)  # atomic: fails if the name exists, whoever created it
        except FileExistsError:
            if precondition.if_none_match.star_tag:
                raise PreconditionFailed(name[:-5], "If-None-Match") from None
            raise ConfigExists(name[:-5]) from None
        except IsADirectoryError:
            raise ConfigUnreadable(
                name[:-5], "is a directory, which a PUT never replaces"
            ) from None
        installed_at = time.monotonic_ns()
        os.unlink(temp)
        return installed_at

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

    def _exclusively(
        self, deadline: float, check: Callable[[], None], commit: Callable[[], R]
    ) -> R:
        """check() then commit() under the directory's write lock, shared with every replica."""
        while True:
            with self._lock_file(create=True) as fd:
                self._acquire(fd, deadline)
                # The lock file may have been removed or replaced while we waited (or checked):
                # then whoever locks the file now at that name is not excluded by ours. Retry.
                if self._still_named(fd):
                    check()
                    if self._still_named(fd):
                        return commit()

    @contextlib.contextmanager
    def _lock_file(self, create: bool = False) -> Iterator[int]:
        # Read-write and 0600: flock needs only an open descriptor, so a lock file others may
        # open is a lock anyone with read access can hold (and every write would wait on it).
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        fd = os.open(self._path(LOCK_NAME), flags, 0o600)
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
                    if not self.writes_blocked:
                        log.warning("config writes blocked: the write lock is held elsewhere")
                    self.writes_blocked = True
                    raise WritesBlocked(self.lock_timeout) from None
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.05)
            else:
                if self.writes_blocked:
                    log.warning("config writes unblocked: the write lock was released")
                self.writes_blocked = False
                return

    def _still_named(self, fd: int) -> bool:
        held = os.fstat(fd)
        try:
            now = os.stat(self._path(LOCK_NAME), follow_symlinks=False)
        except FileNotFoundError:
            return False
        return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)

    def _sync(self, unconfirmed: WriteNotConfirmed) -> None:
        """fsync the directory after a change that is already visible (the rename or unlink)."""
        try:
            self._fsync_dir()
        except OSError as error:
            self.sync_fault = "the configs directory could not be synced to disk"
            self._writes_outage.failed(self.sync_fault, f"fsync of the directory: {error}")
            raise unconfirmed from None
        self.sync_fault = None
        self._writes_outage.recovered()

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

    def _delete(self, mac: str, precondition: Precondition, deadline: float) -> None:
        name = f"{mac}.json"
        with _storage_errors(f"delete of {name}", self._writes_outage):
            check = partial(self._check, mac, precondition)
            removed_at = self._exclusively(deadline, check, partial(self._unlink, mac))
        self._forget(name, removed_at)
        self._sync(WriteNotConfirmed(mac, "deleted", None))

    def _unlink(self, mac: str) -> int:
        try:
            os.unlink(self._path(f"{mac}.json"))
        except FileNotFoundError:
            raise ConfigNotFound(mac) from None
        except IsADirectoryError:
            raise ConfigUnreadable(mac, "is a directory, which a DELETE never removes") from None
        return time.monotonic_ns()

    def _remove_stale_temps(self) -> None:
        """Remove temp files that a crashed writer left behind (never a live writer's)."""
        host, now = socket.gethostname(), time.time()
        with (
            _storage_errors("clean-up of temp files", self._writes_outage),
            os.scandir(self.directory) as entries,
        ):
            for item in entries:
                match = _TEMP_NAME.fullmatch(item.name)
                if match and item.name not in self._writing and _is_stale(match, item, host, now):
                    log.info("removing %r left by an interrupted write", item.name)
                    _unlink_quietly(Path(item.path))


def _is_stale(match: re.Match[str], item: os.DirEntry[str], host: str, now: float) -> bool:
    """Left by a process of this host that is gone (or by us), or older than any live write."""
    pid = int(match["pid"])
    if match["host"] == host and (pid == os.getpid() or not _pid_alive(pid)):
        return True  # ours but not being written (see _writing), or its writer is dead
    try:
        return now - item.stat(follow_symlinks=False).st_mtime > STALE_TEMP_SECONDS
    except FileNotFoundError:
        return False


class SaveNotConfirmed(WriteNotConfirmed):
    """A save that is visible (so it is notified) but whose directory fsync failed."""

    def __init__(self, stored: StoredConfig) -> None:
        super().__init__(stored.mac, "saved", stored.etag)
        self.stored = stored


def current_store() -> ConfigStore:
    """The ConfigStore of the running app."""
    return cast(ConfigStore, current_app.extensions["config_store"])
