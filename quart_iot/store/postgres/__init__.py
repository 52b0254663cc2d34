"""The PostgreSQL store (DATABASE_URL): one database shared by every replica.

- `schema`: the tables and their migrations (at start, under an advisory lock);
- `database`: the pool, DB_TIMEOUT, and database trouble turned into 503s;
- `statements`: the SQL of reads and of the one-transaction writes;
- `history`: versions read back, and the retention pass;
- `listener`: the one LISTEN connection of a process, reconnecting;
- `backend`: PostgresBackend, the store's Backend.
"""

from quart_iot.store.postgres.backend import PostgresBackend
from quart_iot.store.postgres.database import Limits
from quart_iot.store.postgres.schema import SchemaTooNew

__all__ = ["Limits", "PostgresBackend", "SchemaTooNew"]
