"""Correlation ids: taken from or echoed as X-Request-ID, and stamped on every log line."""

import logging
import re
import uuid
from contextvars import ContextVar

from quart import Quart, Response, request

HEADER = "X-Request-ID"
_SANE = re.compile(r"[A-Za-z0-9._:@+=/-]{1,128}")
_current: ContextVar[str | None] = ContextVar("correlation_id", default=None)


def current_correlation_id() -> str:
    """The id of the request being served (a new one outside a request)."""
    value = _current.get()
    if value is None:
        value = uuid.uuid4().hex
        _current.set(value)
    return value


class CorrelationIdFilter(logging.Filter):
    """Adds `correlation_id` to every record ("-" outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = _current.get() or "-"
        return True


class CorrelationIds:
    """Extension: one id per request, from a sane incoming X-Request-ID or freshly made."""

    def init_app(self, app: Quart) -> None:
        app.extensions["correlation_ids"] = self
        app.before_request(self._start)
        app.after_request(self._finish)

    async def _start(self) -> None:
        incoming = request.headers.get(HEADER, "")
        _current.set(incoming if _SANE.fullmatch(incoming) else uuid.uuid4().hex)

    async def _finish(self, response: Response) -> Response:
        response.headers[HEADER] = current_correlation_id()
        return response
