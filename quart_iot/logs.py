"""Logging: one line per record, each carrying the request's correlation id, and one escaping
rule for all of them.

Clients choose much of what gets logged: a path (hypercorn's access log writes it
percent-decoded, so `%0A` is a newline), a token's header (PyJWT's messages quote it), a
subject. A newline in any of it would write a line of the client's choosing, a forged audit
record say, and an escape sequence would reach the operator's terminal. So the formatter of
every handler the service configures escapes each character that is not printable (controls,
newlines, Unicode line separators...) in the message, its arguments and the messages of a
traceback, whoever logged it: our code, hypercorn's access and error logs, a library.
"""

import logging
import sys
import traceback
from types import TracebackType

from quart_iot.correlation import CorrelationIdFilter

FORMAT = "%(asctime)s %(levelname)s [%(correlation_id)s] %(name)s: %(message)s"
_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def escape(text: str) -> str:
    r"""`text` with every character that is not printable written as its Python escape
    (`\n`, `\x1b`, `\u2028`); a space stays a space."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class EscapingFormatter(logging.Formatter):
    """A formatter whose message, arguments and exception messages are escaped: a record is
    one line (and its traceback's lines), whatever a client put in it."""

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(record.__dict__)  # other handlers keep the record as is
        safe.msg, safe.args, safe.exc_text = escape(record.getMessage()), None, None
        return super().format(safe)

    def formatException(self, ei: ExcInfo | tuple[None, None, None]) -> str:  # noqa: N802
        return format_exception(ei[1]).rstrip("\n")


def format_exception(error: BaseException | None) -> str:
    """A traceback as Python prints it (causes and contexts first), messages escaped."""
    if error is None:
        return "NoneType: None\n"
    parts: list[str] = []
    _add_exception(error, parts, set())
    return "".join(parts)


def _add_exception(error: BaseException, parts: list[str], seen: set[int]) -> None:
    seen.add(id(error))
    cause, context = error.__cause__, error.__context__
    if cause is not None and id(cause) not in seen:
        _add_exception(cause, parts, seen)
        parts.append(_CAUSE)
    elif context is not None and not error.__suppress_context__ and id(context) not in seen:
        _add_exception(context, parts, seen)
        parts.append(_CONTEXT)
    if error.__traceback__ is not None:
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(error.__traceback__))
    parts.append(_exception_line(error))
    parts.extend(f"{escape(str(note))}\n" for note in getattr(error, "__notes__", ()))


def _exception_line(error: BaseException) -> str:
    kind = type(error)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = f"{kind.__module__}.{name}"
    try:
        message = str(error)
    except Exception:  # as traceback does: a broken __str__ must not lose the record
        message = "<exception str() failed>"
    return f"{name}: {escape(message)}\n" if message else f"{name}\n"


def configure_logging(level: str) -> None:
    """Send every log line, ours and hypercorn's, to stderr with the correlation id, escaped."""
    root = logging.getLogger()
    if any(isinstance(f, CorrelationIdFilter) for h in root.handlers for f in h.filters):
        return  # already configured (a second app in the same process, as in tests)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter(FORMAT))
    handler.addFilter(CorrelationIdFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
