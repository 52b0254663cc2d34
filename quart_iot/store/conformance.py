"""Conformance: documents checked against the device model they name, the same for every store.

The model is read from the store at every validated write (the directory: a stat while it is
unchanged; PostgreSQL: one indexed row), so a model changed through another replica counts at
once. Its schema is compiled once per model version, in a worker thread, and kept by the
version's ETag (`SchemaCache`): any replica that reads a new ETag compiles that version.
Validation itself runs on the event loop: about 50 us for a 2 KB document, 0.5 ms for 20 KB
(docs/PERFORMANCE.md), less than the parse of the body before it, which runs there too.
"""

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

    async def conform(self, content: Document) -> tuple[str, str] | None:
        """(model code, model ETag) of the model the content names and meets; None when it
        names none. UnknownModel (422) or SchemaViolation (422) otherwise."""
        code = model_of(content)
        if code is None:
            return None
        try:
            model = await self.backend.model(code)
        except ModelNotFound:
            raise UnknownModel(code) from None
        compiled = await self.compiled(model)
        if compiled is not None:
            conform(compiled, code, content)
        return code, model.etag

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
