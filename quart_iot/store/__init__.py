"""The configs directory: one JSON document per device, named `<mac>.json`.

- `records`: the values (MACs, stored documents, write conditions, file signatures);
- `files`: the file primitives (safe read, durable atomic write, temp files);
- `lock`: the write lock shared with every replica;
- `index`: the validated cache behind the list, the ETags and the change notifications;
- `writes`: the write path (conditions decided under the lock);
- `versions`: the history area's files, one shelf per device under `.history/<mac>/`;
- `history`: every version of every document kept as the writer writes (hard links);
- `catalogue`: the history read back (a device's versions, one version, deleted devices);
- `retention`: which versions go, and when;
- `sweeper`: the background work (changes made by others, retention, stale temp files);
- `extension`: ConfigStore, the Quart extension with the async API the routes call.
"""

from quart_iot.store.directory.files import HISTORY_NAME, LOCK_NAME, STALE_TEMP_SECONDS
from quart_iot.store.directory.sweeper import SWEEP_INTERVAL
from quart_iot.store.directory.versions import VERSION_PATTERN
from quart_iot.store.extension import ConfigStore, current_store, stop_worker_threads
from quart_iot.store.records import (
    MAC_PATTERN,
    Precondition,
    Signature,
    StoredConfig,
    canonical_mac,
)

__all__ = [
    "HISTORY_NAME",
    "LOCK_NAME",
    "MAC_PATTERN",
    "STALE_TEMP_SECONDS",
    "SWEEP_INTERVAL",
    "VERSION_PATTERN",
    "ConfigStore",
    "Precondition",
    "Signature",
    "StoredConfig",
    "canonical_mac",
    "current_store",
    "stop_worker_threads",
]
