"""`python -m quart_iot copy --from SRC --to DST [--history] [--dry-run]`: every device model
and every document from one store into another, bytes and ETags kept (and with --history every
kept version, ids and subjects kept). SRC and DST are each a directory or a postgresql:// URL:
the Flask version's directory into PostgreSQL, a PostgreSQL store backed up into a plain
directory, and back.

Idempotent: what the target already holds (a model or document with the same ETag, a version
with the same id) is left alone, so a second run copies nothing and says so. A file that is
not a model or document (bad JSON, a bad name, a directory, a temp file) is listed and
skipped, never fatal. One summary line ends the run. The directory is read with the directory
store's own blocking functions. A copy is no write through the service: documents are not
validated against their models on the way (as a restore is not)."""

import argparse
import asyncio
import contextlib
import os
import sys
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import asyncpg

from quart_iot.documents import InvalidJson, etag_of, parse_document
from quart_iot.errors import ApiError, ModelUnreadable, StorageUnavailable
from quart_iot.settings import check_database_url
from quart_iot.store.devicemodels import StoredModel
from quart_iot.store.directory.files import (
    CHANGES_NAME,
    CONFIG_NAME,
    HISTORY_NAME,
    LOCK_NAME,
    MODELS_NAME,
    TEMP_NAME,
    Directory,
    Unusable,
)
from quart_iot.store.directory.models import MODEL_FILE, MODEL_TEMP
from quart_iot.store.directory.versions import Shelves, Version
from quart_iot.store.postgres import transfer
from quart_iot.store.postgres.database import UNAVAILABLE, Database, Limits, reason_of
from quart_iot.store.postgres.history import subject_of
from quart_iot.store.postgres.schema import SchemaTooNew, migrate, schema_version
from quart_iot.store.records import summary_json

MAX_BYTES = 64 * 1024 * 1024  # MAX_CONTENT_LENGTH's largest: nothing a service can read is left
BATCH = 500  # versions written into PostgreSQL per transaction


@dataclass(frozen=True, slots=True)
class Model:
    """A device model: `.models/<code>.json`'s bytes, or a `device_models` row's."""

    code: str
    data: bytes

    @property
    def etag(self) -> str:
        return etag_of(self.data)


@dataclass(frozen=True, slots=True)
class Document:
    mac: str
    data: bytes

    @property
    def etag(self) -> str:
        return etag_of(self.data)


@dataclass(frozen=True, slots=True)
class Kept:
    """A kept version."""

    mac: str
    id: str
    change: str
    data: bytes
    subject: str | None


@dataclass(frozen=True, slots=True)
class Skipped:
    name: str
    reason: str


Item = Model | Document | Kept | Skipped
Copied = Model | Document | Kept
K = TypeVar("K", Document, Kept)
R = TypeVar("R")


class CopyError(Exception):
    """A store cannot be used (exit 2: as given; 1: it failed meanwhile); one line."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Held:
    """What a store holds: ETags by model code and by MAC, and (MAC, version id) pairs."""

    models: dict[str, str] = field(default_factory=dict)
    etags: dict[str, str] = field(default_factory=dict)
    versions: set[tuple[str, str]] = field(default_factory=set)

    def holds(self, item: Copied) -> bool:
        if isinstance(item, Model):
            return self.models.get(item.code) == item.etag
        if isinstance(item, Document):
            return self.etags.get(item.mac) == item.etag
        return (item.mac, item.id) in self.versions


class Store(Protocol):
    def items(self, history: bool) -> AsyncIterator[Item]:
        """The device models; then each device's versions (oldest first, with `history`), then
        its document."""

    async def held(self) -> Held: ...

    async def put(self, item: Copied) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Tally:
    copied: Counter[str] = field(default_factory=Counter)
    unchanged: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    def line(self, dry_run: bool) -> str:
        copied = _amounts(self.copied)
        unchanged = _amounts(self.unchanged) or "nothing"
        if copied:
            verb = "would copy" if dry_run else "copied"
            head = f"{verb} {copied}; {unchanged} unchanged"
        else:
            head = f"nothing to copy: {unchanged} unchanged"
        if self.skipped:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
            head += f"; skipped {self.skipped.total()} ({reasons})"
        return head


def _amounts(counts: Counter[str]) -> str:
    parts = [f"{counts[kind]} {kind}{'s' if counts[kind] != 1 else ''}"
             for kind in ("model", "document", "version") if counts[kind]]  # fmt: skip
    return " and ".join(parts)


# -- a directory ------------------------------------------------------------------------------


class DirectoryStore:
    """A configs directory as the directory store (or the Flask version) leaves it."""

    def __init__(self, path: Path) -> None:
        self.directory = Directory(path, MAX_BYTES)
        self.models = Directory(path / MODELS_NAME, MAX_BYTES, MODEL_TEMP)
        self.shelves = Shelves(self.directory)

    async def _blocking(self, func: Callable[..., R], *args: object) -> R:
        """Blocking file work in a thread; a failing directory is one line, not a traceback."""
        try:
            return await asyncio.to_thread(func, *args)
        except OSError as error:
            raise CopyError(f"{self.directory.path}: {error.strerror or error}", 1) from None

    async def items(self, history: bool) -> AsyncIterator[Item]:
        for model in await self._blocking(self._models):
            yield model
        found, skipped = await self._blocking(self._scan)
        for item in skipped:
            yield item
        macs = set(found)
        with_history = set(await self._blocking(self.shelves.macs) if history else [])
        for mac in sorted(macs | with_history):
            if mac in with_history:
                for kept in await self._blocking(self._versions, mac):
                    yield kept
            if mac in macs:
                yield await self._blocking(self._document, mac)

    def _scan(self) -> tuple[list[str], list[Skipped]]:
        macs, skipped = [], []
        with os.scandir(self.directory.path) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                reason = _odd(entry)
                if reason is None:
                    macs.append(entry.name[:-5])
                elif reason:
                    skipped.append(Skipped(entry.name, reason))
        return macs, skipped

    def _models(self) -> list[Model | Skipped]:
        if not self.models.path.is_dir():
            return []
        found: list[Model | Skipped] = []
        for name in sorted(os.listdir(self.models.path)):
            shown = f"{MODELS_NAME}/{name}"
            if MODEL_TEMP.fullmatch(name):
                found.append(Skipped(shown, "a temp file of an interrupted write"))
            elif not MODEL_FILE.fullmatch(name):
                found.append(Skipped(shown, "not named <code>.json"))
            else:
                found.append(self._model(name[:-5], shown))
        return found

    def _model(self, code: str, shown: str) -> Model | Skipped:
        try:
            _, data = self.models.read(f"{code}.json")
            StoredModel.of_bytes(code, data)
        except Unusable as error:
            return Skipped(shown, f"not a readable file ({error.reason})")
        except ModelUnreadable:
            return Skipped(shown, "not a device model")
        return Model(code, data)

    def _document(self, mac: str) -> Document | Skipped:
        name = f"{mac}.json"
        try:
            _, data = self.directory.read(name)
        except Unusable as error:
            return Skipped(name, f"not a readable file ({error.reason})")
        return _checked(Document(mac, data), name)

    def _versions(self, mac: str) -> list[Kept | Skipped]:
        found: list[Kept | Skipped] = []
        with self.shelves.opened(mac) as shelf:
            for version in shelf.versions:
                name = f"{HISTORY_NAME}/{mac}/{version.name}"
                try:
                    _, data = shelf.read(version, MAX_BYTES, mac)
                except ApiError:
                    found.append(Skipped(name, "not a readable file"))
                    continue
                kept = Kept(mac, version.id, version.change, data, shelf.subject(version))
                found.append(_checked(kept, name))
        return found

    async def held(self) -> Held:
        return await self._blocking(self._held)

    def _held(self) -> Held:
        held = Held()
        if not self.directory.path.exists():
            return held
        for model in self._models():
            if isinstance(model, Model):
                held.models[model.code] = model.etag
        macs, _ = self._scan()
        for mac in macs:
            with contextlib.suppress(Unusable):
                held.etags[mac] = etag_of(self.directory.read(f"{mac}.json")[1])
        for mac in self.shelves.macs():
            with self.shelves.opened(mac) as shelf:
                held.versions.update((mac, version.id) for version in shelf.versions)
        return held

    async def put(self, item: Copied) -> None:
        await self._blocking(self._put, item)

    def _put(self, item: Copied) -> None:
        self.directory.path.mkdir(parents=True, exist_ok=True)
        if isinstance(item, Model):
            self.models.path.mkdir(exist_ok=True)
            self._install(item.data, f"{item.code}.json", None, self.models)
            return
        if isinstance(item, Document):
            self._install(item.data, f"{item.mac}.json", None)
            return
        with self.shelves.opened(item.mac, create=True) as shelf:
            version = Version(item.id, item.change)
            if item.subject is not None:
                with contextlib.suppress(FileExistsError):  # from an interrupted copy
                    shelf.sign(version.id, item.subject)
            self._install(item.data, version.name, shelf.fd)
            os.fsync(shelf.fd)

    def _install(
        self, data: bytes, name: str, shelf: int | None, into: Directory | None = None
    ) -> None:
        """Durably, atomically: a temp file, fsynced, renamed in place (in a shelf, or in
        `into`: the documents' directory unless said)."""
        directory = into or self.directory
        temp, fd = directory.write_temp(name, data)
        try:
            os.rename(temp, name if shelf is not None else directory / name,
                      dst_dir_fd=shelf)  # fmt: skip
        finally:
            os.close(fd)
            directory.discard_temp(temp)

    async def close(self) -> None:
        if self.models.path.exists():
            await self._blocking(self.models.fsync)
        if self.directory.path.exists():
            await self._blocking(self.directory.fsync)


def _odd(entry: os.DirEntry[str]) -> str | None:
    """Why a directory entry is not a document ('' for the store's own entries, None for a
    document's name)."""
    # Bulk change records are not copied (their versions' changeId neither).
    if entry.name in (HISTORY_NAME, LOCK_NAME, MODELS_NAME, CHANGES_NAME):
        return ""
    if TEMP_NAME.fullmatch(entry.name):
        return "a temp file of an interrupted write"
    if not CONFIG_NAME.fullmatch(entry.name):
        return "not named <mac>.json"
    if entry.is_dir(follow_symlinks=False):
        return "a directory"
    return None


def _checked(item: K, name: str) -> K | Skipped:
    try:
        parse_document(item.data)
    except InvalidJson:
        return Skipped(name, "not a JSON object")
    return item


# -- a PostgreSQL database --------------------------------------------------------------------


class DatabaseStore:
    """A database of the PostgreSQL store."""

    def __init__(self, conn: asyncpg.Connection, known: bool) -> None:
        self.conn = conn
        self.known = known  # its schema is in place
        self._versions: list[tuple[object, ...]] = []  # waiting to be written

    @classmethod
    async def open(cls, url: str, target: bool, dry_run: bool) -> "DatabaseStore":
        conn = await Database(url, Limits(statement_timeout=3600)).connect()
        try:
            version = await schema_version(conn)
            if target and not dry_run:
                version = await migrate(conn)
        except BaseException:
            await conn.close()
            raise
        if not version and not target:
            await conn.close()
            raise CopyError("--from: the database holds no quart_iot store (no config_schema)")
        return cls(conn, version > 0)

    async def items(self, history: bool) -> AsyncIterator[Item]:
        async with self.conn.transaction(isolation="repeatable_read", readonly=True):
            for row in await self.conn.fetch(transfer.MODELS):
                yield Model(row["code"], row["data"])
            rows = await self.conn.fetch(transfer.DOCUMENTS)
            documents = deque(Document(row["mac"], row["data"]) for row in rows)
            if history:  # a device's versions first, then its document
                async for row in transfer.rows(self.conn, transfer.VERSIONS):
                    while documents and documents[0].mac < row["mac"]:
                        yield documents.popleft()
                    subject = subject_of(row)
                    yield Kept(row["mac"], row["id"], row["change"], row["data"], subject)
            for document in documents:
                yield document

    async def held(self) -> Held:
        if not self.known:
            return Held()
        models = {row["code"]: row["etag"] for row in await self.conn.fetch(transfer.MODEL_ETAGS)}
        etags, versions = await transfer.etags(self.conn), await transfer.version_ids(self.conn)
        return Held(models, etags, versions)

    async def put(self, item: Copied) -> None:
        if isinstance(item, Model):  # read at each validated write: no cache to tell
            await self.conn.execute(transfer.PUT_MODEL, item.code, item.data, item.etag)
            return
        summary = summary_json(item.mac, parse_document(item.data))
        if isinstance(item, Kept):  # written in batches: versions touch no live row
            subject = item.subject.encode("utf-8", "replace") if item.subject is not None else None
            version = (item.id, item.change, item.data, etag_of(item.data), summary, subject)
            self._versions.append((item.mac, *version))
            if len(self._versions) >= BATCH:
                await self._flush()
            return
        await self._flush()  # a device's versions before its document
        # One transaction per document, its row locked first, as a save locks it: holding
        # the change feed's row across several documents could deadlock with live writers.
        async with self.conn.transaction():
            await self.conn.execute(transfer.LOCK_DOCUMENT, item.mac)
            await self.conn.execute(transfer.PUT_DOCUMENT, item.mac, item.data, item.etag, summary)

    async def _flush(self) -> None:
        if self._versions:
            async with self.conn.transaction():
                await self.conn.executemany(transfer.PUT_VERSION, self._versions)
            self._versions = []

    async def close(self) -> None:
        try:
            await self._flush()
        finally:
            await self.conn.close()


# -- the copy ---------------------------------------------------------------------------------


async def copy(source: Store, target: Store, history: bool, dry_run: bool) -> Tally:
    """Everything of `source` that `target` does not hold yet; each skip printed."""
    tally = Tally()
    held = await target.held()
    async for item in source.items(history):
        if isinstance(item, Skipped):
            print(f"skipped {item.name}: {item.reason}")
            tally.skipped[item.reason] += 1
            continue
        kind = {Model: "model", Document: "document", Kept: "version"}[type(item)]
        if held.holds(item):
            tally.unchanged[kind] += 1
            continue
        if not dry_run:
            await target.put(item)
        tally.copied[kind] += 1
    return tally


async def open_store(location: str, target: bool, dry_run: bool) -> Store:
    option = "--to" if target else "--from"
    if "://" in location:
        try:
            check_database_url(location)
        except ValueError as error:
            raise CopyError(f"{option}: {error}") from None
        return await DatabaseStore.open(location, target, dry_run)
    path = Path(location)
    if not await asyncio.to_thread(_usable, path, target):
        raise CopyError(f"{option}: {location} is not a directory")
    return DirectoryStore(path)


def _usable(path: Path, target: bool) -> bool:
    """A directory; or, as the target, nothing yet (the copy makes it)."""
    return path.is_dir() or (target and not path.exists())


async def run(args: argparse.Namespace) -> str:
    source = await open_store(args.source, target=False, dry_run=args.dry_run)
    try:
        target = await open_store(args.target, target=True, dry_run=args.dry_run)
        try:
            tally = await copy(source, target, args.history, args.dry_run)
        finally:
            await target.close()
    finally:
        await source.close()
    return tally.line(args.dry_run)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m quart_iot copy",
        description="Copy every device model and document between stores (a directory or a "
        "postgresql:// URL).",
    )
    parser.add_argument("--from", dest="source", required=True, help="directory or URL")
    parser.add_argument("--to", dest="target", required=True, help="directory or URL")
    parser.add_argument("--history", action="store_true", help="the kept versions too")
    parser.add_argument("--dry-run", action="store_true", help="say what would be copied")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.source == args.target:
        print("quart_iot copy: --from and --to are the same store", file=sys.stderr)
        return 2
    try:
        print(asyncio.run(run(args)))
    except CopyError as error:
        print(f"quart_iot copy: {error}", file=sys.stderr)
        return error.code
    except (SchemaTooNew, StorageUnavailable) as error:
        print(f"quart_iot copy: {error}", file=sys.stderr)
        return 1
    except UNAVAILABLE as error:  # the database (an OSError too: a refused connection)
        print(f"quart_iot copy: {reason_of(error)}", file=sys.stderr)
        return 1
    return 0
