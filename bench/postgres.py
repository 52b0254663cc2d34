"""A throw-away PostgreSQL for the benchmark (the test suite's cluster, tests/pg.py), filled
the way an operator fills one: `python -m quart_iot copy` from a directory."""

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from tests.pg import Cluster, _bin_dir

# The benchmark's server keeps fsync on (the test cluster turns it off): a PUT's cost is the
# cost of a durable commit, as in production. 200 connections: replicas' pools and wrk.
SETTINGS = "-c fsync=on -c synchronous_commit=on -c shared_buffers=128MB"


@contextmanager
def cluster() -> Iterator[Cluster]:
    """A PostgreSQL server for one benchmark run, removed at the end."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise SystemExit("bench: PostgreSQL is not installed (apt-get install postgresql)")
    made = Cluster(bin_dir)
    try:
        made.init()
        made.start(SETTINGS)
        yield made
    finally:
        made.remove()


def database(server: Cluster, name: str, documents: Path) -> str:
    """A new database holding the documents of a directory (by `copy`); its URL."""

    async def create() -> None:
        admin = await asyncpg.connect(server.admin_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()

    asyncio.run(create())
    url = server.url(name)
    subprocess.run(
        [sys.executable, "-m", "quart_iot", "copy", "--from", str(documents), "--to", url],
        check=True,
        capture_output=True,
    )
    return url
