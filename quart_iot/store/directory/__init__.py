"""The directory store: one JSON document per device, named `<mac>.json`.

- `files`: the file primitives (safe read, durable atomic write, temp files, signatures);
- `lock`: the write lock shared with every replica;
- `index`: the validated cache behind the list, the ETags and the change notifications;
- `writes`: the write path (conditions decided under the lock);
- `versions`: the history area's files, one shelf per device under `.history/<mac>/`;
- `history`: every version of every document kept as the writer writes (hard links);
- `catalogue`: the history read back (a device's versions, one version, deleted devices);
- `retention`: which versions go, and when;
- `outage`: storage faults, logged when they start and end;
- `sweeper`: the background work (changes made by others, retention, stale temp files);
- `batches`: the worker threads the blocking calls run in;
- `backend`: DirectoryBackend, the `Backend` of a directory.
"""

from quart_iot.store.directory.backend import DirectoryBackend, stop_worker_threads
from quart_iot.store.directory.files import HISTORY_NAME, LOCK_NAME, STALE_TEMP_SECONDS, Signature
from quart_iot.store.directory.sweeper import SWEEP_INTERVAL

__all__ = [
    "HISTORY_NAME",
    "LOCK_NAME",
    "STALE_TEMP_SECONDS",
    "SWEEP_INTERVAL",
    "DirectoryBackend",
    "Signature",
    "stop_worker_threads",
]
