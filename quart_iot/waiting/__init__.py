"""Waiting: long polls, the event stream and wake-ups between workers, one job a module.

- `longpolls`: the waiters of long polls, by device.
- `events`: the buffer of the last changes, each encoded once as its SSE frame.
- `streams`: event streams following the buffer, and the fan-out that wakes them.
- `holds`: the bounds on held requests (per process, subject, device).
- `peers`: wake-ups between the `WORKERS` of one host.
- `headers`: `Prefer: wait` and `Last-Event-ID`, read with bounds.
- `subject`: who a request waits for (the one call into access control).
- `extension`: the `Waiting` extension that puts them together.
"""

from quart_iot.waiting.extension import Waiting, current_waiting, event_stream_response
from quart_iot.waiting.headers import preferred_wait
from quart_iot.waiting.peers import PEERS_ENV, Peers

__all__ = [
    "PEERS_ENV",
    "Peers",
    "Waiting",
    "current_waiting",
    "event_stream_response",
    "preferred_wait",
]
