"""The file primitives of the configs directory: safe reads, durable atomic writes, temp files.

Plain blocking functions, run in worker threads. A read never follows a symbolic link, never
blocks on a FIFO and never reads more than the size limit; a write goes to a uniquely named
temp file in the same directory, fsynced, then renamed (or linked) over its name.
"""

import contextlib
import errno
import logging
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

log = logging.getLogger(__name__)

CONFIG_NAME = re.compile(r"[0-9a-f]{2}(?:-[0-9a-f]{2}){5}\.json")
TEMP_NAME = re.compile(r"\.[0-9a-f-]{17}\.json\.(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}\.tmp")
LOCK_NAME = ".quart_iot.lock"
HISTORY_NAME = ".history"  # every version of every document (versions.py)
MODELS_NAME = ".models"  # one `<code>.json` per device model (models.py)
CHANGES_NAME = ".changes"  # bulk change records (changes.py)
STALE_TEMP_SECONDS = 300

_UNUSABLE_ERRNOS = {errno.ELOOP, errno.EACCES, errno.EPERM, errno.ENXIO, errno.EISDIR}


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


class Unusable(Exception):
    """The name exists but holds nothing to serve (a link, a FIFO, too large...)."""

    def __init__(self, reason: str, signature: Signature) -> None:
        super().__init__(reason)
        self.reason = reason
        self.signature = signature


class Directory:
    """The configs directory, and the largest file it reads or writes."""

    def __init__(self, path: Path, max_bytes: int, temp_name: re.Pattern[str] = TEMP_NAME) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.temp_name = temp_name  # what this directory's temp files are named (the sweep's)
        self._owner = f"{socket.gethostname()}-{os.getpid()}"
        self.writing: set[str] = set()  # this process's temp files being written

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @contextlib.contextmanager
    def opened(self) -> Iterator[int]:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)

    def fsync(self) -> None:
        with self.opened() as fd:
            os.fsync(fd)

    def lstat(self, name: str) -> Signature:
        return Signature.of(os.lstat(self / name))

    def read(self, name: str) -> tuple[Signature, bytes]:
        """The bytes of a regular file, never following a link and never blocking on a FIFO."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self / name, flags)
        except OSError as error:
            if error.errno not in _UNUSABLE_ERRNOS:
                raise
            raise Unusable(error.strerror or "cannot be opened", self.lstat(name)) from None
        try:
            st = os.fstat(fd)
            signature = Signature.of(st)
            if not stat.S_ISREG(st.st_mode):
                raise Unusable("not a regular file", signature)
            if st.st_size > self.max_bytes:
                limit = f"larger than MAX_CONTENT_LENGTH ({self.max_bytes} bytes)"
                raise Unusable(limit, signature)
            with os.fdopen(fd, "rb", closefd=False) as file:
                return self._read_stable(fd, file, signature)
        finally:
            os.close(fd)

    def _read_stable(
        self, fd: int, file: BinaryIO, signature: Signature
    ) -> tuple[Signature, bytes]:
        """The bytes, and a signature taken before and after reading them (so they match)."""
        data = file.read(self.max_bytes + 1)
        for _ in range(2):  # rewritten in place meanwhile: read again
            after = Signature.of(os.fstat(fd))
            if after == signature:
                break
            file.seek(0)
            signature, data = after, file.read(self.max_bytes + 1)
        return signature, data

    def write_temp(self, name: str, data: bytes) -> tuple[Path, int]:
        """A new temp file holding data, fsynced, and its open descriptor."""
        temp = self / f".{name}.{self._owner}-{secrets.token_hex(4)}.tmp"
        self.writing.add(temp.name)  # before it exists: the temp sweep never takes it
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(temp, flags, 0o644)
        except BaseException:
            self.writing.discard(temp.name)
            raise
        try:
            os.fchmod(fd, 0o644)  # whatever the umask: other replicas and backups must read it
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            self.discard_temp(temp)
            raise
        return temp, fd

    def discard_temp(self, temp: Path) -> None:
        unlink_quietly(temp)
        self.writing.discard(temp.name)

    def put_in_place(self, temp: Path, name: str, create_only: bool) -> int:
        """Put the temp file in place (create_only: FileExistsError if the name exists).

        Returns when it became visible (monotonic ns).
        """
        if not create_only:
            os.rename(temp, self / name)
            return time.monotonic_ns()
        os.link(temp, self / name)  # atomic: fails if the name exists, whoever created it
        placed_at = time.monotonic_ns()
        os.unlink(temp)
        return placed_at

    def unlink(self, name: str) -> int:
        """Remove the name; when it went (monotonic ns)."""
        os.unlink(self / name)
        return time.monotonic_ns()

    def remove_stale_temps(self) -> None:
        """Remove temp files that a crashed writer left behind (never a live writer's)."""
        host, now = socket.gethostname(), time.time()
        with os.scandir(self.path) as entries:
            for item in entries:
                match = self.temp_name.fullmatch(item.name)
                if match and item.name not in self.writing and _is_stale(match, item, host, now):
                    log.info("removing %r left by an interrupted write", item.name)
                    unlink_quietly(Path(item.path))


def _is_stale(match: re.Match[str], item: os.DirEntry[str], host: str, now: float) -> bool:
    """Left by a process of this host that is gone (or by us), or older than any live write."""
    pid = int(match["pid"])
    if match["host"] == host and (pid == os.getpid() or not _pid_alive(pid)):
        return True  # ours but not being written (see Directory.writing), or its writer is dead
    try:
        return now - item.stat(follow_symlinks=False).st_mtime > STALE_TEMP_SECONDS
    except FileNotFoundError:
        return False


def unlink_quietly(path: Path) -> None:
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
