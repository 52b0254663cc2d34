"""Conformance: documents checked against the device model they name, the same for every store.

A save is validated against the model version this process last read, without reading it
first; the save is then decided only if that is still the model's version in the store, under
the write's lock or in its transaction (the directory: a stat while it is unchanged;
PostgreSQL: one indexed row locked FOR SHARE), else read again and validated again. So a model
changed through another replica counts at once, and a validated save costs no extra read (a
worker thread's hop, which cost more than the validation; docs/PERFORMANCE.md).

A schema is compiled once per model version, in a worker thread, and kept by the version's
ETag (`SchemaCache`): any replica that reads a new ETag compiles that version.
Validation itself runs on the event loop: about 110 us of CPU for a 2 KB document in the
write path, 0.5 ms for 20 KB (docs/PERFORMANCE.md), less than the parse of the body before it,
which runs there too.
"""

import contextlib
from dataclasses import dataclass

import anyio.to_thread

from quart_iot.documents import Document
from quart_iot.errors import (
    InvalidSchema,
    ModelNotFound,
    ModelUnreadable,
    SchemaViolation,
    UnknownModel,
)
from quart_iot.store.backend import Backend
from quart_iot.store.devicemodels import StoredModel
from quart_iot.store.records import StoredConfig
from quart_iot.validation import (
    CompiledSchema,
    SchemaCache,
    Violations,
    conform,
    model_of,
    violations,
)

UNKNOWN_MODEL = "unknown-model"  # the Schema-Violations value of a restore naming no model


@dataclass(frozen=True, slots=True)
class Nonconforming:
    """A document that does not meet its model's schema, and how."""

    mac: str
    device_name: str | None
    violations: Violations


@dataclass(frozen=True, slots=True)
class ModelReport:
    """The documents naming a model (`checked`), and those not meeting its schema now."""

    code: str
    checked: int
    devices: list[Nonconforming]


class Conformance:
    """What the store's writes and the model routes check, with the compiled schemas."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.schemas = SchemaCache()
        self._read: dict[str, StoredModel] = {}  # each model as this process last read it

    async def conform(self, content: Document, last_read: bool = False) -> tuple[str, str] | None:
        """(model code, model ETag) of the model the content names and meets; None when it
        names none. UnknownModel (422) or SchemaViolation (422) otherwise. `last_read`: met
        against the version last read when there is one (for a save that checks that version is
        still current); a refusal is decided on the version read now, never a stale one."""
        code = model_of(content)
        if code is None:
            return None
        remembered = self._read.get(code) if last_read else None
        if remembered is not None:
            with contextlib.suppress(SchemaViolation, ModelUnreadable):
                return await self._met(remembered, content)
        return await self._met(await self._fresh(code), content)

    async def _met(self, model: StoredModel, content: Document) -> tuple[str, str]:
        compiled = await self.compiled(model)
        if compiled is not None:
            conform(compiled, model.code, content)
        return model.code, model.etag

    async def _fresh(self, code: str) -> StoredModel:
        try:
            model = await self.backend.model(code)
        except ModelNotFound:
            self._read.pop(code, None)
            raise UnknownModel(code) from None
        self._read[code] = model
        return model

    async def report(self, content: Document) -> str | None:
        """How content written without validation (a restore) breaks its model: the number of
        violations (at most 50 counted), UNKNOWN_MODEL, or None when it conforms."""
        try:
            await self.conform(content)
        except (UnknownModel, ModelUnreadable):
            return UNKNOWN_MODEL
        except SchemaViolation as error:
            return str(len((error.details or {})["violations"]))
        return None

    async def compiled(self, model: StoredModel) -> CompiledSchema | None:
        """The model version's schema compiled (None: it has none), in a worker thread once."""
        kept = self.schemas.get(model.etag)
        if kept is not None:
            return kept
        schema = model.schema
        if schema is None:
            return None
        try:
            return await anyio.to_thread.run_sync(self.schemas.compiled, model.etag, schema)
        except InvalidSchema:  # a model file edited by hand: the model is not usable
            raise ModelUnreadable(model.code, "has a configSchema that does not compile") from None

    async def check_schema(self, model: StoredModel) -> None:
        """A model about to be saved: its schema checked and compiled (InvalidSchema, 422),
        and kept for the writes that will name this version."""
        schema = model.schema
        if schema is not None:
            await anyio.to_thread.run_sync(self.schemas.compiled, model.etag, schema)

    async def model_report(self, code: str) -> ModelReport:
        """The documents naming model `code` that do not meet its schema as it is now."""
        model = await self.backend.model(code)
        documents = await self.backend.documents_of(code)
        compiled = await self.compiled(model)
        if compiled is None:
            return ModelReport(code, len(documents), [])
        found = await anyio.to_thread.run_sync(_nonconforming, compiled, documents)
        return ModelReport(code, len(documents), found)


def _nonconforming(compiled: CompiledSchema, documents: list[StoredConfig]) -> list[Nonconforming]:
    found = []
    for stored in documents:
        content = stored.content
        broken = violations(compiled, content)
        if broken:
            name = content.get("deviceName")
            found.append(Nonconforming(stored.mac, name if isinstance(name, str) else None, broken))
    return found
