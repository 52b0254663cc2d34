"""A real, throw-away PostgreSQL for the tests: Debian's postgresql binaries (initdb, pg_ctl),
one cluster per test session in a temporary directory on a free loopback port, a fresh
database per test (a copy of a template that has the schema). initdb refuses root, so as root
(CI) the cluster runs as `nobody`.

Without the binaries the tests that need them skip, with the reason, except in CI (`CI` set),
where they fail: CI installs the `postgresql` package (.ci/run)."""

import asyncio
import concurrent.futures
import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from quart_iot.store.postgres.schema import migrate

UNPRIVILEGED = "nobody"  # initdb and postgres refuse to run as root
TEMPLATE = "quart_iot_template"
_names = itertools.count(1)


def _bin_dir() -> Path | None:
    """Where initdb and pg_ctl are: PG_BIN, else the newest /usr/lib/postgresql/<n>/bin."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major, reverse=True)
    return Path(found[0]).parent if found else None


def _major(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _in_memory() -> str | None:
    """/dev/shm when it is a tmpfs with room for the tests' cluster, else None (the temp dir).

    Each PostgreSQL test creates and drops a database, some hundreds of files each time: a
    pair costs 44 ms of CPU on ext4, mostly the kernel's, against 21 ms on tmpfs (measured
    with this cluster, 50 pairs; a run makes about 450).
    """
    try:
        shm = os.statvfs("/dev/shm")
    except OSError:
        return None
    return "/dev/shm" if shm.f_bavail * shm.f_frsize >= 2**30 else None  # Docker's is 64 MiB


class Cluster:
    """One PostgreSQL server in a temporary directory, started and stopped with pg_ctl; with
    `in_memory`, a directory of /dev/shm where it can (the tests': fsync is off anyway)."""

    def __init__(self, bin_dir: Path, in_memory: bool = False) -> None:
        self.bin_dir = bin_dir
        parent = _in_memory() if in_memory else None
        # Not under a 0700 parent: the server runs as another user when we are root.
        self.root = Path(tempfile.mkdtemp(prefix="quart_iot-pg-", dir=parent))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["setpriv", f"--reuid={UNPRIVILEGED}", "--regid=nogroup"]
            self._as_user.append("--clear-groups")
            shutil.chown(self.root, UNPRIVILEGED)
        self.root.chmod(0o755)

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str) -> None:
        tool = str(self.bin_dir / command[0])
        result = subprocess.run(
            [*self._as_user, tool, *command[1:]],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            log = self.root / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{command[0]} failed: {result.stderr.strip()}\n{tail}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8")

    def start(self, settings: str = "-c fsync=off -c full_page_writes=off") -> None:
        # fsync off: a test never survives an OS crash; a server crash (stop -m immediate)
        # still loses no commit, since every commit is written to the WAL before it is
        # acknowledged (synchronous_commit stays on). The benchmark keeps fsync on.
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} {settings} "
            "-c max_connections=300"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "-t", "60", "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI installs the postgresql package (.ci/run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """The session's PostgreSQL server."""
    bin_dir = _bin_dir()
    if bin_dir is None or not (bin_dir / "pg_ctl").exists():
        _missing("PostgreSQL is not installed (apt-get install postgresql, or set PG_BIN)")
    assert bin_dir is not None
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        _missing("setpriv (util-linux) is needed to run PostgreSQL unprivileged as root")
    cluster = Cluster(bin_dir, in_memory=True)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


class Admin:
    """One connection to the cluster's `postgres` database, on an event loop of its own (a
    thread): the fixtures of every test use it, whatever loop the test runs. Drops are left
    to it (a test's teardown does not wait for them)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._conn: asyncpg.Connection | None = None
        self._pending: list[concurrent.futures.Future[None]] = []

    async def _execute(self, statement: str) -> None:
        for attempt in range(2):  # once more on a new connection: a test restarted the server
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(self.cluster.admin_url)
                await self._conn.execute(statement)
                return
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
                self._conn = None
                if attempt:
                    raise

    def execute(self, statement: str) -> None:
        self.run(self._execute(statement))

    def run(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` on the admin's loop (whatever loop the caller runs)."""
        asyncio.run_coroutine_threadsafe(work, self.loop).result(60)

    def execute_later(self, statement: str) -> None:
        self._pending.append(asyncio.run_coroutine_threadsafe(self._execute(statement), self.loop))

    def close(self) -> None:
        for future in self._pending:
            with contextlib.suppress(Exception):
                future.result(60)
        if self._conn is not None:
            asyncio.run_coroutine_threadsafe(self._conn.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


async def _migrate(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_admin(pg_cluster: Cluster) -> Iterator[Admin]:
    """The session's admin connection, and a template database with the schema in place:
    a test's database is a copy of it (FILE_COPY: 50 ms, against 300 ms for an empty database
    migrated at start)."""
    admin = Admin(pg_cluster)
    try:
        admin.execute(f"CREATE DATABASE {TEMPLATE} TEMPLATE template0")
        admin.run(_migrate(pg_cluster.url(TEMPLATE)))
        admin.execute(f"ALTER DATABASE {TEMPLATE} IS_TEMPLATE true")
        yield admin
    finally:
        admin.close()


@pytest.fixture
def pg_databases(pg_cluster: Cluster, pg_admin: Admin) -> Iterator[Callable[..., str]]:
    """Makes new databases (their URLs), dropped after the test: with the schema in place, or
    `empty=True` (migrations' tests). A plain fixture, so that parametrised store fixtures can
    ask for it by name."""
    made: list[str] = []

    def make(empty: bool = False) -> str:
        name = f"test_{os.getpid()}_{next(_names)}"
        template = "template0" if empty else TEMPLATE
        pg_admin.execute(f'CREATE DATABASE "{name}" TEMPLATE {template} STRATEGY FILE_COPY')
        made.append(name)
        return pg_cluster.url(name)

    yield make
    for name in made:  # the test may have stopped the server: then the drop fails, unseen
        pg_admin.execute_later(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_databases: Callable[..., str]) -> str:
    """The URL of a new database, its schema in place and no document."""
    return pg_databases()


@pytest.fixture
def pg_empty_url(pg_databases: Callable[..., str]) -> str:
    """The URL of a new, empty database (no table yet)."""
    return pg_databases(empty=True)
