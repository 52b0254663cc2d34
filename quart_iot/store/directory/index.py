"""The directory index: every config's list item and ETag, validated against the directory.

The list is answered from it after one stat of the directory when nothing changed, a scandir
and a stat of each name when it did; a background sweep catches in-place rewrites (which leave
the directory alone). Every update carries the moment its observation was made, and an older
one never replaces a newer one.
"""

import contextlib
import itertools
import logging
import os
import stat
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from quart_iot.documents import InvalidJson, etag_of, parse_document
from quart_iot.errors import ConfigNotFound, ConfigUnreadable, StorageUnavailable
from quart_iot.store.devicemodels import model_named
from quart_iot.store.directory.files import (
    CHANGES_NAME,
    CONFIG_NAME,
    HISTORY_NAME,
    LOCK_NAME,
    MODELS_NAME,
    TEMP_NAME,
    Directory,
    Signature,
    Unusable,
)
from quart_iot.store.directory.outage import Outage, storage_errors
from quart_iot.store.records import StoredConfig

log = logging.getLogger(__name__)

# Timestamps move in coarse ticks, and replicas' clocks differ a little: a directory or file
# changed this recently may change again without its mtime moving, so it is not trusted yet.
RACY_NS = 2_000_000_000
# The names whose ETag changed last, in order (the search cache brings a filter's answer up to
# date from them); a cache further behind evaluates its filter afresh.
CHANGES_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class Entry:
    """What the index knows of one `<mac>.json` name."""

    signature: Signature | None  # None: seen absent (a tombstone)
    read_at: int  # monotonic ns when the observation began: a later one wins
    racy: bool  # read so soon after its mtime that an identical signature proves nothing
    summary_json: bytes | None  # None: not a usable config
    etag: str | None
    problem: str | None = None
    model: str | None = None  # the device model the document names

    @classmethod
    def of(cls, doc: StoredConfig, signature: Signature, read_at: int, racy: bool) -> "Entry":
        model = model_named(doc.summary_json)
        return cls(signature, read_at, racy, doc.summary_json, doc.etag, model=model)


class Index:
    """The validated cache of the directory; `saw_change(name, etag)` hears of every change it
    sees (from any thread)."""

    def __init__(self, directory: Directory, saw_change: Callable[[str, str | None], None]) -> None:
        self.directory = directory
        self.outage = Outage("reads")
        self._saw_change = saw_change
        self._lock = threading.Lock()  # guards the fields below
        self._scan_lock = threading.Lock()  # one directory rescan at a time
        self._entries: dict[str, Entry] = {}
        self._ignored: dict[str, int] = {}
        self._dir_signature: Signature | None = None
        self._dir_racy = True
        self._checked_at = 0  # monotonic ns when the last successful check of it began
        self._scanned_at = 0  # monotonic ns when the last rescan began
        self._primed = False  # a full scan happened: a name not in the index now is new
        self._body: bytes | None = None
        self._count = 0
        self._generation = 0  # ETag changes seen (a name coming, going or changing)
        self._changes: deque[str] = deque(maxlen=CHANGES_KEPT)  # the names of the last ones
        self._models: Counter[str] = Counter()  # documents per device model, with the body

    # -- the list ------------------------------------------------------------------------

    def listing(self, arrived: int) -> tuple[bytes, int]:
        """The list body and count, as the directory was at some moment after `arrived`."""
        with self._scan_lock:
            self._check_since(arrived)
            with self._lock:
                return self._rendered()

    def model_counts(self, arrived: int) -> Counter[str]:
        """Documents per device model, as the directory was at some moment after `arrived`."""
        with self._scan_lock:
            self._check_since(arrived)
            with self._lock:
                self._rendered()
                return self._models

    def named(self, model: str, arrived: int) -> list[str]:
        """The MACs of the documents naming `model`, sorted, as of a moment after `arrived`."""
        with self._scan_lock:
            self._check_since(arrived)
            with self._lock:
                return sorted(name[:-5] for name, e in self._entries.items() if e.model == model)

    def _rendered(self) -> tuple[bytes, int]:
        """The list body and count, rendered again when an entry changed (holding _lock)."""
        if self._body is None:
            self._body, self._count = self._render()
            self._models = Counter(e.model for e in self._entries.values() if e.model)
        return self._body, self._count

    def _check_since(self, arrived: int) -> bool:
        """Whether the directory had to be rescanned (every name looked at again)."""
        # A check that began after this request arrived saw every change made before:
        # requests that queued behind one check (a long rescan) share it.
        if self._checked_at > arrived:
            return False
        checking = time.monotonic_ns()
        rescanned = self._check_directory()
        self._checked_at = checking
        self.outage.recovered()
        return rescanned

    def stat_dir(self) -> os.stat_result:
        with storage_errors("stat of the configs directory", self.outage):
            st = os.stat(self.directory.path)
        if not stat.S_ISDIR(st.st_mode):
            self.outage.failed("the configs directory is not a directory")
            raise StorageUnavailable("the configs directory is not a directory")
        return st

    def _check_directory(self) -> bool:
        started = time.time_ns()
        st = self.stat_dir()
        signature = Signature.of(st)
        if signature == self._dir_signature and not self._dir_racy:
            return False
        with storage_errors("scan of the configs directory", self.outage):
            self._rescan()
        self._dir_signature = signature
        self._dir_racy = started - st.st_mtime_ns < RACY_NS
        return True

    def _rescan(self) -> None:
        started = time.monotonic_ns()
        seen, stale, ignored = self._scan()
        self._warn_ignored(ignored)
        for name in stale:
            with contextlib.suppress(FileNotFoundError):
                self.refresh(name)
        with self._lock:
            for name in self._entries.keys() - seen:
                # A name saved after the scan began may be missing from it: not gone.
                if self._entries[name].read_at < started:
                    if self._entries.pop(name).etag is not None:
                        self._note_change(name)
                        self._saw_change(name, None)
                    self._body = None
            self._scanned_at = started
        self._primed = True

    def _scan(self) -> tuple[set[str], list[str], dict[str, int]]:
        """Every config name, those whose entry is stale, and the inode of every other name."""
        seen: set[str] = set()
        stale: list[str] = []
        ignored: dict[str, int] = {}
        # On a descriptor, each entry's stat is a cheap fstatat.
        with self.directory.opened() as fd, os.scandir(fd) as entries:
            for item in entries:
                if CONFIG_NAME.fullmatch(item.name):
                    with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                        if self._stale(item.name, item.stat(follow_symlinks=False)):
                            stale.append(item.name)
                        seen.add(item.name)
                elif item.name not in (
                    LOCK_NAME,
                    HISTORY_NAME,
                    MODELS_NAME,
                    CHANGES_NAME,
                ) and not TEMP_NAME.fullmatch(item.name):
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

    def sweep(self, in_place: bool = True) -> None:
        """Names created or removed elsewhere (as a list would see them); then, if `in_place`,
        files rewritten in place (they leave the directory alone), unless the first step
        rescanned the directory: that looked at every name already (at 20,000 names, it
        halves the sweep that tells waiters of another replica's write)."""
        try:
            with self._scan_lock:  # the list body is left to the next list to render
                if self._check_since(time.monotonic_ns()) or not in_place:
                    return
            with self.directory.opened() as fd:
                for name, entry in list(self._entries.items()):
                    self._sweep_one(fd, name, entry)
        except (OSError, StorageUnavailable):
            return  # the directory is in trouble; health and requests report it

    def _sweep_one(self, fd: int, name: str, entry: Entry) -> None:
        looked = time.monotonic_ns()
        try:
            # Relative to the directory: building a path per name doubled the sweep's cost.
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            if entry.signature is not None:
                self.forget(name, looked)
            return
        if Signature.of(st) != entry.signature or entry.racy:
            with contextlib.suppress(FileNotFoundError):
                self.refresh(name)

    # -- one document --------------------------------------------------------------------

    def get(self, mac: str) -> StoredConfig:
        name = f"{mac}.json"
        started = time.monotonic_ns()
        with storage_errors(f"read of {name}", self.outage):
            try:
                document = self.refresh(name)
            except FileNotFoundError:
                self.stat_dir()
                self.forget(name, started)
                raise ConfigNotFound(mac) from None
        self.outage.recovered()
        if document is None:
            raise ConfigUnreadable(mac)
        return document

    def current_etag(self, mac: str) -> str:
        name = f"{mac}.json"
        with storage_errors(f"stat of {name}", self.outage):
            try:
                etag = self.cached_etag(name)
            except FileNotFoundError:
                etag = None
        return etag or self.get(mac).etag

    def cached_etag(self, name: str) -> str | None:
        """The ETag of the name's entry when a fresh lstat proves it current (no read), else
        None; FileNotFoundError when the name is absent."""
        signature = self.directory.lstat(name)
        entry = self._entries.get(name)
        if entry and entry.signature == signature and not entry.racy:
            return entry.etag
        return None

    def refresh(self, name: str) -> StoredConfig | None:
        """Read one file into the index; the document when it is usable."""
        read_at = time.monotonic_ns()
        started = time.time_ns()
        try:
            signature, data = self.directory.read(name)
        except Unusable as error:
            racy = started - error.signature.mtime_ns < RACY_NS
            self.remember(name, Entry(error.signature, read_at, racy, None, None, error.reason))
            return None
        known = self._entries.get(name)
        if known and known.signature == signature and not known.racy and known.summary_json:
            # The very bytes the index was made from: they were strict JSON then.
            return StoredConfig(name[:-5], data, known.summary_json, etag_of(data))
        racy = started - signature.mtime_ns < RACY_NS
        try:
            content = parse_document(data)
        except InvalidJson as error:
            self.remember(name, Entry(signature, read_at, racy, None, None, str(error)))
            return None
        document = StoredConfig.of_bytes(name[:-5], data, content)
        self.remember(name, Entry.of(document, signature, read_at, racy))
        return document

    # -- updates, ordered by when they were observed ---------------------------------------

    def remember(self, name: str, entry: Entry, written: bool = False) -> None:
        with self._lock:
            old = self._entries.get(name)
            if old is not None and old.read_at > entry.read_at:
                return  # a newer read got here first
            if old is None and entry.read_at < self._scanned_at:
                return  # a scan that began after this read found no such name
            self._entries[name] = entry
            if old is None or old.summary_json != entry.summary_json:
                self._body = None
            if (old.etag if old else None) != entry.etag:
                self._note_change(name)
        # Before the first scan, a name new to the index is news only when we wrote it.
        news = old is not None or self._primed or written
        if news and (old.etag if old else None) != entry.etag:
            self._saw_change(name, entry.etag)
        if entry.problem and (old is None or old.signature != entry.signature):
            log.warning("skipping config file %r: %s", name, entry.problem)

    def forget(self, name: str, observed_at: int) -> None:
        """The name was seen absent at `observed_at` (monotonic ns): unless a later look saw it."""
        with self._lock:
            old = self._entries.get(name)
            if old is not None and old.read_at > observed_at:
                return  # re-created, and seen, after this look: a slow delete must not hide it
            # A tombstone, not a removal: a read that began before it cannot put the name back,
            # and the sweep still stats the name, so a file created there again is found.
            self._entries[name] = Entry(None, observed_at, False, None, None)
            if old is not None and old.summary_json:
                self._body = None
            if old is not None and old.etag is not None:
                self._note_change(name)
        if old is not None and old.etag is not None:
            self._saw_change(name, None)

    # -- what changed, for the search cache (search.py) -------------------------------------

    def check(self, arrived: int) -> None:
        """Bring the index up to date with the directory as of a moment after `arrived`
        (monotonic ns), as a list does."""
        with self._scan_lock:
            self._check_since(arrived)

    def usable(self) -> tuple[int, list[str]]:
        """(the generation, the name of every usable document as of it)."""
        with self._lock:
            names = [name for name, entry in self._entries.items() if entry.summary_json]
            return self._generation, names

    def changed_since(self, generation: int) -> tuple[int, set[str] | None]:
        """(the generation now, the names whose ETag changed since `generation`); None when
        more changed than the index remembers."""
        with self._lock:
            behind = self._generation - generation
            if behind > len(self._changes):
                return self._generation, None
            return self._generation, set(itertools.islice(reversed(self._changes), behind))

    def _note_change(self, name: str) -> None:
        """Under `_lock`: a name's ETag changed (it came, went, or holds other bytes)."""
        self._generation += 1
        self._changes.append(name)
