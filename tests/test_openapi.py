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
