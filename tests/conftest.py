"""Fixtures: settings -> app -> client, each test on its own configs directory."""

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol

from quart_iot.app import create_app
from quart_iot.settings import Settings
from quart_iot.store import ConfigStore
from tests.pg import pg_cluster, pg_databases, pg_url  # noqa: F401 (fixtures: a real PostgreSQL)

MAC = "aa-bb-cc-dd-ee-ff"
OTHER_MAC = "00-11-22-33-44-55"
Client = TestClientProtocol


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting exported in the shell running the tests (MQTT_URL, say) leaks into them."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def configs_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "configs"
    directory.mkdir()
    return directory


@pytest.fixture
def settings(configs_dir: Path) -> Settings:
    return Settings(esp32_configs_dir=configs_dir, _env_file=None)


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
    store: ConfigStore = app.extensions["config_store"]
    return store


def write_config(directory: Path, mac: str, content: Any) -> Path:
    """A config file as an outside tool (or an older version of the service) would leave it."""
    path = directory / f"{mac}.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    return path
