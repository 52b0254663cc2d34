import json
import re
from typing import Any

from quart import Quart

from tests.conftest import Client


async def openapi(client: Client) -> dict[str, Any]:
    response = await client.get("/api/docs/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = await response.get_json()
    return document


async def test_openapi_is_3_1_and_lists_every_api_route(app: Quart, client: Client) -> None:
    document = await openapi(client)
    assert document["openapi"].startswith("3.1")
    documented = {
        (path, method.upper()) for path, item in document["paths"].items() for method in item
    }
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/") or rule.rule.startswith("/api/docs"):
            continue
        path = re.sub(r"<(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in {"HEAD", "OPTIONS"}:
                assert (path, method) in documented


async def test_openapi_documents_bodies_errors_and_etags(client: Client) -> None:
    paths = (await openapi(client))["paths"]
    put = paths["/api/configs/{mac_address}"]["put"]
    assert "requestBody" in put
    assert {"200", "400", "409", "412", "413", "415", "503"} <= set(map(str, put["responses"]))
    assert "ETag" in put["responses"]["200"]["headers"]
    assert "204" in map(str, paths["/api/configs/{mac_address}"]["delete"]["responses"])
    device = paths["/api/configs/{mac_address}.json"]["get"]
    assert "ETag" in device["responses"]["200"]["headers"]


async def test_openapi_documents_device_models_and_patch(client: Client) -> None:
    document = await openapi(client)
    paths = document["paths"]
    patch = paths["/api/configs/{mac_address}"]["patch"]
    assert set(patch["requestBody"]["content"]) == {
        "application/merge-patch+json",
        "application/json-patch+json",
    }
    assert patch["requestBody"]["required"] is True
    expected = {"200", "400", "404", "409", "412", "413", "415", "422", "503"}
    assert expected <= set(patch["responses"])
    assert "ETag" in patch["responses"]["200"]["headers"]
    assert "422" in paths["/api/configs/{mac_address}"]["put"]["responses"]
    model = paths["/api/models/{code}"]
    assert {"get", "put", "delete"} <= set(model)
    assert model["put"]["requestBody"]["content"]["application/json"]["schema"]["required"] == [
        "name",
        "configSchema",
    ]
    assert {"200", "400", "412", "413", "415", "422", "503"} <= set(model["put"]["responses"])
    assert {"204", "404", "409", "412"} <= set(model["delete"]["responses"])
    code = next(p for p in model["get"]["parameters"] if p["name"] == "code")
    assert code["schema"]["pattern"] == "^[a-z0-9_]{1,64}$"
    violations = paths["/api/models/{code}/violations"]["get"]["responses"]["200"]
    schema = violations["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"code", "checked", "devices", "count"}
    assert "DeviceModelNonconforming" in json.dumps(schema)
    assert "device_model" in document["components"]["schemas"]["ConfigListEntry"]["properties"]
    restore = paths["/api/configs/{mac_address}/history/{version}/restore"]["post"]
    assert "Schema-Violations" in restore["responses"]["200"]["headers"]


async def test_docs_page_loads_its_assets_locally(client: Client) -> None:
    page = await (await client.get("/api/docs")).get_data(as_text=True)
    assert "http://" not in page
    assert "https://" not in page
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/api/docs/assets/{asset}" in page
        response = await client.get(f"/api/docs/assets/{asset}")
        assert response.status_code == 200
        assert len(await response.get_data()) > 10_000


async def test_unknown_docs_asset_is_404(client: Client) -> None:
    response = await client.get("/api/docs/assets/secrets.txt")
    assert response.status_code == 404
    assert (await response.get_json())["code"] == "ROUTE_NOT_FOUND"
