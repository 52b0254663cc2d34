"""A real, throw-away PostgreSQL for the tests: Debian's postgresql binaries (initdb, pg_ctl),
one cluster per test session in a temporary directory on a free loopback port, a fresh
database per test. initdb refuses root, so as root (CI) the cluster runs as `nobody`.

Without the binaries the tests that need them skip, with the reason, except in CI (`CI` set),
where they fail: CI installs the `postgresql` package (.ci/run)."""

import asyncio
import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

UNPRIVILEGED = "nobody"  # initdb and postgres refuse to run as root
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


class Cluster:
    """One PostgreSQL server in a temporary directory, started and stopped with pg_ctl."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="quart_iot-pg-"))  # not under a 0700 parent
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

    def start(self) -> None:
        # fsync off: a test never survives an OS crash; a server crash (stop -m immediate)
        # still loses no commit, since every commit is written to the WAL before it is
        # acknowledged (synchronous_commit stays on).
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
            "-c full_page_writes=off -c max_connections=300"
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
    cluster = Cluster(bin_dir)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


async def _admin(cluster: Cluster, statement: str) -> None:
    admin = await asyncpg.connect(cluster.admin_url)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


@pytest.fixture
def pg_databases(pg_cluster: Cluster) -> Iterator[Callable[[], str]]:
    """Makes new, empty databases (their URLs), dropped after the test. A plain fixture (its
    own event loop), so that parametrised store fixtures can ask for it by name."""
    made: list[str] = []

    def make() -> str:
        name = f"test_{os.getpid()}_{next(_names)}"
        asyncio.run(_admin(pg_cluster, f'CREATE DATABASE "{name}" TEMPLATE template0'))
        made.append(name)
        return pg_cluster.url(name)

    yield make
    for name in made:
        with contextlib.suppress(OSError, asyncpg.PostgresError):  # the test stopped the server
            asyncio.run(_admin(pg_cluster, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def pg_url(pg_databases: Callable[[], str]) -> str:
    """The URL of a new, empty database."""
    return pg_databases()
