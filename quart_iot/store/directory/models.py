"""Device models in the configs directory: `.models/<code>.json`, one file per model.

Written as documents are (a temp file in `.models/`, fsynced, renamed or linked in place, the
directory fsynced) and under the same write lock, so that a model's delete is decided against
the documents naming it, and a document's save against the model version it was validated
against. Every replica sharing the directory reads the same files: a read is a stat, and the
file is read again only when its signature changed (a version younger than the clock's racy
window is never trusted from its signature alone, as in the index).
"""

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from functools import partial

from quart_iot.errors import (
    ModelInUse,
    ModelNotFound,
    ModelUnreadable,
    PreconditionFailed,
    UnknownModel,
)
from quart_iot.store.backend import DeletedModel, SavedModel, Unconfirmed
from quart_iot.store.devicemodels import ModelChanged, StoredModel, check_model_condition
from quart_iot.store.directory.files import MODELS_NAME, Directory, Signature, Unusable
from quart_iot.store.directory.index import RACY_NS
from quart_iot.store.directory.lock import WriteLock
from quart_iot.store.directory.outage import Outage, storage_errors
from quart_iot.store.records import Precondition

log = logging.getLogger(__name__)

MODEL_FILE = re.compile(r"[a-z0-9_]{1,64}\.json")
MODEL_TEMP = re.compile(r"\.[a-z0-9_]{1,64}\.json\.(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}\.tmp")


class ModelFiles:
    """The `.models/` directory (blocking; run in the store's worker threads). `devices(code)`
    counts the documents naming a model, as of now (the index, checked)."""

    def __init__(
        self,
        directory: Directory,
        lock: WriteLock,
        devices: Callable[[str], int],
        outage: Outage,
    ) -> None:
        self.parent = directory
        self.files = Directory(directory / MODELS_NAME, directory.max_bytes, MODEL_TEMP)
        self.lock = lock
        self.devices = devices
        self.outage = outage  # the writes' (read faults are the caller's to report)
        self._cache: dict[str, tuple[Signature, StoredModel]] = {}
        self._cache_lock = threading.Lock()
        self._skipped: dict[str, str] = {}  # name -> why, warned about once

    # -- reads -----------------------------------------------------------------------------

    def read(self, code: str) -> StoredModel:
        """The model as stored now (ModelNotFound, ModelUnreadable): a stat when it is cached."""
        name = f"{code}.json"
        try:
            signature = self.files.lstat(name)
        except (FileNotFoundError, NotADirectoryError):
            raise ModelNotFound(code) from None
        cached = self._cache.get(code)
        if cached is not None and cached[0] == signature:
            return cached[1]
        return self._load(code, name)

    def _load(self, code: str, name: str) -> StoredModel:
        started = time.time_ns()
        try:
            signature, data = self.files.read(name)
        except FileNotFoundError:
            raise ModelNotFound(code) from None
        except Unusable as error:
            raise ModelUnreadable(code, f"is not a readable file ({error.reason})") from None
        model = StoredModel.of_bytes(code, data)
        if started - signature.mtime_ns >= RACY_NS:
            with self._cache_lock:
                self._cache[code] = (signature, model)
        return model

    def listing(self) -> list[StoredModel]:
        """Every usable model, by code; the others skipped with one warning each."""
        try:
            with os.scandir(self.files.path) as entries:
                names = sorted(entry.name for entry in entries)
        except (FileNotFoundError, NotADirectoryError):
            return []
        models = []
        for name in names:
            if MODEL_FILE.fullmatch(name):
                with contextlib.suppress(ModelNotFound):  # removed meanwhile
                    models.append(self._listed(name))
            elif not MODEL_TEMP.fullmatch(name):
                self._skip(name, "not named <code>.json")
        return [model for model in models if model is not None]

    def _listed(self, name: str) -> StoredModel | None:
        try:
            model = self.read(name[:-5])
        except ModelUnreadable as error:
            self._skip(name, error.message)
            return None
        self._skipped.pop(name, None)
        return model

    def _skip(self, name: str, why: str) -> None:
        if self._skipped.get(name) != why:
            self._skipped[name] = why
            log.warning("skipping %r in %s: %s", name, MODELS_NAME, why)

    # -- under the write lock ----------------------------------------------------------------

    def require(self, code: str, etag: str) -> None:
        """A document's save, validated against model version `etag`, may be decided now."""
        try:
            current = self.read(code).etag
        except ModelNotFound:
            raise UnknownModel(code) from None
        if current != etag:
            raise ModelChanged

    def _etag_now(self, code: str) -> str | None:
        """The ETag a model's own write is decided against (None: none; "": not usable)."""
        try:
            return self.read(code).etag
        except ModelNotFound:
            return None
        except ModelUnreadable:
            return ""

    def _check(self, code: str, precondition: Precondition) -> str | None:
        current = self._etag_now(code)
        check_model_condition(code, precondition, current)
        return current

    # -- writes (blocking, in the store's write threads) -------------------------------------

    def save(self, model: StoredModel, precondition: Precondition, deadline: float) -> SavedModel:
        """Create or replace `.models/<code>.json`, its condition decided under the lock."""
        model.check_size(self.files.max_bytes)
        check = partial(self._check, model.code, precondition)
        commit = partial(self._commit_save, model, precondition)
        with storage_errors(f"write of device model {model.code}", self.outage):
            saved: SavedModel = self.lock.exclusively(deadline, check, commit)
        self._sync(saved)
        return saved

    def delete(self, code: str, precondition: Precondition, deadline: float) -> DeletedModel:
        """Remove `.models/<code>.json`, unless documents name the model (ModelInUse)."""
        check = partial(self._check, code, precondition)
        commit = partial(self._commit_delete, code)
        with storage_errors(f"delete of device model {code}", self.outage):
            deleted: DeletedModel = self.lock.exclusively(deadline, check, commit)
        self._sync(deleted)
        return deleted

    def _commit_save(
        self, model: StoredModel, precondition: Precondition, before: str | None
    ) -> SavedModel:
        devices = self.devices(model.code)
        if before == model.etag and not precondition.create_only:
            return SavedModel(model, before, devices, unchanged=True)
        self._make_directory()
        temp, fd = self.files.write_temp(f"{model.code}.json", model.raw)
        try:
            self.files.put_in_place(temp, f"{model.code}.json", precondition.create_only)
        except FileExistsError:
            raise PreconditionFailed(model.code, "If-None-Match", "Device model") from None
        finally:
            os.close(fd)
            self.files.discard_temp(temp)
        return SavedModel(model, before or None, devices)

    def _commit_delete(self, code: str, before: str | None) -> DeletedModel:
        if before is None:
            raise ModelNotFound(code)
        devices = self.devices(code)
        if devices:
            raise ModelInUse(code, devices)
        self.files.unlink(f"{code}.json")
        with self._cache_lock:
            self._cache.pop(code, None)
        return DeletedModel(code, before)

    def _make_directory(self) -> None:
        """`.models/` on the first model's save, made durable in its parent."""
        try:
            os.mkdir(self.files.path, 0o755)  # as .history/ is made (versions.py)
        except FileExistsError:
            return
        self.parent.fsync()

    def _sync(self, outcome: SavedModel | DeletedModel) -> None:
        """fsync `.models/` after a change already visible (Unconfirmed when it fails)."""
        if isinstance(outcome, SavedModel) and outcome.unchanged:
            return
        try:
            self.files.fsync()
        except OSError as error:
            self.outage.failed("the configs directory could not be synced to disk", error)
            raise Unconfirmed(outcome) from None

    def remove_stale_temps(self) -> None:
        """Temp files of model writes a crash interrupted."""
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            self.files.remove_stale_temps()
