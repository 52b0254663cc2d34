"""Audit extension: with access control on, one log line per write the store was asked for.

The line is written from the store's write events, not after the request: a write whose
client hung up still has its line, with the ETags decided with the write itself. Writes the
store refused or that failed have theirs too (with their status). Requests that access
control refused (401, 403) are logged where it decides them (quart_iot/oidc).
"""

from quart import Quart, has_app_context

from quart_iot.oidc import audit_line, audit_log, current_audit_subject
from quart_iot.settings import Settings
from quart_iot.store import ConfigStore, Written

# How each is asked for.
METHODS = {
    "save": "PUT",
    "patch": "PATCH",
    "delete": "DELETE",
    "restore": "POST",
    "save_model": "PUT",
    "delete_model": "DELETE",
    "bulk_change": "POST",  # one line per device a bulk change (or its revert) wrote
}


class Audit:
    """Extension: the audit line of every write, whatever the client does."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.oidc_issuer is not None  # with access control, as it needs

    def init_app(self, app: Quart) -> None:
        app.extensions["audit"] = self
        if self.enabled:
            ConfigStore.of(app).write_listeners.append(log_write)


def log_write(written: Written) -> None:
    """`audit: PUT <mac> 200 allowed by sub:... ; etag before "...", after "..."`."""
    # A write refused or failed: what its status says (a 4xx changed nothing), no ETags.
    before = _quoted(written.etag_before) if written.applied else "unknown"
    after = _quoted(written.etag_after) if written.applied else "unknown"
    # Told in the context of the request that made the write, even after it ended.
    who = current_audit_subject() if has_app_context() else "anonymous"
    # A model is named by its path, as a refused request's line names it (quart_iot/oidc).
    target = f"/api/models/{written.mac}" if written.is_model else written.mac
    line = audit_line(
        METHODS[written.action], target, written.status, "allowed", who, before, after
    )
    audit_log.info("%s", line)


def _quoted(etag: str | None) -> str:
    return f'"{etag}"' if etag else "none"
