"""schemathesis against the real server, driven by the app's own OpenAPI document."""

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case

from quart_iot.app import create_app
from quart_iot.settings import Settings
from tests.server import TLS, Server, running_server

# Kept small: the whole run takes well under a minute on two shared cores.
MAX_EXAMPLES = 100

CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            # Valid data the API rightly refuses: a MAC with no config (404), a create-only
            # save of one that exists (409), an If-Match that matches nothing (412), content
            # naming a device model nobody defined, a schema that is no JSON Schema, a patch
            # whose result is no object (422).
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "304", "404", "409", "412", "422"]
            },
        },
        "generation": {"max-examples": MAX_EXAMPLES},
        "operations": [
            {
                # A filter is any string to the OpenAPI document (RQL's grammar is no JSON
                # Schema): one that is no RQL is a 400 INVALID_FILTER, as API.md says, in a
                # search and in a bulk change alike.
                "include-path": path,
                "include-method": method,
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2xx", "304", "400", "404", "409", "412", "422"]
                    },
                },
            }
            for path, method in (("/api/configs", "GET"), ("/api/configs/changes", "POST"))
        ],
    }
)


def served_openapi_document() -> dict[str, Any]:
    """What the app serves at /api/docs/openapi.json (building it needs no directory)."""
    settings = Settings(esp32_configs_dir=Path("/nonexistent"), _env_file=None)
    client = create_app(settings).test_client()

    async def fetch() -> dict[str, Any]:
        document: dict[str, Any] = await (await client.get("/api/docs/openapi.json")).get_json()
        return document

    return asyncio.run(fetch())


# Loaded at import, as schemathesis parametrizes at collection (its fixture-based loader
# does not work with this pytest); every call goes to the real server below.
OPENAPI = served_openapi_document()
schema = schemathesis.openapi.from_dict(OPENAPI, config=CONFIG)


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("fuzz") / "configs"
    directory.mkdir()
    with running_server(directory) as server:
        yield server


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_every_answer_matches_the_openapi_document(fuzzed_server: Server, case: Case[Any]) -> None:
    # Every check: no 5xx, status codes, content types, headers and bodies as documented.
    case.call_and_validate(base_url=fuzzed_server.url)


def test_the_fuzzed_document_is_the_served_one(fuzzed_server: Server) -> None:
    assert httpx.get(f"{fuzzed_server.url}/api/docs/openapi.json", verify=TLS).json() == OPENAPI


def test_openapi_describes_the_mac_and_requires_the_put_body() -> None:
    item = OPENAPI["paths"]["/api/configs/{mac_address}"]
    (parameter,) = item["get"]["parameters"]
    assert parameter["schema"]["pattern"] == "^[0-9A-Fa-f]{2}(-[0-9A-Fa-f]{2}){5}$"
    assert item["put"]["requestBody"]["required"] is True
