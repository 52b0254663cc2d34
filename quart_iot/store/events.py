"""Written: a write of this process as its listeners hear it (the audit, MQTT, wake-ups)."""

from dataclasses import dataclass
from typing import Literal

from quart_iot.errors import ApiError
from quart_iot.store.backend import Deleted, Saved, WriteMeta

WriteAction = Literal["save", "delete", "restore"]


@dataclass(frozen=True, slots=True)
class Written:
    """How one write ended: it took effect (`applied`), or was refused or failed (`code`)."""

    action: WriteAction
    mac: str
    subject: str | None
    status: int  # the write's answer: 200, 204, or its error's status
    code: str | None = None  # the error code of a write refused or failed (or not confirmed)
    applied: bool = False  # the store holds what the write asked for (unchanged too)
    unchanged: bool = False  # ...and it held it already: nothing new was kept
    etag_before: str | None = None  # decided with the write (None: no document, or unknown)
    etag_after: str | None = None  # None: no document (a delete), or not applied
    version: str | None = None  # the history version the write made

    @property
    def changed_store(self) -> bool:
        """Whether the store holds something new: what other processes must hear of."""
        return self.applied and not self.unchanged

    @classmethod
    def took_effect(
        cls,
        action: WriteAction,
        meta: WriteMeta,
        outcome: Saved | Deleted,
        error: ApiError | None = None,  # a write that took effect yet answers an error
    ) -> "Written":
        if isinstance(outcome, Saved):
            mac, after, status = outcome.stored.mac, outcome.stored.etag, 200
        else:
            mac, after, status = outcome.mac, None, 204
        unchanged = isinstance(outcome, Saved) and outcome.unchanged
        return cls(
            action,
            mac,
            meta.subject,
            error.status if error else status,
            error.code if error else None,
            applied=True,
            unchanged=unchanged,
            etag_before=outcome.etag_before,
            etag_after=after,
            version=outcome.version,
        )

    @classmethod
    def refused(cls, action: WriteAction, mac: str, meta: WriteMeta, error: ApiError) -> "Written":
        """A write refused or failed: nothing changed (as far as the store knows)."""
        return cls(action, mac, meta.subject, error.status, error.code)
