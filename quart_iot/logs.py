"""Logging: one line per event, each carrying the request's correlation id."""

import logging
import sys

from quart_iot.correlation import CorrelationIdFilter

FORMAT = "%(asctime)s %(levelname)s [%(correlation_id)s] %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Send every log line, ours and hypercorn's, to stderr with the correlation id."""
    root = logging.getLogger()
    if any(isinstance(f, CorrelationIdFilter) for h in root.handlers for f in h.filters):
        return  # already configured (a second app in the same process, as in tests)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(CorrelationIdFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
