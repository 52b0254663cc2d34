"""The store: one interface, `Backend` (backend.py), and its implementations, behind one
Quart extension, `ConfigStore` (extension.py), which every route speaks to.

- `backend`: the interface every store implements, and the values it returns;
- `records`: the values every store shares (MACs, version ids, stored documents, conditions);
- `events`: `Written`, how a write of this process ended, for its listeners;
- `search`: fleet search's parts every store shares (a search, its entries, the answers' cache);
- `devicemodels`: device models as every store keeps them, and which documents name them;
- `conformance`: documents checked against their device model, with the compiled schemas;
- `extension`: ConfigStore, the async API the routes call, the same for every store;
- `directory/`: the directory store (blocking file code run in worker threads).
"""

from quart_iot.identifiers import MAC_PATTERN, VERSION_PATTERN
from quart_iot.store.backend import (
    Backend,
    Change,
    ChangeSink,
    Deleted,
    Saved,
    StorageStats,
    WriteMeta,
)
from quart_iot.store.conformance import ModelReport
from quart_iot.store.devicemodels import ModelEntry, StoredModel
from quart_iot.store.directory.backend import DirectoryBackend, stop_worker_threads
from quart_iot.store.events import Written
from quart_iot.store.extension import ConfigStore, current_store
from quart_iot.store.records import Precondition, StoredConfig, canonical_mac
from quart_iot.store.search import Search

__all__ = [
    "MAC_PATTERN",
    "VERSION_PATTERN",
    "Backend",
    "Change",
    "ChangeSink",
    "ConfigStore",
    "Deleted",
    "DirectoryBackend",
    "ModelEntry",
    "ModelReport",
    "Precondition",
    "Saved",
    "Search",
    "StorageStats",
    "StoredConfig",
    "StoredModel",
    "WriteMeta",
    "Written",
    "canonical_mac",
    "current_store",
    "stop_worker_threads",
]
