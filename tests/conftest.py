"""Fixtures: backend -> settings -> app -> client and store, each test with its own storage.

`backend` names the store the API tests run against; a second store joins its parameters
(and `SETTINGS` its factory) without a change to any test. A test that touches the
directory's files asks for `configs_dir`, and so runs against the directory store only.
"""

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol

from quart_iot.app import create_app
from quart_iot.settings import Settings
from quart_iot.store import ConfigStore, DirectoryBackend
from tests.pg import pg_cluster, pg_databases, pg_url  # noqa: F401 (fixtures: a real PostgreSQL)

MAC = "aa-bb-cc-dd-ee-ff"
OTHER_MAC = "00-11-22-33-44-55"
Client = TestClientProtocol

BACKENDS = ["directory", "postgres"]


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting exported in the shell running the tests (MQTT_URL, say) leaks into them."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The store the test runs against."""
    return str(request.param)


def directory_settings(request: pytest.FixtureRequest, **settings: Any) -> Settings:
    directory = request.getfixturevalue("tmp_path") / "configs"
    directory.mkdir(exist_ok=True)
    return Settings(esp32_configs_dir=directory, _env_file=None, **settings)


def postgres_settings(request: pytest.FixtureRequest, **settings: Any) -> Settings:
    url = request.getfixturevalue("pg_url")
    return Settings(database_url=url, _env_file=None, **settings)


# How each store's settings are made: (the test's request, extra settings) -> Settings.
SETTINGS: dict[str, Callable[..., Settings]] = {
    "directory": directory_settings,
    "postgres": postgres_settings,
}


@pytest.fixture
def make_settings(backend: str, request: pytest.FixtureRequest) -> Callable[..., Settings]:
    """Settings for the test's store, with extra settings (`history_max_versions=3`...)."""
    return lambda **settings: SETTINGS[backend](request, **settings)


@pytest.fixture
def configs_dir(backend: str, tmp_path: Path) -> Path:
    """The directory store's directory: a test that reads or writes its files is about the
    directory store, and runs against it only."""
    if backend != "directory":
        pytest.skip("about the directory store's files")
    directory = tmp_path / "configs"
    directory.mkdir(exist_ok=True)
    return directory


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
