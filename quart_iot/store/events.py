"""Written: a write of this process as its listeners hear it (the audit, MQTT, wake-ups)."""

from dataclasses import dataclass
from typing import Literal

from quart_iot.errors import ApiError
from quart_iot.store.backend import Deleted, DeletedModel, Saved, SavedModel, WriteMeta

WriteAction = Literal[
    "save", "patch", "delete", "restore", "save_model", "delete_model", "bulk_change"
]
Outcome = Saved | Deleted | SavedModel | DeletedModel
MODEL_ACTIONS = frozenset({"save_model", "delete_model"})


@dataclass(frozen=True, slots=True)
class Written:
    """How one write ended: it took effect (`applied`), or was refused or failed (`code`)."""

    action: WriteAction
    mac: str  # the device's MAC; for a model write (`is_model`), the model's code
    subject: str | None
    status: int  # the write's answer: 200, 204, or its error's status
    code: str | None = None  # the error code of a write refused or failed (or not confirmed)
    applied: bool = False  # the store holds what the write asked for (unchanged too)
    unchanged: bool = False  # ...and it held it already: nothing new was kept
    etag_before: str | None = None  # decided with the write (None: no document, or unknown)
    etag_after: str | None = None  # None: no document (a delete), or not applied
    version: str | None = None  # the history version the write made

    @property
    def is_model(self) -> bool:
        """A write of a device model, not of a device's document."""
        return self.action in MODEL_ACTIONS

    @property
    def changed_store(self) -> bool:
        """Whether a document is new: what other processes must hear of (a model is read
        afresh by every write, so a model write is not)."""
        return self.applied and not self.unchanged and not self.is_model

    @property
    def saved_document(self) -> bool:
        """A document was saved (PUT, PATCH, restore; unchanged bytes too): what MQTT tells."""
        return self.applied and self.action in ("save", "patch", "restore", "bulk_change")

    @classmethod
    def took_effect(
        cls,
        action: WriteAction,
        meta: WriteMeta,
        outcome: Outcome,
        error: ApiError | None = None,  # a write that took effect yet answers an error
    ) -> "Written":
        target, after, status = _ending(outcome)
        return cls(
            action,
            target,
            meta.subject,
            error.status if error else status,
            error.code if error else None,
            applied=True,
            unchanged=isinstance(outcome, Saved | SavedModel) and outcome.unchanged,
            etag_before=outcome.etag_before,
            etag_after=after,
            version=outcome.version if isinstance(outcome, Saved | Deleted) else None,
        )

    @classmethod
    def refused(cls, action: WriteAction, mac: str, meta: WriteMeta, error: ApiError) -> "Written":
        """A write refused or failed: nothing changed (as far as the store knows)."""
        return cls(action, mac, meta.subject, error.status, error.code)


def _ending(outcome: Outcome) -> tuple[str, str | None, int]:
    """(what was written, its ETag after, the answer's status)."""
    if isinstance(outcome, Saved):
        return outcome.stored.mac, outcome.stored.etag, 200
    if isinstance(outcome, SavedModel):
        return outcome.stored.code, outcome.stored.etag, 200
    if isinstance(outcome, Deleted):
        return outcome.mac, None, 204
    return outcome.code, None, 204
