"""Fixtures: backend -> settings -> app -> client and store, each test with its own storage.

`backend` names the store the API tests run against; a second store joins its parameters
(and `SETTINGS` its factory) without a change to any test. A test about the directory's files
asks for `configs_dir`, and so is collected for the directory store only (no postgres case
at all, not a skipped one). A test of a change made outside this process (a hand edit of the
directory, another replica or `copy` for PostgreSQL) asks for `outside`.
"""

import gc
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import pytest
from quart import Quart
from quart.typing import TestClientProtocol

from quart_iot.app import create_app
from quart_iot.documents import etag_of, parse_document
from quart_iot.settings import Settings
from quart_iot.store import ConfigStore, DirectoryBackend
from quart_iot.store.postgres import statements
from quart_iot.store.records import summary_json
from tests.pg import (  # noqa: F401 (fixtures: a real PostgreSQL)
    pg_admin,
    pg_cluster,
    pg_databases,
    pg_empty_url,
    pg_url,
)

MAC = "aa-bb-cc-dd-ee-ff"
OTHER_MAC = "00-11-22-33-44-55"
Client = TestClientProtocol

BACKENDS = ["directory", "postgres"]


# The longest test files first: parallel workers (pytest-xdist, `--dist loadfile
# --no-loadscope-reorder`, as `pdm run test` runs them) take files in this order, and a run must
# not end on one long file alone. The other files keep their order.
LONGEST_FIRST = [
    "test_deploy_image.py",  # installs the image's environment with pip
    "test_fuzz.py",
    "test_crash.py",
    "test_bulk_changes.py",
    "test_bulk_crash.py",
    "test_workers.py",
    "test_dashboard_live.py",
    "test_history.py",
    "test_history_server.py",
    "test_replicas.py",
    "test_auth.py",
    "test_concurrency.py",
    "test_load_hold.py",
    "test_deploy_kubernetes.py",
    "test_ways_to_run.py",
    "test_directory_faults.py",
    "test_waiting.py",
    "test_slow_clients.py",
    "test_metrics_live.py",
    "test_consistency.py",
    "test_postgres_waiting.py",
    "test_stream_tickets.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_collection_finish() -> None:
    """What the imports and the collection made lives to the end: frozen, the garbage
    collector's full passes no longer walk it again and again (issue 18, measured: the whole
    run 213-231 s before, 167 s after)."""
    gc.collect()
    gc.freeze()


# Real servers can run under coverage (`patch = ["subprocess"]`: COVERAGE_PROCESS_CONFIG in the
# environment), which makes a start 1.3-2.6x slower (0.53 s more CPU for a start and stop).
# Only the servers of these files are traced: they alone reach what no in-process test does
# (`__main__`, `http1`, `workers`, access control against the real provider, waiters woken
# across workers, the replicas' refused start, a bulk change settled after SIGKILL...).
# Measured, issue 18: a run with each file's servers traced under the file's name as coverage
# context, against a run with no server traced (92.1% then, 96.8% with them): 392 lines are
# reached by servers alone, and these files' servers reach every one of them. Elsewhere the
# server is only the vehicle of the test. A new file whose server reaches code nothing else
# does joins this list (its lines show up as missing otherwise).
TRACED_SERVERS = frozenset(
    {
        "test_auth.py",
        "test_bulk_crash.py",
        "test_copy.py",
        "test_hostile_input.py",
        "test_http_details.py",
        "test_mqtt.py",
        "test_replicas.py",
        "test_slow_clients.py",
        "test_stream_tickets.py",
        "test_waiting.py",
        "test_ways_to_run.py",
        "test_workers.py",
    }
)


@pytest.fixture(scope="module", autouse=True)
def _subprocess_coverage(request: pytest.FixtureRequest) -> Iterator[None]:
    """No coverage in the processes a test file starts unless it is one of TRACED_SERVERS
    (autouse, so before the module's own fixtures start theirs)."""
    if request.path.name in TRACED_SERVERS:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("COVERAGE_PROCESS_CONFIG", raising=False)
        patch.delenv("COVERAGE_PROCESS_START", raising=False)
        yield


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting exported in the shell running the tests (MQTT_URL, say) leaks into them."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.hookimpl(tryfirst=True)  # before the fixture's own parameters are applied
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that needs the directory's files (`configs_dir`, asked for directly or by a
    fixture it uses) is collected for the directory store alone."""
    if "configs_dir" in metafunc.fixturenames and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", ["directory"])


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The store the test runs against."""
    return str(request.param)


@pytest.fixture
def store_directory(tmp_path: Path) -> Path:
    """Where the directory store of a test keeps its documents."""
    directory = tmp_path / "configs"
    directory.mkdir(exist_ok=True)
    return directory


# Each store: the fixture that gives where a test's store keeps its documents, and how the
# settings name it.
LOCATIONS = {"directory": "store_directory", "postgres": "pg_url"}
SETTINGS: dict[str, Callable[..., Settings]] = {
    "directory": lambda where, **more: Settings(esp32_configs_dir=where, _env_file=None, **more),
    # DB_TIMEOUT of 30 s unless a test says otherwise: four test files at once on two cores
    # can hold a query past the default 5 s (the timeouts' own tests set theirs).
    "postgres": lambda where, **more: Settings(
        database_url=where, _env_file=None, **{"db_timeout": 30.0, **more}
    ),
}


@pytest.fixture
def make_settings(backend: str, request: pytest.FixtureRequest) -> Callable[..., Settings]:
    """Settings for the test's store, with extra settings (`history_max_versions=3`...)."""
    where = request.getfixturevalue(LOCATIONS[backend])  # now, not on the test's event loop
    return lambda **settings: SETTINGS[backend](where, **settings)


@pytest.fixture
def configs_dir(backend: str, store_directory: Path) -> Path:
    """The directory store's directory: a test that reads or writes its files is about the
    directory store, and runs against it only."""
    assert backend == "directory"  # pytest_generate_tests collects no other case
    return store_directory


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Quart]:
    app = create_app(settings)
    async with app.test_app():
        yield app


@pytest.fixture
def client(app: Quart) -> Client:
    return app.test_client()


@pytest.fixture
async def serving(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Awaitable[Quart]]]:
    """Starts apps on the test's store with extra settings (`cors_origins=[...]`...), each
    serving until the end of the test."""
    async with AsyncExitStack() as stack:

        async def serve(**settings: Any) -> Quart:
            app = create_app(make_settings(**settings))
            test_app = app.test_app()
            await test_app.startup()
            stack.push_async_callback(test_app.shutdown)
            return app

        yield serve


@pytest.fixture
def store(app: Quart) -> ConfigStore:
    return ConfigStore.of(app)


@pytest.fixture
def directory_backend(store: ConfigStore, configs_dir: Path) -> DirectoryBackend:
    """The directory store's backend, for tests of its parts."""
    assert isinstance(store.backend, DirectoryBackend)
    return store.backend


def write_config(directory: Path, mac: str, content: Any) -> Path:
    """A config file as an outside tool (or an older version of the service) would leave it."""
    path = directory / f"{mac}.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


class Outside(Protocol):
    """A writer outside this process: a person or tool editing the directory; for PostgreSQL
    `python -m quart_iot copy` (any bytes, kept as they are) or another replica."""

    async def put(self, mac: str, document: Any) -> None:
        """Store `document` (bytes: exactly these; else its JSON) as the device's."""

    async def remove(self, mac: str) -> None:
        """Remove the device's document."""


def as_bytes(document: Any) -> bytes:
    return document if isinstance(document, bytes) else json.dumps(document).encode()


class OutsideDirectory:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def put(self, mac: str, document: Any) -> None:
        """A new file renamed over the old one, as editors and tools write (the history
        links the old file: an edit in place would change a kept version)."""
        new = self.directory / f"{mac}.json.new"
        new.write_bytes(as_bytes(document))
        new.rename(self.directory / f"{mac}.json")

    async def remove(self, mac: str) -> None:
        (self.directory / f"{mac}.json").unlink()


class OutsideDatabase:
    """Writes as `copy` does (transfer.py's statement: a change and its NOTIFY, no version),
    and removes as another replica's delete."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def put(self, mac: str, document: Any) -> None:
        raw = as_bytes(document)
        summary = summary_json(mac, parse_document(raw))
        await self._run(statements.PUT_DOCUMENT, mac, raw, etag_of(raw), summary)

    async def remove(self, mac: str) -> None:
        await self._run(statements.DELETE, mac, None, None, 50, 90 * 86_400 * 10**9)

    async def _run(self, statement: str, *args: Any) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute(statement, *args)
        finally:
            await conn.close()


@pytest.fixture
def outside(settings: Settings) -> Outside:
    """Changes made outside this process, to the test's store."""
    if settings.database_url is not None:
        return OutsideDatabase(settings.database_url)
    assert settings.esp32_configs_dir is not None
    return OutsideDirectory(settings.esp32_configs_dir)
