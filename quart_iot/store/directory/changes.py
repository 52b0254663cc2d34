"""Bulk change records in the configs directory: `.changes/`, three files per change.

- `<id>.json`: the record (bulk.Journal without the documents before), written before the
  first device (`running`) and again once every device is decided;
- `<id>.before.json`: the documents the change found, by MAC, written once (a revert's);
- `<id>.owner`: while the change runs, the process running it holds an flock on it. The lock
  dies with the process: a `running` record whose owner file is not locked is a change its
  process did not finish (a SIGKILL), which `ConfigStore.change` then settles.

Each file is written whole to a temp file, fsynced and renamed in place, and the directory
fsynced: a record is there entirely or not at all. Plain blocking functions, run in worker
threads. Names are built only from ids that fully matched VERSION_PATTERN.
"""

import contextlib
import fcntl
import json
import os
import re
import secrets
from pathlib import Path

from quart_iot.bulk import Journal, befores, without_befores
from quart_iot.documents import Document
from quart_iot.errors import ChangeNotFound
from quart_iot.identifiers import VERSION_PATTERN
from quart_iot.store.directory.files import CHANGES_NAME, Directory
from quart_iot.store.directory.versions import Shelves

CHANGES_KEPT = 1000  # records kept, newest first; older ones go as new changes begin
_RECORD = re.compile(rf"(?P<id>{VERSION_PATTERN})\.json")


class ChangeFiles:
    """The change records of one configs directory."""

    def __init__(self, directory: Directory, shelves: Shelves, kept: int = CHANGES_KEPT) -> None:
        self.path = directory / CHANGES_NAME
        self.shelves = shelves
        self.kept = kept
        self._owned: dict[str, int] = {}  # change id -> the locked owner file's descriptor

    def begin(self, journal: Journal) -> None:
        """Own the change, then keep its documents before and its record, durably."""
        self.path.mkdir(exist_ok=True)
        change_id = journal.change_id
        fd = os.open(self._file(change_id, ".owner"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._owned[change_id] = fd
        try:
            self._put(f"{change_id}.before.json", json.dumps(befores(journal)).encode())
            self._put(f"{change_id}.json", without_befores(journal).model_dump_json().encode())
            self._fsync_directory()
        except BaseException:
            self._release(change_id)
            raise
        self._prune()

    def end(self, journal: Journal) -> None:
        """Keep the final record; the change is no longer owned."""
        self._put(f"{journal.change_id}.json", without_befores(journal).model_dump_json().encode())
        self._fsync_directory()
        self._release(journal.change_id)

    def get(self, change_id: str) -> tuple[Journal, bool]:
        """The record, and whether a process owns the change now."""
        try:
            data = self._file(change_id, ".json").read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise ChangeNotFound(change_id) from None
        journal = Journal.model_validate_json(data)
        return journal, journal.state == "running" and self._owned_now(change_id)

    def befores(self, change_id: str) -> dict[str, Document]:
        try:
            found: dict[str, Document] = json.loads(
                self._file(change_id, ".before.json").read_bytes()
            )
        except FileNotFoundError:
            raise ChangeNotFound(change_id) from None
        return found

    def recent(self, limit: int, before: str | None) -> list[tuple[Journal, bool]]:
        """Up to `limit` records older than `before`, newest first."""
        ids = [i for i in self._ids() if before is None or i < before]
        found = []
        for change_id in reversed(ids):
            with contextlib.suppress(ChangeNotFound):  # pruned meanwhile
                found.append(self.get(change_id))
            if len(found) == limit:
                break
        return found

    def writes(self, journal: Journal) -> dict[str, str]:
        """The devices whose history keeps a version this change wrote: its ETag."""
        found = {}
        for entry in journal.devices:
            with (
                contextlib.suppress(FileNotFoundError, NotADirectoryError),
                self.shelves.opened(entry.mac) as shelf,
            ):
                if any(
                    version.id > journal.change_id and shelf.change_id(version) == journal.change_id
                    for version in shelf.versions
                ):
                    found[entry.mac] = entry.etag_after
        return found

    def _owned_now(self, change_id: str) -> bool:
        if change_id in self._owned:
            return True
        try:
            fd = os.open(self._file(change_id, ".owner"), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # releases the lock if it was taken
        return False

    def _release(self, change_id: str) -> None:
        fd = self._owned.pop(change_id, None)
        with contextlib.suppress(FileNotFoundError):
            self._file(change_id, ".owner").unlink()
        if fd is not None:
            os.close(fd)

    def _ids(self) -> list[str]:
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return sorted(m["id"] for m in map(_RECORD.fullmatch, names) if m is not None)

    def _prune(self) -> None:
        """The oldest records past `kept` go, unless they still run."""
        ids = self._ids()
        for change_id in ids[: max(0, len(ids) - self.kept)]:
            if self._file(change_id, ".owner").exists():
                continue
            for suffix in (".json", ".before.json"):
                with contextlib.suppress(FileNotFoundError):
                    self._file(change_id, suffix).unlink()

    def _file(self, change_id: str, suffix: str) -> Path:
        return self.path / f"{change_id}{suffix}"

    def _put(self, name: str, data: bytes) -> None:
        temp = self.path / f".{name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            with os.fdopen(fd, "wb", closefd=False) as out:
                out.write(data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, self.path / name)

    def _fsync_directory(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
